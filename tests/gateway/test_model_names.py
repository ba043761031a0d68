"""Model names come from the chain, never from what a provider says about itself.

The directory is rebuilt by `refresh()` from a chain-shaped fake (Registry offers, Models
names) and the real signed /v1/info of in-process providers; requests then go through the
gateway's own HTTP app, so refusals are checked in OpenAI's error shape."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi.testclient import TestClient

from allmende.api.canonical import checked
from allmende.api.directory import Directory
from allmende.core.envelope import public_key_bytes
from allmende.gateway.app import create_app
from tests.gateway.fakes import GATEWAY, MODEL_ID, VOUCHERS, FakeEngine, FakeProvider, Network, network

TINY = "allmende:tiny"
SQUAT_ID = b"\x08" * 32  # other weights, whose provider calls them "allmende:tiny"
FOLDER_ID = b"\x09" * 32  # a local folder served without a name on chain
TWIN_ID = b"\x0a" * 32


def provider(tmp: Path, model_id: bytes, announced: str) -> FakeProvider:
    engine = FakeEngine()
    engine.model_id, engine.name = model_id, announced
    return FakeProvider(tmp, engine=engine)


class InfoHosts(httpx.BaseTransport):
    """The directory's (synchronous) client: each provider's own app answers its /v1/info."""

    def __init__(self, providers: list[FakeProvider]) -> None:
        self.clients = {httpx.URL(p.url).host: TestClient(p.app) for p in providers}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        reply = self.clients[request.url.host].get(request.url.path)
        return httpx.Response(reply.status_code, content=reply.content, headers=reply.headers)


def chain(providers: list[FakeProvider], names: dict[bytes, str]) -> Any:
    """Registry and Models as the directory reads them: every provider active and offering
    its one model at its price; `names` is what Models holds."""
    by_address = {p.address: p for p in providers}
    registry = SimpleNamespace(
        address="0x" + "11" * 20,
        all_accounts=lambda: list(by_address),
        account=lambda a: SimpleNamespace(
            role=1, endpoint=by_address[a].url, x25519_key=public_key_bytes(by_address[a].x25519), stake=10**21
        ),
        is_active=lambda a: True,
        models_of=lambda a: [by_address[a].engine.model_id],
        offer=lambda a, m: SimpleNamespace(
            active=True, price_in=by_address[a].price_in, price_out=by_address[a].price_out
        ),
        role_of=lambda a: 1,
        stake_of=lambda a: 10**21,
    )
    models = SimpleNamespace(
        address="0x" + "22" * 20,
        name_of=lambda m: names.get(m, ""),
        owner_of=lambda m: "0x" + "33" * 20,
        royalty_terms=lambda m: ("0x" + "33" * 20, 0, 1_700_000_000),  # (payee, bps, registered at)
    )
    return SimpleNamespace(  # the explorer's event tails only keep their contract until polled
        client=SimpleNamespace(address=GATEWAY),
        deployment=SimpleNamespace(deploy_block=0),
        channels=SimpleNamespace(voucher_domain=lambda: VOUCHERS, contract=None),
        registry=registry,
        models=models,
        verdicts=SimpleNamespace(score=lambda v, p: (0, 0), contract=None),
        governor=SimpleNamespace(contract=None),
    )


def refreshed(tmp: Path, providers: list[FakeProvider], names: dict[bytes, str]) -> tuple[Network, TestClient]:
    net = network(tmp, providers, entries=[])
    directory = Directory(chain(providers, names), httpx.Client(transport=InfoHosts(providers)))
    directory.refresh()
    net.service.directory = directory
    return net, TestClient(create_app(net.service))


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4}


def test_a_provider_announcing_someone_elses_name_is_not_listed_or_resolved_under_it(tmp_path: Path) -> None:
    honest = provider(tmp_path, MODEL_ID, TINY)
    squatter = provider(tmp_path, SQUAT_ID, TINY)  # other weights under the name (Models refused it the name)
    folder = provider(tmp_path, FOLDER_ID, "/home/me/my-model")
    net, gateway = refreshed(tmp_path, [honest, squatter, folder], {MODEL_ID: TINY})

    listed = {m["id"]: m["allmende"]["model_id"] for m in gateway.get("/v1/models").json()["data"]}
    results = [
        asyncio.run(net.service.complete(checked("chat", chat(name)), None))
        for name in ("allmende:tiny", "Allmende:Tiny")
    ]
    by_id = asyncio.run(net.service.complete(checked("chat", chat("0x" + SQUAT_ID.hex())), None))

    assert listed == {
        TINY: "0x" + MODEL_ID.hex(),
        "0x" + SQUAT_ID.hex(): "0x" + SQUAT_ID.hex(),  # served, but only under its id
        "0x" + FOLDER_ID.hex(): "0x" + FOLDER_ID.hex(),  # a folder path is no name
    }
    assert {r.answer.receipt.receipt.provider for r in results} == {honest.address}
    assert {r.offer.name for r in results} == {TINY}
    assert by_id.answer.receipt.receipt.provider == squatter.address
    assert squatter.store.receipt_count() == 1  # only the request that named its id


def test_an_unregistered_name_is_refused_in_openai_shape_with_a_clear_message(tmp_path: Path) -> None:
    folder = provider(tmp_path, FOLDER_ID, "/home/me/my-model")
    gpt = provider(tmp_path, SQUAT_ID, "gpt-4o")
    _, gateway = refreshed(tmp_path, [folder, gpt], {})

    for asked in ("gpt-4o", "/home/me/my-model", "ѕmollm2"):
        reply = gateway.post("/v1/chat/completions", json=chat(asked))

        assert reply.status_code == 404
        error = reply.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "model_not_found", "model")
        assert f"The model '{asked}' does not exist" in error["message"]
    assert (
        'by its id, model="0x' in gateway.post("/v1/chat/completions", json=chat("gpt-4o")).json()["error"]["message"]
    )
    assert "ASCII only" in gateway.post("/v1/chat/completions", json=chat("ѕmollm2")).json()["error"]["message"]
    assert folder.store.receipt_count() == gpt.store.receipt_count() == 0


def test_a_name_two_model_ids_claim_is_neither_listed_nor_resolved(tmp_path: Path) -> None:
    # a chain that let two ids hold look-alike names (Models refuses it; the gateway does too)
    first = provider(tmp_path, MODEL_ID, TINY)
    twin = provider(tmp_path, TWIN_ID, TINY)
    net, gateway = refreshed(tmp_path, [first, twin], {MODEL_ID: TINY, TWIN_ID: "allmende-t1ny"})

    listed = [m["id"] for m in gateway.get("/v1/models").json()["data"]]
    refusals = [gateway.post("/v1/chat/completions", json=chat(name)) for name in (TINY, "allmende-t1ny")]
    by_id = asyncio.run(net.service.complete(checked("chat", chat("0x" + TWIN_ID.hex())), None))

    assert sorted(listed) == sorted(["0x" + MODEL_ID.hex(), "0x" + TWIN_ID.hex()])
    for reply in refusals:
        assert reply.status_code == 409
        error = reply.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "model_name_ambiguous",
            "model",
        )
        assert "claimed by more than one model id" in error["message"]
        assert "0x" + MODEL_ID.hex() in error["message"] and "0x" + TWIN_ID.hex() in error["message"]
    assert by_id.answer.receipt.receipt.provider == twin.address
    assert first.store.receipt_count() == 0

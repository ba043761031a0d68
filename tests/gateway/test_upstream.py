"""The gateway's aiohttp client of providers (api/upstream.py) over real HTTP: providers'
apps (real ProviderService: sealing, vouchers, receipts) served by uvicorn on free ports.
Answers, streams, failover and the billing of a cut stream come out as through the httpx
client the other gateway tests use in process."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from allmende.api.canonical import checked
from allmende.api.client import Answer, ProviderReplyError, ainfer, ainfer_stream, build_envelope
from allmende.api.upstream import AiohttpUpstream
from allmende.chain.anvil import free_port
from allmende.core import SignedReceipt
from allmende.core.routing import ProviderStats
from tests.gateway.fakes import MODEL_ID, FakeEngine, FakeProvider, Network, network

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 8}


class Served:
    """A provider's app on a free port, in a thread; its URL is what the directory lists."""

    def __init__(self, provider: FakeProvider, app: Any = None) -> None:
        self.port = free_port()
        config = uvicorn.Config(app or provider.app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = provider.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    servers: list[Served] = []
    yield servers
    for server in servers:
        server.stop()


def over_http(tmp: Path, servers: list[Served], providers: list[FakeProvider], **kwargs: object) -> Network:
    servers += [Served(p) for p in providers]
    net = network(tmp, providers, **kwargs)  # type: ignore[arg-type]
    net.service.upstream = AiohttpUpstream(read=30)
    return net


def test_answers_and_streams_over_http_equal_the_in_process_ones(tmp_path: Path, served: list[Served]) -> None:
    reference = network(tmp_path / "in-process", [FakeProvider(tmp_path)])
    provider = FakeProvider(tmp_path)
    net = over_http(tmp_path, served, [provider])

    async def run(net: Network) -> tuple[str, list[str], Answer]:
        once = await net.service.complete(checked("chat", dict(CHAT)), None)
        pieces, final = [], None
        async for item in net.service.stream(checked("chat", {**CHAT, "stream": True}), None):
            if isinstance(item, Answer):
                final = item
            else:
                pieces.append(str(item))
        assert final is not None
        await net.service.upstream.aclose()
        return once.text, pieces, final

    (text, pieces, final), (ref_text, ref_pieces, ref_final) = asyncio.run(run(net)), asyncio.run(run(reference))

    assert (text, pieces) == (ref_text, ref_pieces) and len(pieces) == 8  # one delta per token, in order
    assert final.usage == ref_final.usage and final.output["token_ids"] == ref_final.output["token_ids"]
    assert final.receipt.receipt.provider == provider.address
    assert provider.store.receipt_count() == 2 and net.store.receipt_count() == 2  # both checked and paid
    channel = net.store.channel(provider.address)
    assert channel is not None and net.service.payments.in_flight(channel[0]) == 0


def test_a_provider_that_refuses_connections_is_failed_over_and_its_reservation_released(
    tmp_path: Path, served: list[Served], caplog: pytest.LogCaptureFixture
) -> None:
    dead, alive = FakeProvider(tmp_path), FakeProvider(tmp_path)
    net = over_http(tmp_path, served, [dead, alive])
    served[0].stop()  # nothing listens on its port any more

    async def run() -> set[str]:
        texts = {(await net.service.complete(checked("chat", dict(CHAT)), None)).text for _ in range(6)}
        await net.service.upstream.aclose()
        return texts

    with caplog.at_level(logging.WARNING, logger="allmende.gateway"):
        texts = asyncio.run(run())

    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert failures and all(dead.address in m and "for fake failed: 502 ConnectError" in m for m in failures)
    assert len(texts) == 1 and alive.store.receipt_count() == 6 and dead.store.receipt_count() == 0
    channel = net.store.channel(dead.address)
    assert channel is not None and net.service.payments.in_flight(channel[0]) == 0  # never reached: nothing owed


def test_a_stream_cut_by_its_provider_is_billed_and_continued_elsewhere(tmp_path: Path, served: list[Served]) -> None:
    failing = FakeProvider(tmp_path, engine=FakeEngine(fail_after=3))
    healthy = FakeProvider(tmp_path)
    net = over_http(tmp_path, served, [failing, healthy], entries=None)
    net.service.directory.install([failing.entry()])  # the stream surely starts at the failing one
    for entry in net.service.directory.entries():
        entry.stats[MODEL_ID] = ProviderStats(entry.address, 1, capacity=64)

    async def run() -> tuple[str, Answer]:
        text, final = "", None
        async for item in net.service.stream(checked("chat", {**CHAT, "stream": True, "max_tokens": 10}), None):
            if isinstance(item, Answer):
                final = item
                continue
            text += item
            if len(text) == 3:  # the failing provider's last token: now the healthy one appears
                net.service.directory.install([failing.entry(), healthy.entry()])
                for entry in net.service.directory.entries():
                    entry.stats[MODEL_ID] = ProviderStats(entry.address, 1, capacity=64)
        await net.service.upstream.aclose()
        assert final is not None
        return text, final

    text, final = asyncio.run(run())

    assert len(text) == 10 and final.usage["completion_tokens"] == 10
    assert final.receipt.receipt.provider == healthy.address
    (cut,) = [SignedReceipt.from_json(json.loads(r)).receipt for r in failing.store.receipts()]
    assert cut.tokens_out == 3  # the cut's receipt came through the error event and was paid
    channel = net.store.channel(failing.address)
    assert channel is not None and net.store.owed(channel[0], MODEL_ID)[0] == cut.amount > 0
    assert net.service.payments.in_flight(channel[0]) == 0


def test_a_providers_error_reply_keeps_its_status_and_code(tmp_path: Path, served: list[Served]) -> None:
    provider = FakeProvider(tmp_path)
    net = over_http(tmp_path, served, [provider])
    entry = net.service.directory.entries()[0]

    async def run() -> ProviderReplyError:
        with pytest.raises(ProviderReplyError) as caught:  # an envelope that opens nowhere
            await ainfer(net.service.upstream, provider.url, entry.info, net.service.receipt_domain, {}, None, b"")  # type: ignore[arg-type]
        await net.service.upstream.aclose()
        return caught.value

    error = asyncio.run(run())

    assert error.status == 400 and error.code == "bad_envelope"


def test_a_provider_that_redirects_is_not_followed(tmp_path: Path, served: list[Served]) -> None:
    """A provider answering 307 to another address (its own node, the gateway's admin routes, an
    internal host) is a provider with no answer (502, failover): the sealed request goes nowhere
    else."""
    provider, target = FakeProvider(tmp_path), FakeProvider(tmp_path)
    net = over_http(tmp_path, served, [provider, target])
    entry = net.service.directory.entry(provider.address)
    assert entry is not None

    async def redirect(scope: dict, receive: object, send: Any) -> None:
        location = f"{target.url}/v1/infer".encode()
        await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location)]})
        await send({"type": "http.response.body", "body": b""})

    served.append(Served(FakeProvider(tmp_path), app=redirect))
    redirecting = served[-1].url

    async def run() -> list[ProviderReplyError]:
        errors = []
        for stream in (False, True):
            body = {**CHAT, "stream": stream}
            rid, envelope, sealer = build_envelope(
                entry.info, MODEL_ID, "chat", body, net.service.payments.signer, b"\x01" * 32, None
            )
            with pytest.raises(ProviderReplyError) as caught:
                args = (redirecting, entry.info, net.service.receipt_domain, envelope, sealer, rid)
                if stream:
                    async for _ in ainfer_stream(net.service.upstream, *args):
                        pass
                else:
                    await ainfer(net.service.upstream, *args)
            errors.append(caught.value)
        await net.service.upstream.aclose()
        return errors

    once, streamed = asyncio.run(run())

    assert (once.status, once.code) == (502, "bad_reply")  # followed, the target would have answered
    assert (streamed.status, streamed.code) == (502, "stream_cut")
    assert target.store.receipt_count() == 0 and not target.store.all_ledger()

"""Audits drawn from the shapes users send (allmende.api.shapes, gateway.shapes,
validator.prompts): the gateway counts the shapes it forwards and publishes them, a
validator draws each audit's shape from the counts and composes a body of exactly that
shape, and a provider that sees one request cannot tell an audit from a user's request by
its structure better than chance. No processes: the statistics run on drawn bodies, the
gateway in process (tests/gateway/fakes)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from allmende.api import messages as messages_api
from allmende.api.protocol import check_request
from allmende.api.shapes import key_of, shape_of
from allmende.gateway.app import GatewayLimits, create_app
from allmende.gateway.shapes import ShapeCounts
from allmende.testing.traffic import old_audit_structure, user_request
from allmende.validator.prompts import AuditTraffic
from tests.gateway.fakes import FakeProvider, network

USERS = 4000  # recorded user requests, and as many drawn audits


def recorded(seed: int, n: int) -> list[tuple[str, str, dict[str, Any]]]:
    rng = random.Random(seed)
    return [user_request(rng, "tiny")[:3] for _ in range(n)]


def counted(requests: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    counts = ShapeCounts()
    for endpoint, kind, body in requests:
        counts.count(kind, body, endpoint)
    return counts.published()


def test_every_shape_users_send_is_composed_with_exactly_that_shape() -> None:
    published = counted(recorded(1, 600))
    traffic = AuditTraffic(seed=2)
    assert len(published["data"]) >= 8
    for item in published["data"]:
        shape = item["shape"]
        for _ in range(5):
            body = traffic.compose(shape, "tiny")
            assert shape_of(shape["kind"], body, shape["endpoint"]) == shape
            check_request(shape["kind"], body)  # a body the gateway and the provider serve


def test_tools_structured_output_stop_strings_and_completions_are_audited() -> None:
    published = counted(recorded(3, 600))
    traffic = AuditTraffic(seed=4)
    drawn = [traffic.draw(published, "tiny") for _ in range(400)]
    kinds = Counter(kind for kind, _ in drawn)
    assert kinds["completion"] > 0 and kinds["chat"] > 0
    bodies = [body for _, body in drawn]
    assert any("tools" in b and b.get("tool_choice") == "required" for b in bodies)
    assert any(b.get("response_format", {}).get("type") == "json_object" for b in bodies)
    assert any(b.get("stop") and "seed" in b for b in bodies)
    assert any("max_completion_tokens" in b for b in bodies)
    assert any(b.get("logprobs") is True and b.get("top_logprobs") == 2 for b in bodies)
    assert any(len(b.get("messages", [])) == 4 for b in bodies)  # the Responses API's conversations


def test_anthropic_messages_with_stop_sequences_are_drawn_as_the_chat_body_they_become() -> None:
    sent = {"model": "tiny", "max_tokens": 30, "messages": [{"role": "user", "content": "Hi"}], "stop_sequences": ["X"]}
    forwarded = messages_api.chat_body(messages_api.parse_messages(sent))
    counts = ShapeCounts()
    counts.count("chat", forwarded, "messages")
    kind, body = AuditTraffic(seed=5).draw(counts.published(), "tiny")
    assert kind == "chat" and body["logprobs"] is True and len(body["stop"]) == 1  # what Messages adds, audited
    assert shape_of("chat", body, "messages") == shape_of("chat", forwarded, "messages")


def test_a_rare_shape_is_still_audited() -> None:
    requests = recorded(6, 2000)
    rare = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "seed": 1, "n": 3, "max_tokens": 5}
    requests.append(("chat", "chat", rare))
    published = counted(requests)
    traffic = AuditTraffic(seed=7)
    wanted = key_of(shape_of("chat", rare, "chat") or {})
    hits = sum(
        key_of(shape_of(k, b, "chat") or {}) == wanted
        for k, b in (traffic.draw(published, "tiny") for _ in range(3000))
    )
    assert hits > 0  # count 1 + smoothing among ~2000: about 1 in 1000


def test_a_provider_seeing_one_request_cannot_tell_an_audit_from_a_user_better_than_chance() -> None:
    # Prepare: what users sent (the counts a gateway publishes) and what a validator draws from them
    users = recorded(8, 2 * USERS)
    published = counted(users[:USERS])
    traffic = AuditTraffic(seed=9)
    audits = [traffic.draw(published, "tiny") for _ in range(2 * USERS)]
    user_shapes = [key_of(shape_of(k, b) or {}) for _, k, b in users]  # the provider does not see the endpoint
    audit_shapes = [key_of(shape_of(k, b) or {}) for k, b in audits]

    # Execute: the best guess from the shape alone, learnt on one half, tried on the other
    seen_users, seen_audits = Counter(user_shapes[:USERS]), Counter(audit_shapes[:USERS])

    def guess_audit(shape: str) -> bool:
        return seen_audits[shape] > seen_users[shape]

    right = sum(not guess_audit(s) for s in user_shapes[USERS:]) + sum(guess_audit(s) for s in audit_shapes[USERS:])
    accuracy = right / (2 * USERS)

    # Assert: no better than chance (within sampling noise), and the old audits' structure
    # (what a structure-keyed cheater serves honestly) is as rare among audits as among users
    assert accuracy < 0.53, accuracy
    old_users = sum(old_audit_structure(k, b) for _, k, b in users) / len(users)
    old_audits = sum(old_audit_structure(k, b) for k, b in audits) / len(audits)
    assert abs(old_users - old_audits) < 0.03, (old_users, old_audits)


def test_the_old_fixed_mix_was_recognisable_by_structure() -> None:
    """The baseline the drawn shapes replace: every audit of the fixed mix has the old
    audits' structure, against a fifth of users, and the same shape-only guess as above
    tells its audits from users more than 9 times in 10 (96.5 % with these seeds)."""
    traffic = AuditTraffic(seed=10)
    bodies = [traffic.body("tiny") for _ in range(2 * USERS)]
    assert all(old_audit_structure("chat", b) for b in bodies)
    users = recorded(8, 2 * USERS)
    user_shapes = [key_of(shape_of(k, b) or {}) for _, k, b in users]
    audit_shapes = [key_of(shape_of("chat", b) or {}) for b in bodies]
    seen_users, seen_audits = Counter(user_shapes[:USERS]), Counter(audit_shapes[:USERS])
    right = sum(seen_audits[s] <= seen_users[s] for s in user_shapes[USERS:])
    right += sum(seen_audits[s] > seen_users[s] for s in audit_shapes[USERS:])
    assert right / (2 * USERS) > 0.9


def gateway_app(tmp: Path, **limits: Any) -> Any:
    net = network(tmp, [FakeProvider(tmp)])
    contracts = net.service.directory.contracts
    for name in ("channels", "verdicts", "governor"):
        if not hasattr(contracts, name):
            setattr(contracts, name, SimpleNamespace())
        getattr(contracts, name).contract = None
    contracts.deployment = SimpleNamespace(deploy_block=0)
    return create_app(net.service, GatewayLimits(**limits))


@pytest.mark.parametrize("keys", [(), ("k",)], ids=["open", "with-keys"])
def test_the_gateway_publishes_the_shapes_users_send_and_not_audits(tmp_path: Path, keys: tuple[str, ...]) -> None:
    app = gateway_app(tmp_path, api_keys=frozenset(keys))
    auth = {"authorization": "Bearer k"}
    user = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4, "seed": 3}
    anthropic = {
        "model": "fake",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hi"}],
        "stop_sequences": ["."],
    }

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            for _ in range(2):
                assert (await http.post("/v1/chat/completions", json=user, headers=auth)).status_code == 200
            assert (await http.post("/v1/messages", json=anthropic, headers=auth)).status_code == 200
            audit = {**auth, "x-allmende-evidence": "1"}
            assert (await http.post("/v1/chat/completions", json={**user, "n": 2}, headers=audit)).status_code == 200
            anonymous = await http.get("/v1/shapes")
            shapes = await http.get("/v1/shapes", headers=auth)
            metrics = await http.get("/metrics")
            return anonymous, shapes, metrics

    anonymous, shapes, _ = asyncio.run(go())
    assert anonymous.status_code == (401 if keys else 200)
    published = shapes.json()
    assert published["total"] == 3  # the audit (it asked for evidence) is not counted
    counts = {key_of(item["shape"]): item["count"] for item in published["data"]}
    assert counts[key_of(shape_of("chat", user, "chat") or {})] == 2
    forwarded = messages_api.chat_body(messages_api.parse_messages(anthropic))
    assert counts[key_of(shape_of("chat", forwarded, "messages") or {})] == 1
    assert "Hallo" not in shapes.text and "Hi" not in shapes.text  # no content leaves the gateway


@pytest.mark.parametrize(
    "asked",
    [
        {"presence_penalty": 0.6},
        {"frequency_penalty": -1.5},
        {"presence_penalty": 0, "frequency_penalty": 1.2},
        {"logit_bias": {"50256": -100}},
        {"logit_bias": {str(t): 3 for t in range(9)}},
        {"top_k": 40},
        {"top_k": 500},
        {"min_p": 0.05},
    ],
    ids=["presence", "negative-frequency", "both", "one-bias", "many-biases", "top-k", "large-top-k", "min-p"],
)
def test_requests_with_sampling_parameters_are_audited_in_their_shape(asked: dict[str, Any]) -> None:
    """A provider that ignored penalties, logit_bias, top_k or min_p only where no audit asks
    for them meets audits that ask for them as often as users do: their shapes (how many
    biased tokens, never which) are composed like any other."""
    user = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me about tides."}], **asked}
    shape = shape_of("chat", user, "chat")
    assert shape is not None

    body = AuditTraffic(seed=8).compose(shape, "tiny")

    assert shape_of("chat", body, "chat") == shape and set(asked) <= set(body)
    check_request("chat", body)  # a body the gateway and the provider serve

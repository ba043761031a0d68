"""Hostile and malformed requests get a 4xx with a clear JSON error, and the node keeps
serving everyone else."""

from __future__ import annotations

import os

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from allmende.api.client import PayerKey, ProviderInfo, ProviderReplyError, build_envelope
from allmende.core import Voucher, sign_voucher
from allmende.core.envelope import public_key_bytes
from tests.provider.conftest import Running
from tests.provider.test_provider import CHAT, Payer, tiny_id


def post(running: Running, body: object = None, content: bytes | None = None) -> httpx.Response:
    url = f"{running.provider.url}/v1/infer"
    if content is not None:
        return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(url, json=body, timeout=30)


def assert_error(reply: httpx.Response, status: int, code: str, words: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    assert words in error["message"]


def envelope(running: Running, payer: Payer, **kw: object) -> dict:
    info = kw.pop("info", running.info)
    _, env, _ = build_envelope(
        info,
        kw.pop("model", tiny_id(running)),
        kw.pop("kind", "chat"),  # type: ignore[arg-type]
        kw.pop("body", CHAT),
        kw.pop("signer", running.signer),  # type: ignore[arg-type]
        kw.pop("channel", payer.channel),
        kw.pop("voucher", None),  # type: ignore[arg-type]
        kw.pop("request_id", None),
    )  # type: ignore[arg-type]
    return env


@pytest.fixture(scope="module")
def payer(running: Running) -> Payer:
    return Payer(running, deposit=10**6)


@pytest.mark.parametrize(
    ("content", "status", "code", "words"),
    [
        (b"{not json", 400, "bad_request", "not valid JSON"),
        (b"\xff\xfe\x00", 400, "bad_request", "not valid JSON"),
        (b"[]", 400, "bad_envelope", "JSON object"),
        (b'{"request_id": "0x12"}', 400, "bad_envelope", "request_id"),
        (b'{"request_id": "0x' + b"00" * 32 + b'", "enc": 5}', 400, "bad_envelope", "enc"),
        (
            b'{"request_id": "0x' + b"00" * 32 + b'", "enc": "!!", "nonce": "", "ciphertext": ""}',
            400,
            "bad_envelope",
            "base64",
        ),
    ],
    ids=["bad-json", "invalid-utf8", "array", "short-id", "enc-type", "bad-base64"],
)
def test_malformed_envelopes(running: Running, content: bytes, status: int, code: str, words: str) -> None:
    assert_error(post(running, content=content), status, code, words)


def test_huge_body_is_refused(running: Running) -> None:
    assert_error(post(running, content=b"x" * (3 * 1024 * 1024)), 413, "body_too_large", "larger than")


def test_sealed_to_the_wrong_key(running: Running, payer: Payer) -> None:
    other = ProviderInfo(running.info.address, public_key_bytes(X25519PrivateKey.generate()), 31337, [], {})
    assert_error(post(running, envelope(running, payer, info=other)), 400, "bad_envelope", "does not decrypt")


def test_tampered_request_id(running: Running, payer: Payer) -> None:
    env = envelope(running, payer)
    env["request_id"] = "0x" + os.urandom(32).hex()
    assert_error(post(running, env), 400, "bad_envelope", "does not decrypt")


def test_replayed_request_id(running: Running, payer: Payer) -> None:
    rid = os.urandom(32)
    assert post(running, envelope(running, payer, request_id=rid)).status_code == 200
    assert_error(post(running, envelope(running, payer, request_id=rid)), 409, "replayed_request", "already")


def test_unknown_model(running: Running, payer: Payer) -> None:
    assert_error(post(running, envelope(running, payer, model=b"\x07" * 32)), 404, "unknown_model", "not served")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [{"role": "user", "content": "x" * 600}], "max_tokens": 5}, "context length"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, "context length"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": 1, "content": None}]}, "role"),
    ],
    ids=[
        "long-prompt",
        "huge-max-tokens",
        "negative-max-tokens",
        "string-max-tokens",
        "temperature",
        "messages-type",
        "message-fields",
    ],
)
def test_bad_generation_parameters(running: Running, payer: Payer, body: dict, words: str) -> None:
    reply = post(running, envelope(running, payer, body=body))
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]["message"]


def test_wrong_kind_for_model(running: Running, payer: Payer) -> None:
    assert_error(post(running, envelope(running, payer, kind="embedding")), 400, "bad_request", "does not serve")


def voucher(running: Running, payer: Payer, amount: int, key: bytes | None = None, channel: bytes | None = None):
    return sign_voucher(
        Voucher(channel or payer.channel, tiny_id(running), amount), running.voucher_domain, key or running.payer.key
    )


def test_voucher_from_someone_else(running: Running, payer: Payer) -> None:
    forged = voucher(running, payer, 1, key=os.urandom(32))
    assert_error(post(running, envelope(running, payer, voucher=forged)), 402, "bad_voucher", "signature")


def test_voucher_over_deposit(running: Running, payer: Payer) -> None:
    big = voucher(running, payer, 10**6 + 1)
    assert_error(post(running, envelope(running, payer, voucher=big)), 402, "bad_voucher", "exceed the deposit")


def test_a_voucher_overtaken_by_a_higher_one_is_superseded_not_refused(running: Running, payer: Payer) -> None:
    # concurrent requests reach the provider in any order: the lower voucher arrives second
    assert post(running, envelope(running, payer, voucher=voucher(running, payer, 600))).status_code == 200
    late = post(running, envelope(running, payer, voucher=voucher(running, payer, 500)))
    again = post(running, envelope(running, payer, voucher=voucher(running, payer, 600)))

    assert late.status_code == 200, late.text
    assert again.status_code == 200, again.text
    # the provider kept the highest: a forged "lower" one is still refused by its signature
    forged = voucher(running, payer, 400, key=os.urandom(32))
    assert_error(post(running, envelope(running, payer, voucher=forged)), 402, "bad_voucher", "signature")


def test_a_stranger_spending_a_public_channel_id_gets_401_and_costs_the_payer_nothing(running: Running) -> None:
    victim = Payer(running, deposit=10**6)  # its channel id is public (ChannelOpened)
    stranger = PayerKey(os.urandom(32), running.voucher_domain)
    greedy = {**CHAT, "max_tokens": 400}  # ~240 units each: served, 5 would use up the 1,000 credit limit

    replies = [post(running, envelope(running, victim, signer=stranger, body=greedy)) for _ in range(6)]
    rid = os.urandom(32)  # the plain-text `payer` field alone, as before requests were signed
    unsigned = post(running, sealed(running, plain(running, victim, request_id="0x" + rid.hex()), rid))

    for reply in replies:
        assert_error(reply, 401, "payer_not_authenticated", "belongs to")
    assert_error(unsigned, 401, "payer_not_authenticated", "no payer signature")
    # the victim's credit is untouched (served in full, the stranger's answers would have used it up)
    for _ in range(2):
        assert victim.ask(tiny_id(running), "chat", CHAT, voucher=None).receipt.receipt.amount


def test_unknown_channel(running: Running, payer: Payer) -> None:
    assert_error(
        post(running, envelope(running, payer, channel=b"\x05" * 32)), 402, "payment_required", "does not exist"
    )


def test_credit_limit_stops_a_payer_who_never_pays(running: Running) -> None:
    stingy = Payer(running, deposit=10**6)
    body = {**CHAT, "max_tokens": 400}  # about 240 units each; the provider's credit limit is 1,000
    served = 0
    with pytest.raises(ProviderReplyError) as refused:
        for _ in range(10):
            stingy.ask(tiny_id(running), "chat", body, voucher=None)
            served += 1

    assert refused.value.status == 402 and "credit limit" in refused.value.message
    assert 1 <= served <= 6
    # paying what is owed opens the tap again
    assert stingy.ask(tiny_id(running), "chat", CHAT).receipt.receipt.amount > 0


def test_good_requests_are_served_after_all_of_this(running: Running, payer: Payer) -> None:
    # hostile traffic of its own (it may run first): a forged voucher, and a replayed request id
    forged = post(running, envelope(running, payer, voucher=voucher(running, payer, 1, key=os.urandom(32))))
    replayed_id = os.urandom(32)
    first = post(running, envelope(running, payer, request_id=replayed_id))
    replay = post(running, envelope(running, payer, request_id=replayed_id))
    assert (forged.status_code, first.status_code, replay.status_code) == (402, 200, 409)

    fresh = Payer(running)
    answer = fresh.ask(tiny_id(running), "chat", CHAT)
    assert answer.receipt.receipt.tokens_out > 0
    assert httpx.get(f"{running.provider.url}/healthz").json()["ok"] is True
    metrics = httpx.get(f"{running.provider.url}/metrics").text
    assert 'allmende_provider_requests_total{kind="chat",status="200"}' in metrics
    assert 'status="402"' in metrics and 'status="409"' in metrics


# ----------------------------------------------------- more hostile envelopes


def sealed(running: Running, plaintext: bytes, request_id: bytes | None = None, address: str | None = None) -> dict:
    from allmende.core.envelope import seal_request

    rid = request_id or os.urandom(32)
    env, _ = seal_request(running.info.x25519_key, address or running.info.address, rid, plaintext)
    return env


def plain(running: Running, who: Payer, **overrides: object) -> bytes:
    import json as _json

    data = {
        "request_id": None,
        "model_id": "0x" + tiny_id(running).hex(),
        "kind": "chat",
        "body": CHAT,
        "payer": running.payer.address,  # claimed in plain text: proves nothing without a signature
        "channel_id": "0x" + who.channel.hex(),
        "voucher": None,
    }
    data.update(overrides)
    return _json.dumps(data).encode()


@pytest.mark.parametrize(
    ("mutate", "status", "words"),
    [
        (lambda e: {**e, "ciphertext": e["ciphertext"][:-4] + "AAAA"}, 400, "does not decrypt"),
        (lambda e: {**e, "nonce": "AAAA"}, 400, "nonce"),
        (lambda e: {**e, "enc": "AAAA"}, 400, "enc"),
        (lambda e: {k: v for k, v in e.items() if k != "ciphertext"}, 400, "ciphertext"),
        (lambda e: {**e, "request_id": 7}, 400, "request_id"),
    ],
    ids=["tampered-ciphertext", "short-nonce", "short-enc", "no-ciphertext", "numeric-request-id"],
)
def test_mangled_envelopes(running: Running, payer: Payer, mutate, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    reply = post(running, mutate(envelope(running, payer)))
    assert reply.status_code == status and words in reply.json()["error"]["message"], reply.text


def test_envelope_sealed_for_another_provider_address(running: Running, payer: Payer) -> None:
    rid = os.urandom(32)
    env = sealed(running, plain(running, payer, request_id="0x" + rid.hex()), rid, address="0x" + "12" * 20)
    assert_error(post(running, env), 400, "bad_envelope", "does not decrypt")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"request_id": "0x" + "ab" * 32}, "differs"),
        ({"kind": "image"}, "kind must be"),
        ({"body": "not an object"}, "body must be"),
        ({"signature": "0x1234"}, "signature"),
        ({"channel_id": "0x1234"}, "channel_id"),
        ({"voucher": {"channel_id": "0xzz"}}, "channel_id"),
        ({"voucher": "yes"}, "voucher must be"),
        ({"model_id": 5}, "model_id"),
    ],
    ids=[
        "inner-id-differs",
        "bad-kind",
        "body-string",
        "short-signature",
        "short-channel",
        "bad-voucher-hex",
        "voucher-string",
        "model-id-number",
    ],
)
def test_malformed_plaintexts(running: Running, payer: Payer, overrides: dict, words: str) -> None:
    rid = os.urandom(32)
    data = {"request_id": "0x" + rid.hex(), **overrides}
    reply = post(running, sealed(running, plain(running, payer, **data), rid))
    assert 400 <= reply.status_code < 500 and words in reply.json()["error"]["message"], reply.text


def test_plaintext_that_is_not_json(running: Running, payer: Payer) -> None:
    assert_error(post(running, sealed(running, b"\xff\x00 not json")), 400, "bad_request", "not JSON")

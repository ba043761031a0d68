"""The provider's intake against in-process fakes: every request must be signed by the
channel's payer (a stranger who knows the public channel id is refused with 401, reserves
nothing and costs the payer nothing, also with 64 requests at once), over-long prompts are
refused before tokenizing, and tokenizing runs off the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import httpx
import pytest

from allmende.api.canonical import checked
from allmende.api.client import PayerKey, ProviderReplyError, ainfer, ainfer_stream, build_envelope
from allmende.engine.base import Prompt
from allmende.provider.errors import PayerNotAuthenticated, PaymentRequired
from allmende.provider.service import INLINE_REQUEST_BYTES
from tests.gateway.fakes import GATEWAY, GATEWAY_KEY, MODEL_ID, RECEIPTS, VOUCHERS, FakeEngine, FakeProvider

CHANNEL = b"\x01" * 32
CHAT = {"messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 8}
PAYER = PayerKey(GATEWAY_KEY, VOUCHERS)


def ask(provider: FakeProvider, body: dict, payer: PayerKey = PAYER) -> object:
    return ask_kind(provider, "chat", body, payer)


def ask_kind(provider: FakeProvider, kind: str, body: dict, payer: PayerKey = PAYER) -> object:
    rid, env, sealer = build_envelope(provider.entry().info, MODEL_ID, kind, body, payer, CHANNEL, None)

    async def run() -> object:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=provider.app), base_url=provider.url) as http:
            info = provider.entry().info
            if body.get("stream"):
                return [item async for item in ainfer_stream(http, provider.url, info, RECEIPTS, env, sealer, rid)]
            return await ainfer(http, provider.url, info, RECEIPTS, env, sealer, rid)

    return asyncio.run(run())


def test_a_stranger_who_knows_the_channel_id_gets_401_and_is_not_served(tmp_path: Path) -> None:
    provider = FakeProvider(tmp_path)
    stranger = PayerKey(os.urandom(32), VOUCHERS)

    with pytest.raises(ProviderReplyError) as refused:
        ask(provider, CHAT, stranger)

    assert (refused.value.status, refused.value.code) == (401, "payer_not_authenticated")
    assert "belongs to" in refused.value.message
    assert provider.store.receipt_count() == 0 and provider.gate.reserved(CHANNEL) == 0
    assert ask(provider, CHAT).receipt.receipt.amount > 0  # type: ignore[attr-defined]


def test_64_concurrent_spoofed_and_real_requests_never_overshoot_the_credit_limit(tmp_path: Path) -> None:
    engine = FakeEngine()
    cost = checked("chat", dict(CHAT)).max_cost(engine.context_length, 200_000, 600_000)
    provider = FakeProvider(tmp_path, engine=engine, credit_limit=5 * cost)  # room for exactly 5 unpaid requests
    stranger = PayerKey(os.urandom(32), VOUCHERS)
    info = provider.entry().info
    envelopes = [
        build_envelope(info, MODEL_ID, "chat", CHAT, stranger if i % 2 else PAYER, CHANNEL, None)[1] for i in range(64)
    ]
    start = threading.Barrier(64)
    outcomes: list[str] = []
    admitted = []
    lock = threading.Lock()

    def one(envelope: dict[str, str]) -> None:
        request = provider.service.open(envelope)
        start.wait()
        try:
            provider.service.admit(request)  # and keep the reservation: these requests are all in flight
            outcome = "admitted"
            with lock:
                admitted.append(request)
        except PayerNotAuthenticated:
            outcome = "spoofed"
        except PaymentRequired:
            outcome = "credit"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one, args=(e,)) for e in envelopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("spoofed") == 32  # every stranger refused
    assert outcomes.count("admitted") == 5 and outcomes.count("credit") == 27  # the real payer: its credit, exactly
    assert provider.gate.reserved(CHANNEL) == 5 * cost <= provider.credit_limit
    assert {r.payer for r in admitted} == {GATEWAY}  # recovered from the signature
    for request in admitted:
        provider.service.release(request)
    assert provider.gate.reserved(CHANNEL) == 0


def test_a_prompt_too_large_for_any_tokenizer_is_refused_before_tokenizing(tmp_path: Path) -> None:
    tokenized = []

    class Counting(FakeEngine):
        def prompt_ids(self, prompt: Prompt) -> list[int]:
            tokenized.append(prompt)
            return super().prompt_ids(prompt)

    provider = FakeProvider(tmp_path, engine=Counting())
    huge = {"messages": [{"role": "user", "content": "ä" * (8 * 256 + 1)}], "max_tokens": 8}

    with pytest.raises(ProviderReplyError) as refused:
        ask(provider, huge)

    assert (refused.value.status, refused.value.code, refused.value.param) == (
        400,
        "context_length_exceeded",
        "messages",
    )
    # 2 bytes per "ä", 4 for the role: 4102 bytes, just over 16 per token of the 256-token context
    assert "4102 bytes; fake takes at most 4096 (16 per token of its 256-token context)" in refused.value.message
    assert tokenized == [] and provider.gate.reserved(CHANNEL) == 0 and provider.store.receipt_count() == 0


def test_a_long_prompt_is_tokenized_off_the_event_loop_a_short_one_on_it(tmp_path: Path) -> None:
    """A request over INLINE_REQUEST_BYTES is tokenized in a worker thread (it would stall the
    other streams); a short one on the loop (a thread switch costs more than tokenizing it)."""
    threads = []

    class Recording(FakeEngine):
        def prompt_ids(self, prompt: Prompt) -> list[int]:
            threads.append(threading.get_ident())
            return super().prompt_ids(prompt)

    provider = FakeProvider(tmp_path, engine=Recording())
    long = {**CHAT, "user": "u" * INLINE_REQUEST_BYTES}  # a large request, a short prompt (the fake's context)

    ask(provider, long)  # the event loop runs in this thread (asyncio.run)
    ask(provider, {**long, "stream": True})
    ask(provider, CHAT)
    ask(provider, {**CHAT, "stream": True})

    loop = threading.get_ident()
    assert len(threads) == 4
    assert loop not in threads[:2] and threads[2:] == [loop, loop]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"top_k": -5}, "top_k"), ({"logit_bias": {"x": 1}}, "logit_bias"), ({"messages": []}, "messages")],
    ids=["top-k", "logit-bias", "no-messages"],
)
def test_a_body_the_provider_refuses_names_the_parameter(tmp_path: Path, extra: dict, param: str) -> None:
    """Sent to the provider directly (no gateway screened it), a bad parameter is refused
    with OpenAI's `param`, which the provider used to drop when it wrapped the error."""
    provider = FakeProvider(tmp_path)

    with pytest.raises(ProviderReplyError) as refused:
        ask(provider, {**CHAT, "max_tokens": 2, **extra})

    assert (refused.value.status, refused.value.param) == (400, param)
    assert provider.gate.reserved(CHANNEL) == 0 and provider.store.receipt_count() == 0

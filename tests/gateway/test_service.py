"""The gateway's serving logic against in-process providers: routing, payment, receipt
checks and failover before the first token and in the middle of a stream."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from allmende.api.canonical import checked
from allmende.api.client import Answer
from allmende.core import SignedReceipt, request_cost
from allmende.core.routing import ProviderStats
from allmende.gateway.errors import InvalidRequest, NoProvider
from tests.gateway.fakes import MODEL_ID, FakeEngine, FakeProvider, network

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 8}


def collect_stream(net, body):  # type: ignore[no-untyped-def]
    async def run() -> tuple[str, Answer]:
        text, final = "", None
        async for item in net.service.stream(checked("chat", body), None):
            if isinstance(item, Answer):
                final = item
            else:
                text += item
        assert final is not None
        return text, final

    return asyncio.run(run())


def failed_attempts(net, provider: FakeProvider) -> float:  # type: ignore[no-untyped-def]
    total = 0.0
    for metric in net.service.failed_attempts.collect():
        for sample in metric.samples:
            if sample.labels.get("provider") == provider.address and sample.name.endswith("_total"):
                total += sample.value
    return total


def test_a_request_is_served_paid_and_its_receipt_recorded(tmp_path: Path) -> None:
    net = network(tmp_path, [FakeProvider(tmp_path)])
    provider = net.providers[0]

    result = asyncio.run(net.service.complete(checked("chat", dict(CHAT)), "key-1"))

    receipt = result.answer.receipt.receipt
    assert len(result.text) == 8 and result.answer.usage["completion_tokens"] == 8
    assert receipt.amount == request_cost(5, 8, provider.price_in, provider.price_out)
    assert net.store.receipt_count() == 1 and net.store.spent("key-1") == receipt.amount
    assert net.store.owed(bytes([1]) * 32, MODEL_ID)[0] == receipt.amount
    assert provider.store.receipt_count() == 1
    assert net.service.payments.in_flight(bytes([1]) * 32) == 0  # the reservation became `owed`


def test_failover_before_the_first_token_when_a_provider_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead, alive = FakeProvider(tmp_path), FakeProvider(tmp_path)
    net = network(tmp_path, [dead, alive])
    net.kill(dead)

    with caplog.at_level(logging.WARNING, logger="allmende.gateway"):
        texts = {asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None)).text for _ in range(6)}

    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert failures and all(dead.address in m and "for fake failed: 502 ConnectError" in m for m in failures)

    assert len(texts) == 1  # every request answered, all by the live provider
    assert alive.store.receipt_count() == 6 and dead.store.receipt_count() == 0
    assert failed_attempts(net, dead) >= 1 and failed_attempts(net, alive) == 0
    stats = net.service.directory.entry(dead.address).stats[MODEL_ID]  # type: ignore[union-attr]
    assert stats.failures >= 1  # an unreachable provider is blamed (and backs off after two)


def test_a_structured_output_stream_is_not_continued_by_a_provider_that_would_restart_its_grammar(
    tmp_path: Path,
) -> None:
    failing = FakeProvider(tmp_path, engine=FakeEngine(fail_after=3))
    healthy = FakeProvider(tmp_path)
    net = network(tmp_path, [failing, healthy], entries=[failing.entry()])
    body = {**CHAT, "stream": True, "max_tokens": 10, "response_format": {"type": "json_object"}}

    async def run() -> str:
        text = ""
        async for item in net.service.stream(checked("chat", body), None):
            assert not isinstance(item, Answer)
            text += item
            if len(text) == 3:
                net.service.directory.install([failing.entry(), healthy.entry()])
                for entry in net.service.directory.entries():
                    entry.stats[MODEL_ID] = ProviderStats(entry.address, 1, capacity=64)
        return text

    with pytest.raises(NoProvider, match="structured output cannot be continued"):
        asyncio.run(run())


def test_a_stream_continues_on_another_provider_when_its_provider_fails_mid_stream(tmp_path: Path) -> None:
    failing = FakeProvider(tmp_path, engine=FakeEngine(fail_after=3))
    healthy = FakeProvider(tmp_path)
    # at first only the failing provider is known, so the stream surely starts there
    net = network(tmp_path, [failing, healthy], entries=[failing.entry()])
    body = {**CHAT, "stream": True, "max_tokens": 10}

    async def run() -> tuple[str, Answer]:
        text, final = "", None
        async for item in net.service.stream(checked("chat", body), None):
            if isinstance(item, Answer):
                final = item
                continue
            text += item
            if len(text) == 3:  # the failing provider's last token: now the healthy one appears
                net.service.directory.install([failing.entry(), healthy.entry()])
                for entry in net.service.directory.entries():
                    entry.stats[MODEL_ID] = ProviderStats(entry.address, 1, capacity=64)
        assert final is not None
        return text, final

    text, final = asyncio.run(run())

    assert len(text) == 10  # one stream: 3 tokens from the first provider, 7 from the second
    assert final.usage["completion_tokens"] == 10
    assert final.receipt.receipt.provider == healthy.address
    assert failed_attempts(net, failing) == 1
    assert healthy.store.receipt_count() == 1
    # the failing provider billed the 3 tokens it sent (issue 42), and the gateway agrees
    (cut,) = [SignedReceipt.from_json(json.loads(r)).receipt for r in failing.store.receipts()]
    assert cut.tokens_out == 3
    earned = sum(row.earned for row in failing.store.all_ledger())
    channel = net.store.channel(failing.address)
    assert channel is not None and net.store.owed(channel[0], MODEL_ID)[0] == earned == cut.amount > 0
    assert net.service.payments.in_flight(channel[0]) == 0  # its reservation is settled, not left counted


def test_streamed_usage_counts_tokens_like_the_one_shot_answer(tmp_path: Path) -> None:
    net = network(tmp_path, [FakeProvider(tmp_path)])
    one_shot = asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None))
    text, final = collect_stream(net, {**CHAT, "stream": True})

    assert text == one_shot.text
    assert final.usage == one_shot.answer.usage


def test_an_overcharging_receipt_is_not_paid_and_the_request_goes_elsewhere(tmp_path: Path) -> None:
    greedy = FakeProvider(tmp_path, price_out=6_000_000)  # serves at 10x the price it offers on chain
    honest = FakeProvider(tmp_path)
    net = network(tmp_path, [greedy, honest], entries=[greedy.entry(offer_price_out=600_000), honest.entry()])

    results = [asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None)) for _ in range(4)]

    assert {r.answer.receipt.receipt.provider for r in results} == {honest.address}
    assert greedy.store.receipt_count() >= 1  # it was tried, answered and asked too much
    assert net.store.owed(bytes([1]) * 32, MODEL_ID)[0] == 0  # and is owed nothing for it
    stats = net.service.directory.entry(greedy.address).stats[MODEL_ID]  # type: ignore[union-attr]
    assert stats.failures >= 1


def test_a_payment_refusal_moves_on_without_blaming_the_provider(tmp_path: Path) -> None:
    # the provider publishes more credit than it grants (its own mistake): it answers 402
    stingy = FakeProvider(tmp_path, credit_limit=10, published_credit_limit=1_000_000)
    other = FakeProvider(tmp_path)
    net = network(tmp_path, [stingy, other])

    results = [asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None)) for _ in range(6)]

    assert all(r.answer.receipt.receipt.provider == other.address for r in results)
    stats = net.service.directory.entry(stingy.address).stats[MODEL_ID]  # type: ignore[union-attr]
    assert stats.failures == 0 and stats.suspended_until == 0
    assert failed_attempts(net, stingy) >= 1


def test_a_request_the_provider_calls_invalid_is_not_retried_elsewhere(tmp_path: Path) -> None:
    first, second = FakeProvider(tmp_path), FakeProvider(tmp_path)
    net = network(tmp_path, [first, second])
    too_long = {**CHAT, "max_tokens": 255}  # prompt + max_tokens beyond the context

    with pytest.raises(InvalidRequest, match="too long"):
        asyncio.run(net.service.complete(checked("chat", too_long), None))
    assert sum(net.hosts.hits.values()) == 1


def test_no_provider_left_is_a_clear_503(tmp_path: Path) -> None:
    only = FakeProvider(tmp_path)
    net = network(tmp_path, [only])
    net.kill(only)

    with pytest.raises(NoProvider, match="no provider could serve 'fake'"):
        asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None))


def test_64_concurrent_requests_with_vouchers_in_any_order_all_succeed(tmp_path: Path) -> None:
    # a small credit limit makes the gateway wait for answers rather than overshoot it
    providers = [FakeProvider(tmp_path, credit_limit=600), FakeProvider(tmp_path, credit_limit=600)]
    net = network(tmp_path, providers)

    async def run() -> list[object]:
        bodies = [
            {**CHAT, "messages": [{"role": "user", "content": f"Hallo {i}"}], "stream": i % 2 == 1} for i in range(64)
        ]
        tasks = []
        for body in bodies:
            if body["stream"]:
                tasks.append(drain(net.service.stream(checked("chat", body), None)))
            else:
                tasks.append(net.service.complete(checked("chat", body), None))
        return await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(stream):  # type: ignore[no-untyped-def]
        return [item async for item in stream]

    results = asyncio.run(run())

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sum(p.store.receipt_count() for p in providers) == 64
    for provider in providers:  # nobody was refused or blamed
        assert failed_attempts(net, provider) == 0
    receipts = [json.loads(r[3]) for r in net.store.receipts()]
    assert len(receipts) == 64

"""The gateway checks every receipt against what it sent and received before it pays: a
provider that inflates its token counts, tampers with a hash or asks more than its price is
not paid, is blamed, and a one-shot request is answered by another provider instead."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from allmende.core import request_cost
from allmende.gateway.errors import NoProvider
from allmende.provider.service import InferRequest, ProviderService
from allmende.testing.cheats import InflatingService
from tests.gateway.fakes import MODEL_ID, FakeProvider, network
from tests.gateway.test_service import CHAT, collect_stream, failed_attempts


class Tampering(ProviderService):
    """Honest work, one field of each receipt changed (validly signed)."""

    tamper: str = ""

    def _finish(
        self, req: InferRequest, tokens_in: int, tokens_out: int, output: bytes, proof: bytes = b""
    ) -> dict[str, Any]:
        if self.tamper == "tokens-in":  # a few more prompt tokens than the prompt can have
            tokens_in += 200
        elif self.tamper == "tokens-out":
            tokens_out += 3
        elif self.tamper == "output-hash":
            output += b" (and more)"
        elif self.tamper == "input-hash":
            req.input_hash = b"\x99" * 32
        return super()._finish(req, tokens_in, tokens_out, output, proof)


def tampering(kind: str) -> type[ProviderService]:
    return type(f"Tampering{kind}", (Tampering,), {"tamper": kind})


def owed_to(net, index: int) -> int:  # type: ignore[no-untyped-def]
    return int(net.store.owed(bytes([index + 1]) * 32, MODEL_ID)[0])


def test_a_provider_inflating_its_receipts_is_not_paid_blamed_and_its_answer_withheld(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cheater, honest = FakeProvider(tmp_path, service_class=InflatingService), FakeProvider(tmp_path)
    net = network(tmp_path, [cheater, honest])

    with caplog.at_level(logging.WARNING, logger="allmende.gateway"):
        results = [asyncio.run(net.service.complete("chat", dict(CHAT), None)) for _ in range(6)]

    # the cheater answered and signed receipts for 10x the tokens (the 12,112 vs 32 units)
    assert cheater.store.receipt_count() >= 1
    # nobody got its answers, and it is owed nothing: no voucher will ever cover them
    assert {r.answer.receipt.receipt.provider for r in results} == {honest.address}
    assert owed_to(net, 0) == 0
    assert owed_to(net, 1) == 6 * request_cost(5, 8, honest.price_in, honest.price_out)
    # blamed and logged
    assert net.service.directory.entry(cheater.address).stats[MODEL_ID].failures >= 1  # type: ignore[union-attr]
    assert failed_attempts(net, cheater) >= 1 and failed_attempts(net, honest) == 0
    logged = [r.getMessage() for r in caplog.records if cheater.address in r.getMessage()]
    assert logged and all("receipt refused: tokensOut 80, but 8 tokens were received" in m for m in logged)
    assert net.service.payments.in_flight(bytes([1]) * 32) == 0  # its reservation was released


@pytest.mark.parametrize("tamper", ["tokens-in", "tokens-out", "output-hash", "input-hash"])
def test_a_receipt_that_does_not_match_what_was_sent_and_received_is_not_paid(tmp_path: Path, tamper: str) -> None:
    cheater = FakeProvider(tmp_path, service_class=tampering(tamper))
    net = network(tmp_path, [cheater])

    with pytest.raises(NoProvider, match="failed the gateway's check"):
        asyncio.run(net.service.complete("chat", dict(CHAT), None))

    assert cheater.store.receipt_count() == 1 and owed_to(net, 0) == 0
    assert net.service.directory.entry(cheater.address).stats[MODEL_ID].failures == 1  # type: ignore[union-attr]


def test_an_inflated_stream_receipt_is_not_paid_and_the_user_sees_the_counted_usage(tmp_path: Path) -> None:
    cheater = FakeProvider(tmp_path, service_class=InflatingService)
    net = network(tmp_path, [cheater])

    text, final = collect_stream(net, {**CHAT, "stream": True})

    assert len(text) == 8  # the text was out before the receipt came
    assert final.receipt.receipt.tokens_out == 80  # what the cheater claimed
    assert final.usage == {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58}
    assert owed_to(net, 0) == 0  # not paid
    assert net.service.directory.entry(cheater.address).stats[MODEL_ID].failures == 1  # type: ignore[union-attr]


def test_honest_receipts_of_streams_and_one_shot_answers_pass_and_are_paid(tmp_path: Path) -> None:
    honest = FakeProvider(tmp_path)
    net = network(tmp_path, [honest])

    asyncio.run(net.service.complete("chat", dict(CHAT), None))
    asyncio.run(net.service.complete("completion", {"model": "fake", "prompt": "Grüß Gott", "max_tokens": 3}, None))
    collect_stream(net, {**CHAT, "stream": True})

    assert honest.store.receipt_count() == 3
    assert owed_to(net, 0) == honest_total(honest)
    assert net.service.directory.entry(honest.address).stats[MODEL_ID].failures == 0  # type: ignore[union-attr]


def honest_total(provider: FakeProvider) -> int:
    cost = request_cost
    p = (provider.price_in, provider.price_out)
    return cost(5, 8, *p) + cost(len("Grüß Gott"), 3, *p) + cost(5, 8, *p)

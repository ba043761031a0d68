"""The gateway checks every receipt against what it sent and received before it pays: a
provider that inflates its token counts, tampers with a hash or asks more than its price is
not paid, is blamed, and a one-shot request is answered by another provider instead."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import checked
from allmende.api.protocol import input_hash
from allmende.core import Receipt, SignedReceipt, request_cost, sign_receipt
from allmende.gateway.errors import NoProvider
from allmende.payer.receipts import BadReceipt, check_receipt, output_bytes
from allmende.provider.service import InferRequest, ProviderService
from allmende.testing.provider_cheats import InflatingService
from tests.gateway.fakes import MODEL_ID, RECEIPTS, FakeProvider, network
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
        results = [asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None)) for _ in range(6)]

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
        asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None))

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

    asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None))
    asyncio.run(
        net.service.complete(checked("completion", {"model": "fake", "prompt": "Grüß Gott", "max_tokens": 3}), None)
    )
    collect_stream(net, {**CHAT, "stream": True})

    assert honest.store.receipt_count() == 3
    assert owed_to(net, 0) == honest_total(honest)
    assert net.service.directory.entry(honest.address).stats[MODEL_ID].failures == 0  # type: ignore[union-attr]


def honest_total(provider: FakeProvider) -> int:
    cost = request_cost
    p = (provider.price_in, provider.price_out)
    return cost(5, 8, *p) + cost(len("Grüß Gott"), 3, *p) + cost(5, 8, *p)


# ------------------------------------------------------------ check_receipt, one rule at a time

BODY = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 8}
EMBED = {"model": "mini", "input": ["a cat", "a dog"]}
PRICES = (200_000, 600_000)


def signed(kind: str, body: dict, output: dict, **fields: Any) -> SignedReceipt:
    out = output_bytes(checked(kind, dict(body)), output)  # type: ignore[arg-type]
    tokens_in, tokens_out = fields.pop("tokens_in", 9), fields.pop("tokens_out", len(output.get("token_ids", [])))
    receipt = Receipt(
        request_id=b"\x01" * 32,
        model_id=MODEL_ID,
        provider=Account.from_key(b"\x05" * 32).address,
        input_hash=input_hash(kind, body),
        output_hash=keccak(out),
        proof_hash=b"\x00" * 32,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        amount=fields.pop("amount", request_cost(tokens_in, tokens_out, *PRICES)),
        timestamp=1,
    )
    return sign_receipt(receipt, RECEIPTS, b"\x05" * 32)


GEN = {"text": "abc", "token_ids": [1, 2, 3]}
VECTORS = {"embeddings": [[0.25, -0.5], [1e-7, 3.0]]}


@pytest.mark.parametrize(
    ("kind", "body", "output", "fields", "more", "problem"),
    [
        ("chat", BODY, GEN, {}, {}, None),
        ("embedding", EMBED, VECTORS, {"tokens_in": 14}, {}, None),
        ("embedding", EMBED, VECTORS, {"tokens_in": 14, "tokens_out": 1}, {}, "tokensOut 1, but 0"),
        ("embedding", EMBED, VECTORS, {"tokens_in": 19}, {}, "tokensIn 19 exceeds 18"),
        ("chat", BODY, {"text": "abc"}, {"tokens_out": 0}, {}, "no list of token ids"),
        ("chat", BODY, {"text": "abc", "token_ids": ["1"]}, {"tokens_out": 1}, {}, "no list of token ids"),
        ("chat", BODY, {"text": "x" * 9, "token_ids": [1] * 9}, {}, {}, "more than max_tokens × n = 8"),
        ("chat", BODY, GEN, {}, {"streamed_tokens": 4}, "deltas carried 4 tokens"),
        ("chat", BODY, GEN, {}, {"context_length": 11}, "exceed the context length 11"),
        ("chat", BODY, GEN, {"amount": 5}, {}, "amount 5, but usage × the price on chain is 4"),
        ("chat", BODY, GEN, {"amount": 3}, {}, None),  # asking less is the provider's own loss
        ("chat", {**BODY, "stop": ["c"]}, GEN, {}, {}, "holds a requested stop string"),
        ("chat", {**BODY, "stop": "b"}, GEN, {}, {"streamed_text": "abc"}, "holds a requested stop string"),
        ("chat", {**BODY, "stop": ["x", "cd"]}, {**GEN, "finish_reason": "stop"}, {}, {}, None),
        ("chat", BODY, {**GEN, "finish_reason": "length"}, {}, {}, "finish_reason length after 3 tokens"),
    ],
    ids=[
        "honest-chat",
        "honest-embedding",
        "embedding-with-output-tokens",
        "embedding-inflated-input",
        "no-token-ids",
        "token-ids-not-integers",
        "more-than-max-tokens",
        "stream-deltas-carried-more",
        "beyond-the-context",
        "overcharged",
        "undercharged",
        "text-past-a-stop-string",
        "streamed-text-past-a-stop-string",
        "stopped-before-its-stop-strings",
        "length-before-max-tokens",
    ],
)
def test_check_receipt_rules(
    kind: str, body: dict, output: dict, fields: dict, more: dict, problem: str | None
) -> None:
    receipt = signed(kind, body, output, **fields)
    extra = dict(more)
    context_length = extra.pop("context_length", 256)

    if problem is None:
        check_receipt(receipt, checked(kind, dict(body)), output, PRICES, context_length, **extra)
    else:
        with pytest.raises(BadReceipt, match=problem):
            check_receipt(receipt, checked(kind, dict(body)), output, PRICES, context_length, **extra)

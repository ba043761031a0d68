"""One attempt's money, in the payer (payer.payments): `hold` readies a channel, counts the
request's most cost in flight within the provider's credit limit and signs the voucher it
carries; `pay` checks the answer's receipt against the typed request that was sent and records
it as owed, and the hold ends either way. On real SQLite, with no chain: the channel exists
and no top-up starts (low water 0)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_account import Account

from allmende.api.canonical import CanonicalRequest, checked
from allmende.api.client import Answer, ProviderInfo
from allmende.api.directory import Offer
from allmende.core import Domain, Receipt, request_cost, sign_receipt
from allmende.core.eip712 import keccak256 as keccak
from allmende.payer.payments import ChannelPolicy, Hold, Payments
from allmende.payer.receipts import BadReceipt, output_bytes
from allmende.payer.store import GatewayStore
from tests.gateway.fakes import RECEIPTS

PROVIDER = "0x" + "22" * 20
CHANNEL = b"\xcc" * 32
MODEL = b"\x44" * 32
OFFER = Offer(MODEL, "fake", "generate", 200_000, 600_000, 256)
SENT = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4}


def payments_with(deposit: int, owed: int = 0) -> Payments:
    store = GatewayStore(Path(":memory:"))
    store.put_channel(PROVIDER, CHANNEL, deposit)
    if owed:
        store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODEL, owed, "{}", None)
    contracts = SimpleNamespace(
        client=SimpleNamespace(address="0x" + "11" * 20),
        channels=SimpleNamespace(voucher_domain=lambda: Domain(31337, "0x" + "33" * 20)),
    )
    return Payments(store, contracts, b"\x11" * 32, ChannelPolicy(low_water=0.0))  # type: ignore[arg-type]


def test_a_hold_counts_the_cost_in_flight_and_carries_the_voucher_for_what_is_owed() -> None:
    payments = payments_with(deposit=10_000, owed=700)

    held = asyncio.run(payments.hold(PROVIDER, MODEL, 500, credit_limit=5_000))

    assert held is not None
    assert (held.channel_id, held.cost, held.carried) == (CHANNEL, 500, 700)
    assert held.voucher is not None and held.voucher.voucher.model_id == MODEL
    assert payments.in_flight(CHANNEL) == 500
    payments.store.ack(CHANNEL, MODEL, 700)  # the provider answered a request that carried it
    again = asyncio.run(payments.hold(PROVIDER, MODEL, 500, credit_limit=5_000))
    assert again is not None and (again.voucher, again.carried) == (None, 0)  # it holds that voucher
    assert payments.in_flight(CHANNEL) == 1_000


def test_no_hold_past_the_credit_limit_and_nothing_counted() -> None:
    payments = payments_with(deposit=10_000, owed=700)

    assert asyncio.run(payments.hold(PROVIDER, MODEL, 4_301, credit_limit=5_000)) is None

    assert payments.in_flight(CHANNEL) == 0
    assert payments.store.claim_voucher(CHANNEL, MODEL) == 700  # no voucher signed for it


def test_no_hold_while_requests_in_flight_take_the_deposit_they_may_give_back() -> None:
    payments = payments_with(deposit=1_000)
    first = asyncio.run(payments.hold(PROVIDER, MODEL, 800, credit_limit=10**9))

    second = asyncio.run(payments.hold(PROVIDER, MODEL, 800, credit_limit=10**9))  # waits: no top-up

    assert first is not None and second is None
    assert payments.in_flight(CHANNEL) == 800


def test_pay_records_an_honest_receipt_and_ends_the_hold() -> None:
    payments = payments_with(deposit=10_000)
    sent = checked("chat", dict(SENT))
    held = asyncio.run(payments.hold(PROVIDER, MODEL, sent.max_cost(256, 200_000, 600_000), credit_limit=10**9))
    assert held is not None
    answer = answered(sent, {"text": "abc", "token_ids": [1, 2, 3]})

    owed = payments.pay(PROVIDER, held, OFFER, sent, answer, "key-1")

    assert owed == answer.receipt.receipt.amount > 0
    assert payments.store.spent("key-1") == owed
    assert payments.in_flight(CHANNEL) == 0


@pytest.mark.parametrize(
    ("output", "claimed", "problem"),
    [
        ({"text": "abcde", "token_ids": [1, 2, 3, 4, 5]}, None, "more than max_tokens × n = 4"),
        ({"text": "abd", "token_ids": [1, 2, 3]}, {"text": "abc", "token_ids": [1, 2, 3]}, "outputHash"),
    ],
    ids=["past-max-tokens", "not-what-was-received"],
)
def test_a_receipt_that_fails_the_check_is_not_paid_and_the_hold_ends(
    output: dict, claimed: dict | None, problem: str
) -> None:
    payments = payments_with(deposit=10_000)
    sent = checked("chat", dict(SENT))
    held = asyncio.run(payments.hold(PROVIDER, MODEL, 900, credit_limit=10**9))
    assert isinstance(held, Hold)
    answer = answered(sent, output, claimed)

    with pytest.raises(BadReceipt, match=problem):
        payments.pay(PROVIDER, held, OFFER, sent, answer, "key-1")

    assert payments.store.spent("key-1") == 0 and payments.store.receipt_count() == 0
    assert payments.in_flight(CHANNEL) == 0


def answered(sent: CanonicalRequest, output: dict, claimed: dict | None = None) -> Answer:
    """The provider's answer: `output`, with a receipt signed for `claimed` (default: it)."""
    claimed = claimed or output
    tokens_out = len(claimed["token_ids"])
    receipt = Receipt(
        request_id=b"\x01" * 32,
        model_id=MODEL,
        provider=Account.from_key(b"\x05" * 32).address,
        input_hash=sent.input_hash,
        output_hash=keccak(output_bytes(sent, claimed)),
        proof_hash=b"\x00" * 32,
        tokens_in=9,
        tokens_out=tokens_out,
        amount=request_cost(9, tokens_out, OFFER.price_in, OFFER.price_out),
        timestamp=1,
    )
    return Answer(output, {}, sign_receipt(receipt, RECEIPTS, b"\x05" * 32))


@pytest.mark.parametrize(
    ("published", "limit"),
    [({"credit_limit": "7000"}, 7_000), ({"credit_limit": 9}, 9), ({}, 50_000), ({"credit_limit": "lots"}, 50_000)],
    ids=["string", "number", "none", "nonsense"],
)
def test_the_credit_limit_a_hold_is_taken_within_is_the_one_the_provider_publishes(published: dict, limit: int) -> None:
    """One reading of /v1/info's credit_limit for the gateway's holds and the stage chains'
    (the stage path read it with a bare int(): a provider publishing nonsense broke it)."""
    info = ProviderInfo(PROVIDER, b"\x00" * 32, 31337, [], published)

    assert info.credit_limit == limit

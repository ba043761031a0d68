"""No ordering of honest concurrent requests makes a provider refuse payment.

The gateway's exposure tracking (payer/payments.py) and the provider's credit rule
(provider/payments.py) run here in process, against their real SQLite stores, while
hypothesis chooses the order in which requests are sent, arrive, finish and are
answered, and which of them fail or lose their answer on the way. The provider's
`admit` must never refuse a request the gateway decided to send."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.chain.bindings import ChannelRecord
from allmende.core import Domain, SignedVoucher
from allmende.payer.payments import Payments
from allmende.payer.store import GatewayStore
from allmende.provider.errors import BadVoucher, PaymentRequired
from allmende.provider.payments import CreditPolicy, PaymentGate
from allmende.provider.store import ProviderStore

PAYER_KEY = b"\x11" * 32
PAYER = Account.from_key(PAYER_KEY).address
PROVIDER = "0x" + "22" * 20
DOMAIN = Domain(31337, "0x" + "33" * 20)
CHANNEL = b"\x44" * 32
MODELS = (b"\x55" * 32, b"\x66" * 32)


@dataclass
class Flight:
    """One request between the two sides."""

    model: bytes
    cost: int
    voucher: SignedVoucher | None
    carried: int
    request_id: bytes = field(default_factory=lambda: os.urandom(32))
    amount: int = 0


def sides(tmp: Path | None, deposit: int, credit: int) -> tuple[Payments, GatewayStore, PaymentGate, ProviderStore]:
    """Both sides' real stores: on disk under `tmp`, or in memory (the schedule test makes hundreds)."""
    gateway_store = GatewayStore(tmp / "gateway.db" if tmp else Path(":memory:"))
    gateway_store.put_channel(PROVIDER, CHANNEL, deposit)
    contracts = SimpleNamespace(
        client=SimpleNamespace(address=PAYER), channels=SimpleNamespace(voucher_domain=lambda: DOMAIN)
    )
    payments = Payments(gateway_store, contracts, PAYER_KEY)  # type: ignore[arg-type]
    provider_store = ProviderStore(tmp / "provider.db" if tmp else Path(":memory:"))
    gate = PaymentGate(
        provider_store,
        DOMAIN,
        PROVIDER,
        lambda _: ChannelRecord(PAYER, PROVIDER, deposit, 0, 0, 0),
        policy=CreditPolicy(credit_limit=credit),
    )
    return payments, gateway_store, gate, provider_store


@settings(max_examples=60, deadline=None)
@given(data=st.data(), credit=st.integers(300, 3_000), deposit=st.integers(2_000, 20_000))
def test_no_order_of_honest_concurrent_requests_is_refused(data: st.DataObject, credit: int, deposit: int) -> None:
    payments, gateway_store, gate, provider_store = sides(None, deposit, credit)
    waiting = [(data.draw(st.sampled_from(MODELS)), data.draw(st.integers(1, 300))) for _ in range(40)]
    in_transit: list[Flight] = []  # sent by the gateway, not yet at the provider
    serving: list[Flight] = []  # admitted, generating
    answered: list[Flight] = []  # the provider finished; the answer travels back
    admitted = 0

    for _ in range(400):
        moves = [
            m
            for m, pending in (("send", waiting), ("arrive", in_transit), ("finish", serving), ("answer", answered))
            if pending
        ]
        if not moves:
            break
        move = data.draw(st.sampled_from(moves))
        if move == "send":
            model, cost = waiting[0]
            if not payments.reserve(CHANNEL, cost, credit):
                if not (in_transit or serving or answered):  # nothing will free credit: give up on it
                    waiting.pop(0)
                continue
            waiting.pop(0)
            voucher = payments.voucher(CHANNEL, model)
            carried = voucher.voucher.cumulative_amount if voucher else 0
            in_transit.append(Flight(model, cost, voucher, carried))
        elif move == "arrive":
            flight = in_transit.pop(data.draw(st.integers(0, len(in_transit) - 1)))
            # the provider must take every request an honest gateway sends, in any order
            gate.admit(CHANNEL, flight.model, PAYER, flight.voucher, reserve=flight.cost)
            assert provider_store.begin_request(flight.request_id, CHANNEL, flight.model)
            admitted += 1
            serving.append(flight)
        elif move == "finish":
            flight = serving.pop(data.draw(st.integers(0, len(serving) - 1)))
            outcome = data.draw(st.sampled_from(["receipt", "receipt", "receipt", "error", "lost"]))
            if outcome == "error":  # the provider answers with an error: nothing earned on either side
                gate.release(CHANNEL, flight.cost)
                payments.release(CHANNEL, flight.cost)
                continue
            flight.amount = data.draw(st.integers(0, flight.cost))
            provider_store.finish_request(flight.request_id, CHANNEL, flight.model, flight.amount, "{}")
            gate.release(CHANNEL, flight.cost)
            if outcome == "receipt":
                answered.append(flight)
            # "lost": the provider earned it but the answer never reaches the gateway, which
            # cannot tell what happened and keeps the request counted in flight
        else:
            flight = answered.pop(data.draw(st.integers(0, len(answered) - 1)))
            gateway_store.record_receipt(
                flight.request_id, PROVIDER, CHANNEL, flight.model, flight.amount, "{}", None, flight.carried
            )
            payments.release(CHANNEL, flight.cost)

    assert admitted > 0
    # the provider holds the highest voucher the gateway signed, per model
    for row in provider_store.ledger(CHANNEL):
        owed, signed = gateway_store.owed(CHANNEL, row.model_id)
        assert row.cumulative <= signed <= owed


def test_a_lower_voucher_after_a_higher_one_is_kept_out_and_the_request_admitted(tmp_path: Path) -> None:
    payments, gateway_store, gate, provider_store = sides(tmp_path, 10_000, 5_000)
    for amount in (100, 200):
        gateway_store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODELS[0], amount, "{}", None)
    low = payments.voucher(CHANNEL, MODELS[0])
    gateway_store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODELS[0], 50, "{}", None)
    high = payments.voucher(CHANNEL, MODELS[0])
    assert low is not None and high is not None

    gate.admit(CHANNEL, MODELS[0], PAYER, high, reserve=10)
    gate.admit(CHANNEL, MODELS[0], PAYER, low, reserve=10)

    (row,) = provider_store.ledger(CHANNEL)
    assert row.cumulative == high.voucher.cumulative_amount == 350
    assert gate.reserved(CHANNEL) == 20


def test_concurrent_admissions_cannot_overshoot_the_credit_limit(tmp_path: Path) -> None:
    """A payer who never pays gets exactly credit ÷ cost requests admitted, however many race."""
    _, _, gate, _ = sides(tmp_path, 100_000, 1_000)
    admitted, refused = 0, 0
    for _ in range(30):  # the reservation is made at admission, before any of them finishes
        try:
            gate.admit(CHANNEL, MODELS[0], PAYER, None, reserve=300)
            admitted += 1
        except PaymentRequired as exc:
            assert "credit limit" in str(exc)
            refused += 1
    assert (admitted, refused) == (3, 27)


def test_a_voucher_over_the_deposit_is_still_refused(tmp_path: Path) -> None:
    payments, gateway_store, gate, _ = sides(tmp_path, 1_000, 5_000)
    gateway_store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODELS[0], 1_001, "{}", None)
    greedy = payments.voucher(CHANNEL, MODELS[0])
    with pytest.raises(BadVoucher, match="exceed the deposit"):
        gate.admit(CHANNEL, MODELS[0], PAYER, greedy, reserve=1)


def test_a_voucher_lost_with_a_failed_request_is_sent_again_with_the_next(tmp_path: Path) -> None:
    """The gateway signs a voucher for everything owed, but the request carrying it fails before
    the provider takes it: the provider holds less than was signed until the next request to it,
    which must carry the whole amount again (not nothing, as 'already signed' would suggest)."""
    payments, gateway_store, gate, provider_store = sides(tmp_path, 10_000, 5_000)
    first = payments.voucher(CHANNEL, MODELS[0])
    assert first is None  # nothing owed yet
    gateway_store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODELS[0], 120, "{}", None)
    lost = payments.voucher(CHANNEL, MODELS[0])  # sent with a request that never arrives
    assert lost is not None and lost.voucher.cumulative_amount == 120
    assert gateway_store.owed(CHANNEL, MODELS[0]) == (120, 120)
    assert provider_store.ledger(CHANNEL) == []

    again = payments.voucher(CHANNEL, MODELS[0])
    assert again is not None and again.voucher.cumulative_amount == 120
    gate.admit(CHANNEL, MODELS[0], PAYER, again, reserve=10)
    (row,) = provider_store.ledger(CHANNEL)
    assert row.cumulative == 120
    # once an answer to a request carrying it comes back, the gateway stops sending it
    gateway_store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODELS[0], 0, "{}", None, acked=120)
    assert payments.voucher(CHANNEL, MODELS[0]) is None

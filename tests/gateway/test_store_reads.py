"""payer.store's one-statement reads on every request's path (`channel_owed`, `exposure`) give
what the separate reads gave (`channel` + `total_owed`; the deposit from `all_channels`,
`total_owed`, `unacked`), on real SQLite: several providers and models, owed above 2**64
(amounts are stored as text), acknowledged vouchers, a channel with nothing owed yet, one
dropped, and one unknown."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from allmende.core import Domain
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.store import GatewayStore


def separate_reads(store: GatewayStore, provider: str) -> tuple[bytes, int, int] | None:
    known = store.channel(provider)
    return None if known is None else (known[0], known[1], store.total_owed(known[0]))


def separate_exposure(store: GatewayStore, channel_id: bytes) -> tuple[int, int, int]:
    deposit = next((d for _, c, d in store.all_channels() if c == channel_id), 0)
    return deposit, store.total_owed(channel_id), store.unacked(channel_id)


def test_one_statement_reads_agree_with_the_separate_ones(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gateway.db")
    a, b, c = (os.urandom(32) for _ in range(3))
    m1, m2 = os.urandom(32), os.urandom(32)
    store.put_channel("0xAAAA", a, 10**21)
    store.put_channel("0xbbbb", b, 5_000)
    store.put_channel("0xcccc", c, 7_000)  # nothing owed on it yet
    store.record_receipt(os.urandom(32), "0xaaaa", a, m1, 2**70, "{}", None)
    store.record_receipt(os.urandom(32), "0xaaaa", a, m2, 300, "{}", "key", acked=100)
    store.record_receipt(os.urandom(32), "0xaaaa", a, m2, 50, "{}", "key")
    store.record_receipt(os.urandom(32), "0xbbbb", b, m1, 1_000, "{}", None, acked=1_000)
    assert store.claim_voucher(a, m1) == 2**70

    for provider in ("0xaaaa", "0xAAAA", "0xbbbb", "0xcccc", "0xdddd"):
        assert store.channel_owed(provider) == separate_reads(store, provider)
    assert store.channel_owed("0xaaaa") == (a, 10**21, 2**70 + 350)
    for channel in (a, b, c, os.urandom(32)):
        assert store.exposure(channel) == separate_exposure(store, channel)
    assert store.exposure(a) == (10**21, 2**70 + 350, 2**70 + 250)
    assert store.exposure(b) == (5_000, 1_000, 0)

    store.drop_channel("0xbbbb")  # closed: no deposit to spend, what is owed still counted
    assert store.channel_owed("0xbbbb") is None
    assert store.exposure(b) == separate_exposure(store, b) == (0, 1_000, 0)


def test_the_receipts_since_a_time_are_read_by_index_not_by_scanning_every_receipt(tmp_path: Path) -> None:
    """An agent with a daily cap reads what it paid in the last day before every request: on
    an index of the receipts' times, not a scan of its whole history (it grows without end)."""
    store = GatewayStore(tmp_path / "gateway.db")
    channel, model = os.urandom(32), os.urandom(32)
    store.put_channel("0xaaaa", channel, 10**9)
    store.record_receipt(os.urandom(32), "0xaaaa", channel, model, 70, "{}", None)

    plan = store._db.execute("EXPLAIN QUERY PLAN SELECT model_id, amount FROM receipts WHERE at >= ?", (0.0,))

    assert any("USING INDEX receipts_at" in row[3] for row in plan.fetchall())
    assert store.paid_since(0.0) == [(model, 70)]
    assert store.paid_since(2.0**40) == []


def test_the_channel_and_its_exposure_in_one_statement_agree_with_the_two_reads(tmp_path: Path) -> None:
    """`channel_exposure(provider)` is `channel_owed(provider)` and then `exposure` of its channel."""
    store = GatewayStore(tmp_path / "gateway.db")
    a, b = os.urandom(32), os.urandom(32)
    m1, m2 = os.urandom(32), os.urandom(32)
    store.put_channel("0xAAAA", a, 10**21)
    store.put_channel("0xbbbb", b, 5_000)
    store.record_receipt(os.urandom(32), "0xaaaa", a, m1, 2**70, "{}", None)
    store.record_receipt(os.urandom(32), "0xaaaa", a, m2, 300, "{}", "key", acked=100)
    store.record_receipt(os.urandom(32), "0xbbbb", b, m1, 1_000, "{}", None, acked=1_000)

    for provider in ("0xaaaa", "0xAAAA", "0xbbbb", "0xdddd"):
        known = store.channel_owed(provider)
        two_reads = None if known is None else (known[0], known[1], *store.exposure(known[0])[1:])
        assert store.channel_exposure(provider) == two_reads
    assert store.channel_exposure("0xaaaa") == (a, 10**21, 2**70 + 300, 2**70 + 200)
    store.drop_channel("0xaaaa")
    assert store.channel_exposure("0xaaaa") is None


def twin_payments(deposit: int, owed: int, acked: int, flying: int) -> Payments:
    """Payments on a store of its own in memory: one channel with `deposit`, `owed` by receipts
    (of which the provider holds a voucher for `acked`) and `flying` reserved by requests in
    flight. No top-up is started (low water 0): no chain here."""
    store = GatewayStore(Path(":memory:"))
    store.put_channel(PROVIDER, CHANNEL, deposit)
    if owed:
        store.record_receipt(os.urandom(32), PROVIDER, CHANNEL, MODEL, owed, "{}", None, acked=acked)
    contracts = SimpleNamespace(
        client=SimpleNamespace(address="0x" + "11" * 20),
        channels=SimpleNamespace(voucher_domain=lambda: Domain(31337, "0x" + "33" * 20)),
    )
    payments = Payments(store, contracts, b"\x11" * 32, ChannelPolicy(low_water=0.0))  # type: ignore[arg-type]
    if flying:
        assert payments.reserve(CHANNEL, flying, 10**30)
    return payments


PROVIDER = "0x" + "22" * 20
CHANNEL = b"\x44" * 32
MODEL = b"\x55" * 32


def test_reserving_on_a_ready_channel_in_one_read_decides_as_ready_channel_then_reserve() -> None:
    """Every request's path (`reserve_ready`) gives the channel, refuses and counts in flight
    exactly as `ready_channel` followed by `reserve` did: over deposits, what is owed and
    unacknowledged, what is in flight, costs and credit limits around each boundary."""
    cases = 0
    for deposit in (1_000, 5_000):
        for owed, acked in ((0, 0), (600, 0), (600, 600), (990, 400)):
            for flying in (0, 10, 400):
                if owed + flying > deposit:
                    continue  # never: a receipt costs at most what its request reserved
                for cost in (1, 10, 400, 1_000, 4_000):
                    for credit in (0, 10, 600, 1_010, 10**9):
                        old = twin_payments(deposit, owed, acked, flying)
                        new = twin_payments(deposit, owed, acked, flying)
                        channel = old.ready_channel(PROVIDER, cost)
                        reserved = channel is not None and old.reserve(channel, cost, credit)
                        assert new.reserve_ready(PROVIDER, cost, credit) == (channel, reserved)
                        assert new.in_flight(CHANNEL) == old.in_flight(CHANNEL)
                        cases += 1
    assert cases == 575
    assert twin_payments(1_000, 0, 0, 0).reserve_ready("0x" + "99" * 20, 1, 10) == (None, False)  # no channel

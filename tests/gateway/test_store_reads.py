"""payer.store's one-statement reads on every request's path (`channel_owed`, `exposure`) give
what the separate reads gave (`channel` + `total_owed`; the deposit from `all_channels`,
`total_owed`, `unacked`), on real SQLite: several providers and models, owed above 2**64
(amounts are stored as text), acknowledged vouchers, a channel with nothing owed yet, one
dropped, and one unknown."""

from __future__ import annotations

import os
from pathlib import Path

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

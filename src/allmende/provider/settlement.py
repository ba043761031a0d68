"""Batched redemption of vouchers.

Redeems when the unredeemed value passes `threshold`, when the oldest unredeemed
voucher is older than `max_age`, and always before a channel's close delay runs out.
Before each batch it re-reads what the chain already redeemed, so a batch that was
mined just before a crash is never sent twice (and never reverts for it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from allmende.chain.bindings import Channels
from allmende.chain.errors import ChainError
from allmende.provider.store import LedgerRow, ProviderStore

log = logging.getLogger("allmende.provider.settlement")
MAX_BATCH = 256


@dataclass(frozen=True)
class SettlementPolicy:
    # redeem once this much (payment-token units) is unredeemed
    threshold: int = 1_000_000
    # ... or once the oldest unredeemed voucher is this old (seconds)
    max_age: float = 3600.0
    # ... or when a channel closes within this many seconds
    close_margin: int = 1800
    # how often the loop looks (seconds)
    interval: float = 5.0


@dataclass(frozen=True)
class RedeemResult:
    vouchers: int
    amount: int
    tx_hash: str | None


class Settlement:
    def __init__(self, store: ProviderStore, channels: Channels, policy: SettlementPolicy | None = None) -> None:
        self.store = store
        self.channels = channels
        self.policy = policy or SettlementPolicy()

    def pending(self) -> list[LedgerRow]:
        return [r for r in self.store.all_ledger() if r.signature is not None and r.cumulative > r.redeemed]

    def due(self, rows: list[LedgerRow], now: float) -> bool:
        if not rows:
            return False
        if sum(r.cumulative - r.redeemed for r in rows) >= self.policy.threshold:
            return True
        if any(r.voucher_at is not None and now - r.voucher_at >= self.policy.max_age for r in rows):
            return True
        for r in rows:
            state = self.store.channel(r.channel_id)
            if state is not None and state.closes_at and state.closes_at - now <= self.policy.close_margin:
                return True
        return False

    def redeem(self, force: bool = False) -> RedeemResult:
        """Redeem every pending voucher if due (or if `force`)."""
        rows = self.pending()
        if not (force or self.due(rows, time.time())):
            return RedeemResult(0, 0, None)
        fresh: list[LedgerRow] = []
        for row in rows:
            on_chain = self.channels.redeemed(row.channel_id, row.model_id)
            if on_chain >= row.cumulative:  # already redeemed (e.g. before a crash)
                self.store.mark_redeemed(row.channel_id, row.model_id, on_chain)
                continue
            if on_chain != row.redeemed:
                self.store.mark_redeemed(row.channel_id, row.model_id, on_chain)
            fresh.append(
                LedgerRow(
                    row.channel_id, row.model_id, row.earned, row.cumulative, row.signature, on_chain, row.voucher_at
                )
            )
        if not fresh:
            return RedeemResult(0, 0, None)
        total, last_hash = 0, None
        for start in range(0, len(fresh), MAX_BATCH):
            batch = fresh[start : start + MAX_BATCH]
            sent = self.channels.redeem([r.signed_voucher() for r in batch])
            for r in batch:
                self.store.mark_redeemed(r.channel_id, r.model_id, r.cumulative)
            total += sum(r.cumulative - r.redeemed for r in batch)
            last_hash = sent.tx_hash
            log.info("redeemed %d vouchers for %d units in %s", len(batch), total, sent.tx_hash)
        return RedeemResult(len(fresh), total, last_hash)

    def tick(self) -> RedeemResult | None:
        """One pass of the background loop; chain errors are logged and retried next time."""
        try:
            return self.redeem()
        except ChainError as exc:
            log.warning("settlement deferred: %s", exc)
            return None

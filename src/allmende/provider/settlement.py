"""Batched redemption of vouchers.

Redeems when the unredeemed value passes `threshold`, when the oldest unredeemed
voucher is older than `max_age`, and at once for a channel whose close was requested
(the close watcher, provider/watch.py, sees it within seconds): a closing channel's last
voucher is redeemed on the first pass after its close is seen, and every later one on
the pass after it arrives, so it is redeemed before the close time whenever this node
is online for a pass during the close window. Before each batch it re-reads what the
chain already redeemed, so a batch that was mined just before a crash is never sent
twice (and never reverts for it).

One channel cannot block the others: a channel whose close time has passed is dropped
before the batch, and if the batch reverts all the same (a close this node has not seen
yet, a deposit withdrawn, a voucher the contract refuses), each channel is redeemed on
its own in the same pass; a channel whose own redeem reverts is dropped (kept in the
store's `dropped` table with the chain's reason, logged, and returned in the result)
and the rest are paid. Only errors of the chain endpoint itself defer a pass.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from allmende.chain.bindings import Channels
from allmende.chain.errors import ChainError, ContractReverted
from allmende.core.vouchers import REDEEM_BATCH
from allmende.provider.store import LedgerRow, ProviderStore
from allmende.provider.watch import ChainClock

log = logging.getLogger("allmende.provider.settlement")
MAX_BATCH = REDEEM_BATCH  # Channels.redeem's most per transaction


@dataclass(frozen=True)
class SettlementPolicy:
    # redeem once this much (payment-token units) is unredeemed
    threshold: int = 1_000_000
    # ... or once the oldest unredeemed voucher is this old (seconds)
    max_age: float = 3600.0
    # (and at once for a channel whose close was requested, whatever its close time)
    # how often the loop looks (seconds)
    interval: float = 5.0


@dataclass(frozen=True)
class DroppedChannel:
    """A channel whose vouchers the chain refused to redeem: given up, reported."""

    channel_id: bytes
    amount: int  # unredeemed value given up
    reason: str


@dataclass(frozen=True)
class RedeemResult:
    vouchers: int
    amount: int
    tx_hash: str | None
    dropped: tuple[DroppedChannel, ...] = ()


class Settlement:
    def __init__(
        self,
        store: ProviderStore,
        channels: Channels,
        policy: SettlementPolicy | None = None,
        clock: ChainClock | None = None,
    ) -> None:
        self.store = store
        self.channels = channels
        self.policy = policy or SettlementPolicy()
        self.clock = clock or ChainClock()
        # one pass at a time: two passes would send the same vouchers twice, and the second
        # one's revert must not be mistaken for a refusal
        self._lock = threading.Lock()

    def pending(self) -> list[LedgerRow]:
        """Vouchers not redeemed yet, less those dropped (a higher voucher is pending again)."""
        dropped = self.store.dropped()
        return [
            r
            for r in self.store.all_ledger()
            if r.signature is not None
            and r.cumulative > r.redeemed
            and r.cumulative > dropped.get((r.channel_id, r.model_id), (0, ""))[0]
        ]

    def due(self, rows: list[LedgerRow], now: float) -> bool:
        if not rows:
            return False
        if sum(r.cumulative - r.redeemed for r in rows) >= self.policy.threshold:
            return True
        if any(r.voucher_at is not None and now - r.voucher_at >= self.policy.max_age for r in rows):
            return True
        for r in rows:
            state = self.store.channel(r.channel_id)
            if state is not None and state.closes_at:  # closing: its vouchers cannot wait
                return True
        return False

    def closing_due(self) -> bool:
        """True if a channel whose close was requested has a voucher to redeem."""
        return any((s := self.store.channel(r.channel_id)) is not None and s.closes_at for r in self.pending())

    def redeem(self, force: bool = False) -> RedeemResult:
        """Redeem every pending voucher if due (or if `force`); channels the chain refuses
        are dropped and reported, the others paid in the same pass."""
        with self._lock:
            return self._redeem(force)

    def _redeem(self, force: bool) -> RedeemResult:
        rows = self.pending()
        if not (force or self.due(rows, self.clock.wall())):
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
        dropped: list[DroppedChannel] = []
        now = self.clock.now()
        for channel_id in sorted({r.channel_id for r in fresh}):
            state = self.store.channel(channel_id)
            if state is not None and state.closes_at and now >= state.closes_at:
                dropped.append(self._drop([r for r in fresh if r.channel_id == channel_id], "channel closed"))
        fresh = [r for r in fresh if r.channel_id not in {d.channel_id for d in dropped}]
        vouchers, total, last_hash = 0, 0, None
        for start in range(0, len(fresh), MAX_BATCH):
            batch = fresh[start : start + MAX_BATCH]
            tx_hash: str | None
            try:
                paid, tx_hash = batch, self._send(batch)
            except ContractReverted as exc:
                log.warning("batch of %d vouchers reverted (%s): redeeming channel by channel", len(batch), exc.reason)
                paid, tx_hash, refused = self._one_by_one(batch)
                dropped += refused
            vouchers += len(paid)
            total += sum(r.cumulative - r.redeemed for r in paid)
            last_hash = tx_hash or last_hash
        return RedeemResult(vouchers, total, last_hash, tuple(dropped))

    def _send(self, batch: list[LedgerRow]) -> str:
        """Redeem `batch` in one transaction; its hash (ContractReverted: nothing was paid)."""
        sent = self.channels.redeem([r.signed_voucher() for r in batch])
        for r in batch:
            self.store.mark_redeemed(r.channel_id, r.model_id, r.cumulative)
        amount = sum(r.cumulative - r.redeemed for r in batch)
        log.info("redeemed %d vouchers for %d units in %s", len(batch), amount, sent.tx_hash)
        return sent.tx_hash

    def _one_by_one(self, batch: list[LedgerRow]) -> tuple[list[LedgerRow], str | None, list[DroppedChannel]]:
        """Each channel of a reverted batch in its own transaction; a channel whose redeem
        reverts is dropped. Errors of the endpoint itself propagate (the pass is retried)."""
        paid: list[LedgerRow] = []
        dropped: list[DroppedChannel] = []
        last_hash = None
        for channel_id in sorted({r.channel_id for r in batch}):
            rows = [r for r in batch if r.channel_id == channel_id]
            try:
                last_hash = self._send(rows)
                paid += rows
            except ContractReverted as exc:
                if all(self.channels.redeemed(r.channel_id, r.model_id) >= r.cumulative for r in rows):
                    for r in rows:  # someone else redeemed them meanwhile (provider-redeem)
                        self.store.mark_redeemed(r.channel_id, r.model_id, r.cumulative)
                    continue
                dropped.append(self._drop(rows, exc.reason))
        return paid, last_hash, dropped

    def _drop(self, rows: list[LedgerRow], reason: str) -> DroppedChannel:
        for r in rows:
            self.store.drop_voucher(r.channel_id, r.model_id, r.cumulative, reason)
        amount = sum(r.cumulative - r.redeemed for r in rows)
        channel_id = rows[0].channel_id
        log.warning(
            "dropped channel 0x%s: vouchers for %d units cannot be redeemed (%s)", channel_id.hex(), amount, reason
        )
        return DroppedChannel(channel_id, amount, reason)

    def tick(self) -> RedeemResult | None:
        """One pass of the background loop; chain errors are logged and retried next time."""
        try:
            return self.redeem()
        except ChainError as exc:
            log.warning("settlement deferred: %s", exc)
            return None

"""Voucher checks and the credit rule (the provider wire API in ../shared/DESIGN.md).

Before a request is served:
- it is signed by the channel's payer (`core.authorization`; the service recovers the
  signer and passes it here as `payer`), else 401 before anything is stored or reserved;
- its voucher (if any) is signed by the channel's payer under this chain's Channels
  domain, for this request's (channel, model), for a channel whose provider is us and
  that is not closing, with all models' cumulatives together within the deposit;
- the request's maximum cost (`core.credit`, `CanonicalRequest.max_cost`) is reserved, and
  admission requires  earned − vouchers + reserved ≤ credit limit  and
  earned + reserved ≤ deposit, both checked and reserved under one lock, so concurrent
  requests cannot overshoot either. The reservation is released when the request ends:
  its real cost moves into `earned` (receipt) first, or nothing is earned (error).

Why honest concurrency never causes a payment error
----------------------------------------------------
Vouchers are cumulative per (channel, model), so only the highest matters. A voucher at
or below the highest one stored is *superseded*, not refused: a gateway that signs
vouchers for concurrent requests A (cumulative 1058) and B (1024, signed earlier) may
see B arrive second; B is admitted under the credit rule and 1058 stays the stored one.
The only refusals left are the credit rule and the deposit. The gateway
(payer/payments.py) tracks, per channel, its own exposure
    E_g = Σ max cost of its requests in flight + owed − acked
where `owed` sums the receipts it accepted and `acked` is the highest cumulative carried
by a request this provider answered (so this provider stored it, or a higher one). It
sends a request only while E_g + its max cost ≤ credit limit and owed + in flight + max
cost ≤ deposit. At any moment this provider's exposure
    E_p = reserved + earned − highest stored voucher
is at most E_g: every reservation here belongs to a request the gateway still counts in
flight (same bound, same body); every receipt in `earned` was either accepted by the
gateway (in `owed`) or belongs to a request still in flight there, whose max cost bounds
its receipt; and the highest stored voucher is ≥ acked. So whenever the gateway sends,
the provider admits, whatever order requests arrive in. Failures the gateway cannot
interpret (a timeout, a cut connection after sending) are kept counted as in flight, so
the inequality survives them.

Channel state comes from chain and is cached; it is re-read when a voucher or the
deposit check would exceed the cached deposit (a top-up). Closes are followed as they
happen (provider/watch.py: `CloseRequested` events every `watch_interval` seconds), so
the cached state of a channel is current as of the watcher's last scan. A channel
closing within `close_margin` seconds of chain time is refused.

How old the state an admission rests on may be: normally one watcher interval. If the
watcher falls behind (the chain endpoint is slow or away), state older than `ttl` is
re-read in the background while requests go on, and state older than `grace` is re-read
before the request is admitted (503, try another provider, while the chain cannot be
reached). Admission never rests on state older than `grace`, and that is as good as
fresh: a close requested after the state was read cannot take effect sooner than the
minimum close delay Params allows (1 hour), and admission stops `close_margin` before a
close, so grace + close_margin ≤ that delay keeps every decision the one fresh state would
give (the deposit only grows until a close takes effect). So a channel this node has seen
keeps being served for `grace` seconds while the chain endpoint is away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from allmende.chain.bindings import ChannelRecord
from allmende.chain.errors import ChainError, ContractReverted
from allmende.core import Domain, InvalidSignature, SignedVoucher
from allmende.provider.errors import BadVoucher, PayerNotAuthenticated, PaymentRequired
from allmende.provider.store import ChannelState, ProviderStore
from allmende.provider.watch import ChainClock, CloseWatcher

log = logging.getLogger("allmende.provider.payments")


@dataclass(frozen=True)
class CreditPolicy:
    # most a payer may owe (earned but not covered by a voucher), in payment-token units
    credit_limit: int = 1_000_000
    # refuse channels that close within this many seconds (we could not redeem in time)
    close_margin: int = 600
    # cached channel state older than this (and not covered by the close watcher) is
    # refreshed in the background
    ttl: float = 30.0
    # ... and state older than this is re-read before admitting (grace + close_margin must
    # not exceed the minimum close delay, 3,600 s: see the module docstring)
    grace: float = 600.0
    # seconds between scans for CloseRequested events
    watch_interval: float = 2.0


class PaymentGate:
    def __init__(
        self,
        store: ProviderStore,
        domain: Domain,
        provider: str,
        read_channel: Callable[[bytes], ChannelRecord],
        now: Callable[[], float] = time.time,
        policy: CreditPolicy | None = None,
        clock: ChainClock | None = None,
        watcher: CloseWatcher | None = None,
    ) -> None:
        self.store = store
        self.domain = domain
        self.provider = provider
        self.read_channel = read_channel
        self.now = now
        self.policy = policy or CreditPolicy()
        self.clock = clock or ChainClock(now)
        self.watcher = watcher
        self._refreshing: set[bytes] = set()
        self._refreshing_lock = threading.Lock()
        # admission checks and reservations are atomic per gate
        self._lock = threading.Lock()
        self._reserved: dict[bytes, int] = {}

    def is_cached(self, channel_id: bytes) -> bool:
        """True when admitting a request on this channel needs no chain read (a stale
        cache is refreshed in the background)."""
        cached = self.store.channel(channel_id)
        return cached is not None and self.age(cached) <= self.policy.grace

    def age(self, state: ChannelState) -> float:
        """Seconds since `state` was last known current (read, or covered by a watcher scan)."""
        known = state.refreshed_at
        synced = self.watcher.synced_since(state.refreshed_at) if self.watcher is not None else None
        if synced is not None:
            known = max(known, synced)
        return self.now() - known

    def channel(self, channel_id: bytes, refresh: bool = False) -> ChannelState:
        cached = self.store.channel(channel_id)
        if cached is not None and not refresh:
            age = self.age(cached)
            if age <= self.policy.grace:
                if age >= self.policy.ttl:
                    self._refresh_in_background(channel_id)
                return cached
        return self._read(channel_id)

    def _refresh_in_background(self, channel_id: bytes) -> None:
        with self._refreshing_lock:
            if channel_id in self._refreshing:
                return
            self._refreshing.add(channel_id)

        def work() -> None:
            try:
                self._read(channel_id)
            except (ChainError, PaymentRequired) as exc:  # keep the cached state; the next request retries
                log.warning("channel 0x%s not refreshed: %s", channel_id.hex(), exc)
            finally:
                with self._refreshing_lock:
                    self._refreshing.discard(channel_id)

        threading.Thread(target=work, name="channel-refresh", daemon=True).start()

    def _read(self, channel_id: bytes) -> ChannelState:
        try:
            record = self.read_channel(channel_id)
        except ContractReverted:
            raise PaymentRequired(f"channel 0x{channel_id.hex()} does not exist on chain") from None
        if record.provider.lower() != self.provider.lower():
            raise PaymentRequired(f"channel 0x{channel_id.hex()} pays {record.provider}, not this provider")
        return self.store.put_channel(channel_id, record.payer, record.deposit, record.closes_at)

    def admit(
        self,
        channel_id: bytes,
        model_id: bytes,
        payer: str,
        voucher: SignedVoucher | None,
        reserve: int = 0,
    ) -> ChannelState:
        """Check (and durably store) the voucher, apply the credit rule and reserve
        `reserve` units; the caller must `release` them when the request ends. `payer` is the
        account that signed the request (recovered, not claimed): anyone else is refused
        before anything is stored or reserved."""
        state = self.channel(channel_id)
        if state.payer.lower() != payer.lower():
            raise PayerNotAuthenticated(
                f"request signed by {payer}, but channel 0x{channel_id.hex()} belongs to {state.payer}"
            )
        if voucher is not None:
            self._check_signature(voucher, channel_id, model_id, state)
        with self._lock:
            if self._admit_locked(channel_id, voucher, reserve, state, final=False):
                return state
        state = self.channel(channel_id, refresh=True)  # beyond the cached deposit: maybe topped up
        with self._lock:
            self._admit_locked(channel_id, voucher, reserve, state, final=True)
        return state

    def accept(self, voucher: SignedVoucher) -> int:
        """A voucher delivered on its own (`POST /v1/vouchers`: the payer's last one, for work
        already answered, when it stops using the channel): checked as a request's voucher is
        (the channel's payer signed it, under this chain's Channels domain, within the
        deposit, for a channel of ours) and stored if it is news; closing channels take it
        too. Returns the cumulative now held for its (channel, model)."""
        v = voucher.voucher
        state = self.channel(v.channel_id)
        self._check_signature(voucher, v.channel_id, v.model_id, state)
        for final in (False, True):
            with self._lock:
                ledger = {row.model_id: row for row in self.store.ledger(v.channel_id)}
                if not self._is_news(voucher, ledger):
                    return int(ledger[v.model_id].cumulative)
                total = sum(r.cumulative for m, r in ledger.items() if m != v.model_id) + v.cumulative_amount
                if total <= state.deposit:
                    self.store.store_voucher(voucher)
                    return v.cumulative_amount
            if final:
                raise BadVoucher(f"vouchers total {total} exceed the deposit {state.deposit}")
            state = self.channel(v.channel_id, refresh=True)  # beyond the cached deposit: maybe topped up
        raise AssertionError("unreachable")

    def closing(self, state: ChannelState) -> bool:
        """True if the channel closes within `close_margin` seconds of chain time (or has closed)."""
        return bool(state.closes_at) and state.closes_at - self.clock.now() < self.policy.close_margin

    def _admit_locked(
        self, channel_id: bytes, voucher: SignedVoucher | None, reserve: int, state: ChannelState, final: bool
    ) -> bool:
        """Store the voucher if it is news, then check and reserve. False: the cached deposit is
        too small (re-read it and call again with final=True, which raises instead). A channel
        about to close takes the voucher (it pays for work done) but no new work."""
        ledger = {row.model_id: row for row in self.store.ledger(channel_id)}
        if voucher is not None and self._is_news(voucher, ledger):
            v = voucher.voucher
            total = sum(r.cumulative for m, r in ledger.items() if m != v.model_id) + v.cumulative_amount
            if total > state.deposit:
                if final:
                    raise BadVoucher(f"vouchers total {total} exceed the deposit {state.deposit}")
                return False
            self.store.store_voucher(voucher)
            ledger = {row.model_id: row for row in self.store.ledger(channel_id)}
        if self.closing(state):
            raise PaymentRequired("channel is closing: open a new one")
        earned = sum(r.earned for r in ledger.values())
        paid = sum(r.cumulative for r in ledger.values())
        reserved = self._reserved.get(channel_id, 0)
        if earned - paid + reserved + reserve > self.policy.credit_limit:
            raise PaymentRequired(
                f"unpaid balance {earned - paid} plus {reserved + reserve} reserved for requests in flight "
                f"exceeds the credit limit {self.policy.credit_limit}: send a voucher"
            )
        if earned + reserved + reserve > state.deposit:
            if final:
                raise PaymentRequired("channel deposit exhausted: top up the channel")
            return False
        self._reserved[channel_id] = reserved + reserve
        return True

    def release(self, channel_id: bytes, amount: int) -> None:
        """End a reservation made by `admit` (after the receipt's amount is in `earned`)."""
        with self._lock:
            left = self._reserved.get(channel_id, 0) - amount
            if left > 0:
                self._reserved[channel_id] = left
            else:
                self._reserved.pop(channel_id, None)

    def reserved(self, channel_id: bytes) -> int:
        with self._lock:
            return self._reserved.get(channel_id, 0)

    @staticmethod
    def _is_news(voucher: SignedVoucher, ledger: dict[bytes, Any]) -> bool:
        """True if the voucher is above the stored one (at or below: superseded, kept out)."""
        last = ledger.get(voucher.voucher.model_id)
        return last is None or voucher.voucher.cumulative_amount > last.cumulative

    def _check_signature(self, voucher: SignedVoucher, channel_id: bytes, model_id: bytes, state: ChannelState) -> None:
        v = voucher.voucher
        if v.channel_id != channel_id or v.model_id != model_id:
            raise BadVoucher("voucher is for another channel or model than this request")
        try:
            voucher.verify(self.domain, state.payer)
        except InvalidSignature as exc:
            raise BadVoucher(f"voucher signature invalid (wrong signer, chain or contract): {exc}") from None

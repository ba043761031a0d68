"""Voucher checks and the credit rule (DESIGN §4).

Before a request is served:
- its voucher (if any) is signed by the channel's payer under this chain's Channels
  domain, for a channel whose provider is us and that is not closing, with a
  cumulative above the last one for that (channel, model), and with all models'
  cumulatives together within the deposit;
- the channel's unpaid balance (earned − vouchers) is within the credit limit.
Channel state comes from chain and is cached; it is re-read when a voucher would
exceed the cached deposit (a top-up), and in the background once the cache is older
than `ttl` (the request goes on with the cached state meanwhile). So a channel this
node has seen keeps being served while the chain endpoint is away; only a channel it
has never seen, or a voucher above the cached deposit, needs the chain, and those are
answered 503 (try another provider) while it is unreachable.
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
from allmende.provider.errors import BadVoucher, PaymentRequired
from allmende.provider.store import ChannelState, ProviderStore

log = logging.getLogger("allmende.provider.payments")


@dataclass(frozen=True)
class CreditPolicy:
    # most a payer may owe (earned but not covered by a voucher), in payment-token units
    credit_limit: int = 50_000
    # refuse channels that close within this many seconds (we could not redeem in time)
    close_margin: int = 600
    # how long a cached channel state is trusted
    ttl: float = 30.0


class PaymentGate:
    def __init__(
        self,
        store: ProviderStore,
        domain: Domain,
        provider: str,
        read_channel: Callable[[bytes], ChannelRecord],
        now: Callable[[], float] = time.time,
        policy: CreditPolicy | None = None,
    ) -> None:
        self.store = store
        self.domain = domain
        self.provider = provider
        self.read_channel = read_channel
        self.now = now
        self.policy = policy or CreditPolicy()
        self._refreshing: set[bytes] = set()
        self._refreshing_lock = threading.Lock()

    def is_cached(self, channel_id: bytes) -> bool:
        """True when admitting a request on this channel needs no chain read (a stale
        cache is refreshed in the background)."""
        return self.store.channel(channel_id) is not None

    def channel(self, channel_id: bytes, refresh: bool = False) -> ChannelState:
        cached = self.store.channel(channel_id)
        if cached is not None and not refresh:
            if self.now() - cached.refreshed_at >= self.policy.ttl:
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

    def admit(self, channel_id: bytes, model_id: bytes, payer: str, voucher: SignedVoucher | None) -> ChannelState:
        """Check (and durably store) the voucher, then apply the credit rule."""
        state = self.channel(channel_id)
        if state.payer.lower() != payer.lower():
            raise PaymentRequired(f"channel 0x{channel_id.hex()} belongs to {state.payer}, not {payer}")
        if state.closes_at and state.closes_at - self.now() < self.policy.close_margin:
            raise PaymentRequired("channel is closing: open a new one")
        ledger = {row.model_id: row for row in self.store.ledger(channel_id)}
        if voucher is not None:
            self._check_voucher(voucher, channel_id, model_id, state, ledger)
            self.store.store_voucher(voucher)
            ledger = {row.model_id: row for row in self.store.ledger(channel_id)}
        earned = sum(r.earned for r in ledger.values())
        paid = sum(r.cumulative for r in ledger.values())
        if earned - paid > self.policy.credit_limit:
            raise PaymentRequired(
                f"unpaid balance {earned - paid} exceeds the credit limit {self.policy.credit_limit}: send a voucher"
            )
        if earned >= state.deposit:
            raise PaymentRequired("channel deposit exhausted: top up the channel")
        return state

    def _check_voucher(
        self, voucher: SignedVoucher, channel_id: bytes, model_id: bytes, state: ChannelState, ledger: dict[bytes, Any]
    ) -> None:
        v = voucher.voucher
        if v.channel_id != channel_id or v.model_id != model_id:
            raise BadVoucher("voucher is for another channel or model than this request")
        try:
            voucher.verify(self.domain, state.payer)
        except InvalidSignature as exc:
            raise BadVoucher(f"voucher signature invalid (wrong signer, chain or contract): {exc}") from None
        last = ledger.get(model_id)
        if last is not None and v.cumulative_amount <= last.cumulative:
            raise BadVoucher(f"voucher cumulative {v.cumulative_amount} is not above the last one ({last.cumulative})")
        others = sum(r.cumulative for m, r in ledger.items() if m != model_id)
        if others + v.cumulative_amount > state.deposit:
            state = self.channel(channel_id, refresh=True)  # maybe topped up since we looked
            if others + v.cumulative_amount > state.deposit:
                raise BadVoucher(f"vouchers total {others + v.cumulative_amount} exceed the deposit {state.deposit}")

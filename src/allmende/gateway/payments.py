"""The gateway's side of payment channels: one channel per provider, opened on first
use, topped up when low; a voucher for everything owed with each request; every
receipt checked against the price on chain before it is paid."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from allmende.chain import Contracts
from allmende.chain.errors import ContractReverted
from allmende.core import SignedReceipt, SignedVoucher, Voucher, request_cost, sign_voucher
from allmende.gateway.directory import Offer
from allmende.gateway.errors import InsufficientFunds
from allmende.gateway.store import GatewayStore

log = logging.getLogger("allmende.gateway.payments")


class Overcharged(Exception):
    """A receipt asked for more than usage × the price on chain."""


@dataclass(frozen=True)
class ChannelPolicy:
    # deposit of a new channel and of each top-up, payment-token units
    deposit: int = 10_000_000
    # top up when less than this fraction of the deposit is left
    low_water: float = 0.25


class Payments:
    def __init__(self, store: GatewayStore, contracts: Contracts, key: bytes, policy: ChannelPolicy | None = None):
        self.store = store
        self.contracts = contracts
        self.key = key
        self.payer = contracts.client.address
        self.policy = policy or ChannelPolicy()
        self.domain = contracts.channels.voucher_domain()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._allowance_ok = False

    def _lock(self, provider: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(provider.lower(), threading.Lock())

    def ready_channel(self, provider: str) -> bytes | None:
        """The channel to `provider` if it exists and needs no top-up (no chain call, no thread)."""
        known = self.store.channel(provider)
        if known is None:
            return None
        channel_id, deposit = known
        if deposit - self.store.total_owed(channel_id) < deposit * self.policy.low_water:
            return None
        return channel_id

    def channel_for(self, provider: str) -> bytes:
        """The channel to `provider`, opened (and topped up) as needed. Blocking: call from a thread."""
        with self._lock(provider):
            known = self.store.channel(provider)
            if known is None:
                self._ensure_allowance()
                try:
                    channel_id = self.contracts.channels.open(provider, self.policy.deposit)
                except ContractReverted as exc:
                    raise InsufficientFunds(f"cannot open a payment channel: {exc.reason}") from None
                self.store.put_channel(provider, channel_id, self.policy.deposit)
                log.info("opened channel 0x%s to %s", channel_id.hex(), provider)
                return channel_id
            channel_id, deposit = known
            if deposit - self.store.total_owed(channel_id) < deposit * self.policy.low_water:
                self._ensure_allowance()
                try:
                    self.contracts.channels.top_up(channel_id, self.policy.deposit)
                except ContractReverted as exc:
                    raise InsufficientFunds(f"cannot top up the payment channel: {exc.reason}") from None
                self.store.put_channel(provider, channel_id, deposit + self.policy.deposit)
            return channel_id

    def _ensure_allowance(self) -> None:
        if not self._allowance_ok:
            self.contracts.stable.ensure_allowance(self.contracts.channels.address, 2**255)
            self._allowance_ok = True

    def voucher(self, channel_id: bytes, model_id: bytes) -> SignedVoucher | None:
        """A voucher for everything owed on (channel, model), or None if the provider already has it."""
        cumulative = self.store.claim_voucher(channel_id, model_id)
        if cumulative is None:
            return None
        return sign_voucher(Voucher(channel_id, model_id, cumulative), self.domain, self.key)

    def settle(
        self, provider: str, channel_id: bytes, offer: Offer, receipt: SignedReceipt, api_key: str | None
    ) -> int:
        """Record what an answer costs. Pays at most usage × the on-chain price; raises
        Overcharged (after recording the fair amount) if the receipt asked for more."""
        r = receipt.receipt
        fair = request_cost(r.tokens_in, r.tokens_out, offer.price_in, offer.price_out)
        amount = min(r.amount, fair)
        self.store.record_receipt(
            r.request_id, provider, channel_id, r.model_id, amount, json.dumps(receipt.to_json()), api_key
        )
        if r.amount > fair:
            raise Overcharged(f"receipt asks {r.amount}, usage × price on chain is {fair}")
        return amount

    def close_all(self) -> list[bytes]:
        """Request closing every channel (the deposits come back after the close delay)."""
        closed = []
        for provider, channel_id, _ in self.store.all_channels():
            try:
                self.contracts.channels.request_close(channel_id)
                closed.append(channel_id)
            except ContractReverted as exc:
                log.info("channel 0x%s: %s", channel_id.hex(), exc.reason)
            self.store.drop_channel(provider)
        return closed

"""The gateway's side of payment channels: one channel per provider, opened on first
use, topped up when low; a voucher for everything owed with each request; every
receipt checked (payer/receipts.py: against what was sent and received, and the price on
chain) before it is paid.

One attempt at a provider is one `Hold` (`hold`: the channel readied, the most cost counted
in flight, the voucher signed), which ends in `pay` (the receipt checked and recorded as
owed) or `release` (the provider earned nothing).

Only opening a channel, and topping up one whose deposit is used up, make a request
wait for the chain. A top-up at the low-water mark runs in the background while
requests go on against what is left. While the chain endpoint is unreachable, chain
work is retried at most every `retry_after` seconds and otherwise fails at once
(RpcUnavailable), so the router moves on to a provider that has a usable channel.

Exposure: before a request goes to a provider its maximum cost (`core.credit`) is
reserved here; the request is sent only while, on that channel,
    owed − acked + in flight + its max cost ≤ the provider's credit limit, and
    owed + in flight + its max cost ≤ the deposit.
A request that ends with a receipt moves from `in flight` to `owed`; one the provider
refused (an error reply) is released; one whose outcome is unknown (a timeout, a cut
connection) stays counted, because the provider may have earned it. Mirrored by the
provider's own reservation, this is why no ordering of concurrent requests makes a
provider refuse payment (the argument is in provider/payments.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass

import httpx

from allmende.api.canonical import CanonicalRequest
from allmende.api.client import Answer, PayerKey
from allmende.api.directory import Offer
from allmende.chain import Contracts
from allmende.chain.errors import ChainError, ContractReverted, RpcUnavailable
from allmende.core import SignedReceipt, SignedVoucher, Voucher, request_cost, sign_voucher
from allmende.payer.errors import InsufficientFunds
from allmende.payer.receipts import BadReceipt, check_receipt
from allmende.payer.store import GatewayStore

log = logging.getLogger("allmende.payer.payments")


@dataclass(frozen=True)
class ChannelPolicy:
    # deposit of a new channel and of each top-up, payment-token units
    deposit: int = 10_000_000
    # top up when less than this fraction of the deposit is left
    low_water: float = 0.25
    # after the chain endpoint failed, seconds before chain work is tried again
    retry_after: float = 5.0
    # longest a request waits for another request's chain work on the same channel
    wait_for_chain: float = 10.0


@dataclass(frozen=True)
class Hold:
    """What one request takes to one provider: the channel it is paid through, its most cost
    counted in flight there, and the voucher for what is owed on (channel, model) (None: the
    provider holds it already)."""

    channel_id: bytes
    cost: int
    voucher: SignedVoucher | None

    @property
    def carried(self) -> int:
        """The cumulative of the voucher sent with the request (0: none)."""
        return self.voucher.voucher.cumulative_amount if self.voucher is not None else 0


class Payments:
    def __init__(self, store: GatewayStore, contracts: Contracts, key: bytes, policy: ChannelPolicy | None = None):
        self.store = store
        self.contracts = contracts
        self.key = key
        self.payer = contracts.client.address
        self.policy = policy or ChannelPolicy()
        self.domain = contracts.channels.voucher_domain()
        self.signer = PayerKey(key, self.domain)  # signs every request (provider.client.build_envelope)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._allowance_ok = False
        self._chain_down_until = 0.0
        self._top_up_after: dict[str, float] = {}
        self._in_flight: dict[bytes, int] = {}  # channel → Σ max cost of requests sent, not settled
        self._exposure_lock = threading.Lock()

    def _lock(self, provider: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(provider.lower(), threading.Lock())

    def ready_channel(self, provider: str, need: int = 1) -> bytes | None:
        """The channel to `provider` if it exists and has `need` units of deposit left beyond
        what is owed and in flight (no chain call, no waiting); below the low-water mark a
        top-up starts in the background."""
        known = self.store.channel_owed(provider)
        if known is None:
            return None
        channel_id, deposit, owed = known
        left = deposit - owed - self.in_flight(channel_id)
        if left < need:
            return None
        if left < deposit * self.policy.low_water:
            self._top_up_in_background(provider)
        return channel_id

    def reserve_ready(self, provider: str, cost: int, credit_limit: int) -> tuple[bytes | None, bool]:
        """`ready_channel(provider, cost)` and, if it gives a channel, `reserve(channel, cost,
        credit_limit)`, on one read of the store (every request does both, in this order).
        (None, False): no channel ready, as `ready_channel`'s None; (channel, False): ready,
        but the credit limit or the deposit cannot take `cost` now; (channel, True): `cost`
        is counted as in flight on it."""
        known = self.store.channel_exposure(provider)
        if known is None:
            return None, False
        channel_id, deposit, owed, unacked = known
        with self._exposure_lock:
            flying = self._in_flight.get(channel_id, 0)
            left = deposit - owed - flying
            if left < cost:
                ready = reserved = False
            else:
                ready = True
                reserved = unacked + flying + cost <= credit_limit
                if reserved:
                    self._in_flight[channel_id] = flying + cost
        if not ready:
            return None, False
        if left < deposit * self.policy.low_water:
            self._top_up_in_background(provider)
        return channel_id, reserved

    async def hold(self, provider: str, model_id: bytes, cost: int, credit_limit: int) -> Hold | None:
        """Ready a request of most cost `cost` for `provider`: a channel with room for it, the
        cost counted in flight on it within the provider's `credit_limit`, and the voucher it
        carries. None: not now (only requests in flight stand in the way, or the provider's
        credit for us is taken: wait for their receipts, or go elsewhere). Opening or topping
        up the channel are chain transactions: they run on a thread, and raise ChainError
        when the chain cannot take them. Every hold ends in `release` (or `settle`, then
        `release`)."""
        # the usual case: the channel is ready and the cost reserved on it, on one read of the store
        channel_id, reserved = self.reserve_ready(provider, cost, credit_limit)
        if channel_id is None:
            if self.room_after_settling(provider, cost):
                return None  # only requests in flight stand in the way: wait for their receipts
            channel_id = await asyncio.to_thread(self.channel_for, provider, cost)
            reserved = self.reserve(channel_id, cost, credit_limit)
        if not reserved:
            return None
        return Hold(channel_id, cost, self.voucher(channel_id, model_id))

    def room_after_settling(self, provider: str, need: int) -> bool:
        """True if only requests in flight on the channel to `provider` keep `need` units from
        being available (the deposit minus what is owed covers it), so waiting for their
        receipts beats a top-up; below the low-water mark a top-up starts in the background
        all the same."""
        known = self.store.channel(provider)
        if known is None:
            return False
        channel_id, deposit = known
        if deposit - self.store.total_owed(channel_id) - self.in_flight(channel_id) < deposit * self.policy.low_water:
            self._top_up_in_background(provider)
        # receipts cost at most what they reserved, often far less: worth waiting for
        return self.in_flight(channel_id) > 0 and deposit - self.store.total_owed(channel_id) >= need

    # ------------------------------------------------------------ exposure

    def in_flight(self, channel_id: bytes) -> int:
        with self._exposure_lock:
            return self._in_flight.get(channel_id, 0)

    def reserve(self, channel_id: bytes, cost: int, credit_limit: int) -> bool:
        """Count `cost` as in flight on the channel if the provider's credit limit and the
        deposit allow it; False means: not now (another provider, or wait for answers)."""
        deposit, owed, unacked = self.store.exposure(channel_id)
        with self._exposure_lock:
            flying = self._in_flight.get(channel_id, 0)
            if unacked + flying + cost > credit_limit or owed + flying + cost > deposit:
                return False
            self._in_flight[channel_id] = flying + cost
            return True

    def release(self, channel_id: bytes, cost: int) -> None:
        """The request ended without the provider earning anything (or its receipt is owed now)."""
        with self._exposure_lock:
            left = self._in_flight.get(channel_id, 0) - cost
            if left > 0:
                self._in_flight[channel_id] = left
            else:
                self._in_flight.pop(channel_id, None)

    def _top_up_in_background(self, provider: str) -> None:
        lock = self._lock(provider)
        if self.chain_down() or time.monotonic() < self._top_up_after.get(provider, 0.0):
            return  # the chain is away, or this top-up failed a moment ago: retried later
        if not lock.acquire(blocking=False):
            return  # a top-up is under way
        lock.release()

        def work() -> None:
            try:
                self.channel_for(provider)
            except (ChainError, InsufficientFunds) as exc:
                self._top_up_after[provider] = time.monotonic() + self.policy.retry_after
                log.warning("top-up of the channel to %s deferred: %s", provider, exc)

        threading.Thread(target=work, name="top-up", daemon=True).start()

    def top_up_low_channels(self) -> int:
        """Start the top-up of every channel below its low-water mark (the gateway's loop calls
        this, so a top-up deferred while the chain was away is retried without waiting for a
        request to that provider). Returns how many were started."""
        if self.chain_down():
            return 0
        started = 0
        for provider, channel_id, deposit in self.store.all_channels():
            left = deposit - self.store.total_owed(channel_id) - self.in_flight(channel_id)
            if left < deposit * self.policy.low_water:
                self._top_up_in_background(provider)
                started += 1
        return started

    def chain_down(self) -> bool:
        return time.monotonic() < self._chain_down_until

    def channel_for(self, provider: str, need: int = 1) -> bytes:
        """The channel to `provider`, opened (and topped up) as needed. Blocking: call from a thread."""
        if self.chain_down():
            raise RpcUnavailable("the chain endpoint is unreachable; retrying shortly")
        try:
            return self._channel_for(provider, need)
        except RpcUnavailable:
            self._chain_down_until = time.monotonic() + self.policy.retry_after
            raise

    def _channel_for(self, provider: str, need: int = 1) -> bytes:
        lock = self._lock(provider)
        if not lock.acquire(timeout=self.policy.wait_for_chain):
            raise RpcUnavailable("the chain is slow to answer (a transaction for this channel is pending)")
        try:
            if self.chain_down():
                raise RpcUnavailable("the chain endpoint is unreachable; retrying shortly")
            return self._channel_locked(provider, need)
        finally:
            lock.release()

    def _channel_locked(self, provider: str, need: int = 1) -> bytes:
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
        left = deposit - self.store.total_owed(channel_id) - self.in_flight(channel_id)
        if left < max(need, deposit * self.policy.low_water):
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
        self,
        provider: str,
        channel_id: bytes,
        offer: Offer,
        receipt: SignedReceipt,
        api_key: str | None,
        carried: int = 0,
    ) -> int:
        """Record what an answer costs: the receipt's amount, owed from now on (the next
        voucher covers it). A receipt asking more than usage × the price on chain raises
        BadReceipt and is not paid at all. `carried` is the cumulative of the voucher the
        answered request carried: the provider holds it (or a higher one) now."""
        r = receipt.receipt
        fair = request_cost(r.tokens_in, r.tokens_out, offer.price_in, offer.price_out)
        if r.amount > fair:
            raise BadReceipt(f"receipt asks {r.amount}, usage × price on chain is {fair}: not paid")
        self.store.record_receipt(
            r.request_id, provider, channel_id, r.model_id, r.amount, json.dumps(receipt.to_json()), api_key, carried
        )
        return r.amount

    def pay(
        self,
        provider: str,
        hold: Hold,
        offer: Offer,
        sent: CanonicalRequest,
        answer: Answer,
        api_key: str | None,
        streamed_text: str | None = None,
        streamed_tokens: int = 0,
    ) -> int:
        """Pay an answer to the request `hold` was taken for: its receipt checked against what
        was sent and received (payer/receipts.py; for a stream, the text of its deltas and the
        tokens they carried) at `offer`'s prices and context, then `settle`d. BadReceipt if it
        fails: nothing is owed for it. The hold ends either way; returns what is owed."""
        try:
            prices = (offer.price_in, offer.price_out)
            check_receipt(
                answer.receipt, sent, answer.output, prices, offer.context_length, streamed_text, streamed_tokens
            )
            return self.settle(provider, hold.channel_id, offer, answer.receipt, api_key, hold.carried)
        finally:
            self.release(hold.channel_id, hold.cost)

    def settle_up(self, urls: dict[str, str], http: httpx.Client) -> int:
        """Deliver the vouchers the providers are still waiting for (work answered since the last
        voucher a request carried) to each provider's `POST /v1/vouchers`: done before closing a
        channel, so a provider is paid for every receipt it signed. `urls`: provider address
        (lower case) → its endpoint. Returns how many vouchers were acknowledged."""
        delivered = 0
        for provider, channel_id, _ in self.store.all_channels():
            vouchers = [v for m in self.store.unacked_models(channel_id) if (v := self.voucher(channel_id, m))]
            url = urls.get(provider.lower())
            if not vouchers or url is None:
                continue
            try:
                reply = http.post(f"{url}/v1/vouchers", json={"vouchers": [v.to_json() for v in vouchers]})
                reply.raise_for_status()
                held = reply.json()["held"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("vouchers for channel 0x%s not delivered to %s: %s", channel_id.hex(), provider, exc)
                continue
            for row in held:
                self.store.ack(
                    bytes.fromhex(row["channel_id"][2:]), bytes.fromhex(row["model_id"][2:]), int(row["cumulative"])
                )
                delivered += 1
        return delivered

    def fund_from_relay(self) -> list[str]:
        """Back what the gateway paid its providers with what x402 sessions paid it: the relay
        balance (Channels: zero-model redeems, whose protocol fee is still to be paid) goes
        into the deposits of the provider channels, each at most what it has been charged
        beyond what was relayed into it before. The providers' redeems then take the fee, so
        a session's payment pays it once; the tokens the gateway put in come back whole when
        those channels close. Returns the transaction hashes."""
        channels = self.contracts.channels
        relay = channels.relay_balance(self.payer)
        sent: list[str] = []
        for provider, channel_id, _ in self.store.all_channels():
            if relay <= 0:
                break
            amount = min(relay, self.store.total_owed(channel_id) - channels.relayed(channel_id))
            if amount <= 0:
                continue
            with self._lock(provider):
                try:
                    tx = channels.fund(channel_id, amount)
                except ContractReverted as exc:  # closing meanwhile: the next channel, or the next time
                    log.info("channel 0x%s not funded from the relay balance: %s", channel_id.hex(), exc.reason)
                    continue
                known = self.store.channel(provider)
                if known is not None and known[0] == channel_id:
                    self.store.put_channel(provider, channel_id, known[1] + amount)
            relay -= amount
            sent.append(tx.tx_hash)
        return sent

    def relay_target(self) -> tuple[str, bytes, int] | None:
        """Where a relayed redeem's money goes without a `fund` transaction of its own
        (Channels.redeem's `fund_into`): the provider channel charged most beyond what was
        relayed into it, and that much at most, as `fund_from_relay` would put into it.
        (provider, channel id, most); None when no channel is owed anything."""
        best: tuple[str, bytes, int] | None = None
        for provider, channel_id, _ in self.store.all_channels():
            room = self.store.total_owed(channel_id) - self.contracts.channels.relayed(channel_id)
            if room > 0 and (best is None or room > best[2]):
                best = (provider, channel_id, room)
        return best

    def relay_funded(self, provider: str, channel_id: bytes, amount: int) -> None:
        """A redeem put `amount` of relayed money into the provider channel's deposit."""
        with self._lock(provider):
            known = self.store.channel(provider)
            if known is not None and known[0] == channel_id:
                self.store.put_channel(provider, channel_id, known[1] + amount)

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

"""A stage session's payer (`payer.stages.StagePayer`) on its own channels: what a gateway
pays the providers of a model's stages with, and what a validator auditing a stage provider
pays it with (the same wire, sealing, authorizations and vouchers, so an audit looks like
any session)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from eth_utils import keccak

from allmende.api.stages import CallPayment, ForwardRequest
from allmende.chain.errors import ChainError
from allmende.core.receipts import SignedReceipt
from allmende.core.vouchers import SignedVoucher
from allmende.payer.errors import InsufficientFunds
from allmende.payer.payments import Payments
from allmende.payer.stages import NoStageProvider, StageOffer


@dataclass
class _Hold:
    """A reservation on one stage provider's channel for one request."""

    channel: bytes
    cost: int  # still reserved: the most the provider can earn in the session, less its receipts
    stuck: int = 0  # calls whose outcome is unknown: kept counted after the session (Payments)


class SessionPayer:
    """One session's payer on the gateway's channels (`gateway.stages.StagePayer`): a
    reservation per stage provider for the most it can earn in the session (`positions`
    at every stage, `drawn` tokens at the last), shrunk by each receipt as it becomes owed."""

    def __init__(
        self,
        payments: Payments,
        credit_limit: Callable[[str], int],  # a provider's credit limit for this gateway (its /v1/info's)
        positions: int,
        drawn: int,
        api_key: str | None,
    ) -> None:
        self.payments = payments
        self.credit_limit = credit_limit
        self.positions = positions
        self.drawn = drawn
        self.api_key = api_key
        self.holds: dict[str, _Hold] = {}  # provider address -> its reservation
        self.stage_ids: dict[str, set[bytes]] = {}  # provider address -> the stages it earned on

    async def hold(self, offer: StageOffer, last: bool) -> None:
        address = str(offer.provider)
        if address in self.holds:
            return
        cost = offer.price.amount(self.positions, self.drawn if last else 0)
        try:
            channel = self.payments.ready_channel(address, cost)
            if channel is None:
                channel = await asyncio.to_thread(self.payments.channel_for, address, cost)
        except (ChainError, InsufficientFunds) as exc:
            raise NoStageProvider(f"no channel to stage provider {address}: {exc}") from None
        if not self.payments.reserve(channel, cost, self.credit_limit(address)):
            raise NoStageProvider(f"stage provider {address} has no credit left for this gateway right now")
        self.holds[address] = _Hold(channel, cost)

    def pay(self, offer: StageOffer, call: ForwardRequest) -> CallPayment:
        channel = self.holds[str(offer.provider)].channel
        voucher = self.payments.voucher(channel, call.stage)  # everything owed on (channel, stage), if unacked
        signature = call.authorization(channel).sign(self.payments.domain, self.payments.key)
        return CallPayment(channel, signature, voucher)

    def paid(self, offer: StageOffer, receipt: SignedReceipt, payment: CallPayment) -> None:
        r = receipt.receipt
        hold = self.holds[str(offer.provider)]
        carried = payment.voucher.voucher.cumulative_amount if payment.voucher else 0
        # one call's receipts name the same request id at every stage: stored per stage
        stored_as = keccak(r.request_id + r.model_id)
        self.payments.store.record_receipt(
            stored_as, r.provider, hold.channel, r.model_id, r.amount, json.dumps(receipt.to_json()), self.api_key,
            carried,
        )  # fmt: skip
        moved = min(r.amount, hold.cost)  # from in flight to owed
        self.payments.release(hold.channel, moved)
        hold.cost -= moved
        self.stage_ids.setdefault(r.provider, set()).add(r.model_id)

    def unsettled(self, offer: StageOffer, cost: int) -> None:
        hold = self.holds[str(offer.provider)]
        moved = min(cost, hold.cost)
        hold.cost -= moved
        hold.stuck += moved

    def last_vouchers(self) -> dict[str, list[SignedVoucher]]:
        """Per provider, the cumulative vouchers for what the session's calls left owed (each call
        carried the voucher for those before it), to deliver when the session ends."""
        out = {}
        for provider, stage_ids in self.stage_ids.items():
            channel = self.holds[provider].channel
            vouchers = [v for s in sorted(stage_ids) if (v := self.payments.voucher(channel, s))]
            if vouchers:
                out[provider] = vouchers
        return out

    def release(self) -> None:
        """End the session's reservations (calls of unknown outcome stay counted)."""
        for hold in self.holds.values():
            self.payments.release(hold.channel, hold.cost)
            hold.cost = 0

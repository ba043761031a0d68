"""The x402 `session` scheme at the gateway: the server and facilitator halves that register
into the official SDK next to `exact` (see core/x402_session.py for the messages, and
agent/x402.py for the client half).

Choice: the gateway **pays the providers from the session** (it does not forward the agent's
channel to them). The agent's channel goes to the gateway's address; the gateway serves each
request through its own provider channels, as for every request, and redeems the agent's
vouchers in `Channels`. Forwarding would need the agent to sign each provider's canonical
request (the provider's Request authorisation binds its input hash) and to open a channel
per provider; through the gateway one channel serves every model and provider. The session's
vouchers are zero-model: their redeem pays no fee and lands in the gateway's relay balance,
which the same redeem puts into the deposit of the provider channel that paid for those
requests (`Channels.redeem`'s `fund_into`, with the gateway's `Payments` as `funding`: no
`fund` transaction; anything over goes in with `Payments.fund_from_relay`); the providers'
redeems take the fee, once.

Closing: the agent asks, signing a close request (core/x402_session.py) and sending its
last voucher; the gateway redeems it, gives the channel up and sends the agent its unspent
deposit back in one transaction (`Channels.redeem` with `release`), if the session is
fully paid. Otherwise, or if the gateway does not answer, the agent closes on chain.

The agent's channel outlives its sessions: a session is a window on it (its session id, in
every payment's signed authorisation); a new session id ends the channel's earlier one.

Admission (`verify`, then `settle` in the SDK's upfront flow, before the request is served):
the channel is on chain, goes to this gateway, is not closing; the voucher and the request's
authorisation are signed by its payer over this request's body hash and a fresh nonce; and,
as the credit rule has it for providers,

    charged + held + most − voucher ≤ credit     (what the agent may owe unpaid), and
    charged + held + most ≤ deposit              (what the channel can pay at all).

"Settling" a session payment is the nonce's admission (UNIQUE in SQLite) and the hold of
the request's most; no transaction. When the answer comes its receipt becomes the charge
(`SessionGate.charged`), listed in the session's statement, from which the agent signs its
next voucher. The gateway redeems a session's highest voucher when the agent's last voucher
arrives (its close), and at its upkeep those of closing channels and those with more than
`redeem_above` units unredeemed (each redeem costs gas: a session is not redeemed every few
minutes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

from fastapi import FastAPI, Request
from x402.interfaces import FacilitatorContext
from x402.schemas import AssetAmount, PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

from allmende.chain import Contracts
from allmende.chain.bindings import ChannelRecord
from allmende.chain.errors import ChainError, ContractReverted
from allmende.core import SignedVoucher, Voucher
from allmende.core.errors import InvalidInput, InvalidSignature
from allmende.core.vouchers import REDEEM_BATCH
from allmende.core.x402_session import (
    SCHEME,
    SESSION_MODEL,
    STATEMENT_SIGNATURE,
    STATEMENT_TIME,
    SessionPayment,
    close_requester,
    statement_reader,
)
from allmende.gateway.errors import InvalidRequest, Unauthorized
from allmende.gateway.x402_ledger import ChannelInUse, NonceUsed, SessionEnded, X402Ledger

log = logging.getLogger("allmende.gateway.x402")
CHANNEL_TTL = 2.0  # seconds a session channel's on-chain record is trusted before it is read again


class StatementRefused(Unauthorized):
    """A statement read not signed by the session's payer (or not fresh): 401."""

    code = "invalid_session_signature"


class SessionServerScheme:
    """The SDK's SchemeNetworkServer for `session`: prices come as atomic AssetAmounts."""

    scheme = SCHEME
    default_asset_transfer_method = "channel"
    payment_flows: ClassVar[dict[str, Any]] = {"channel": {"supported": ("upfront",), "default": "upfront"}}

    def parse_price(self, price: Any, network: str) -> AssetAmount:
        if isinstance(price, AssetAmount):
            return price
        if isinstance(price, dict) and price.get("amount") and price.get("asset"):
            return AssetAmount(amount=str(price["amount"]), asset=str(price["asset"]), extra=price.get("extra") or {})
        raise ValueError("session prices are atomic amounts of the deployment's payment token")

    def enhance_payment_requirements(
        self, requirements: PaymentRequirements, supported_kind: Any, extensions: list[str]
    ) -> PaymentRequirements:
        return requirements


class SessionFacilitatorScheme:
    """The SDK's SchemeNetworkFacilitator for `session`, against the chain and the ledger."""

    scheme = SCHEME
    caip_family = "eip155:*"

    def __init__(self, contracts: Contracts, ledger: X402Ledger, credit: int) -> None:
        self.contracts = contracts
        self.ledger = ledger
        self.credit = credit
        self.address = contracts.client.address
        self.domain = contracts.channels.voucher_domain()
        self._admitting = threading.Lock()
        self._channels: dict[bytes, tuple[float, ChannelRecord]] = {}

    def _channel(self, channel_id: bytes, fresh: bool = False) -> ChannelRecord:
        """The channel as the chain has it, read at most every CHANNEL_TTL seconds (a close
        requested meanwhile is seen that much later: the gateway can still redeem then)."""
        hit = self._channels.get(channel_id)
        if hit is not None and not fresh and time.monotonic() - hit[0] < CHANNEL_TTL:
            return hit[1]
        try:
            record = self.contracts.channels.channel(channel_id)
        except ChainError:
            raise InvalidInput("unknown_channel: no such channel in Channels") from None
        self._channels[channel_id] = (time.monotonic(), record)
        return record

    def get_extra(self, network: str) -> dict[str, Any] | None:
        return None

    def get_signers(self, network: str) -> list[str]:
        return [self.address]

    def _check(self, payload: PaymentPayload, requirements: PaymentRequirements) -> tuple[SessionPayment, str, int]:
        """The payment, its payer and the request's most; InvalidInput says why not."""
        extra = requirements.extra or {}
        body_hash = bytes.fromhex(str(extra.get("requestHash", ""))[2:])
        payment = SessionPayment.from_payload(payload.payload)
        try:
            payer = payment.payer(self.domain, body_hash)
        except InvalidSignature as exc:
            raise InvalidInput(f"invalid_session_signature: {exc}") from None
        channel = self._channel(payment.channel_id)
        if channel.provider.lower() != self.address.lower():
            raise InvalidInput("wrong_channel: the channel does not pay this gateway")
        if channel.payer.lower() != payer.lower():
            raise InvalidInput(f"invalid_session_signature: signed by {payer}, the channel's payer is {channel.payer}")
        if channel.closes_at:
            raise InvalidInput("channel_closing: the channel is closing; open a new session")
        window = self.ledger.window(payment.session_id)
        if window is not None and (window[0] != payment.channel_id or window[2]):
            raise InvalidInput("session_ended: this payment's session has ended (a later one began on its channel)")
        if window is None and self.ledger.in_use_by(payment.channel_id)[1]:
            raise InvalidInput(
                "channel_in_use: another session (another process of this wallet) is paying from this "
                "channel; each process needs a channel of its own"
            )
        most = int(requirements.amount)
        if payment.cumulative > channel.deposit:
            raise InvalidInput("voucher_over_deposit: the voucher is above the channel's deposit")
        state = self.ledger.session(payment.channel_id)
        charged, held, voucher = (0, 0, 0) if state is None else (state.charged, state.held, state.cumulative)
        voucher = max(voucher, payment.cumulative)
        if charged + held + most > channel.deposit:  # topped up since it was read?
            channel = self._channel(payment.channel_id, fresh=True)
        if charged + held + most > channel.deposit:
            raise InvalidInput(
                f"insufficient_deposit: {charged} charged and {held} in flight of a {channel.deposit} deposit "
                f"leave less than this request's most of {most}; top the channel up"
            )
        if charged + held + most - voucher > self.credit:
            raise InvalidInput(
                f"voucher_too_low: {charged} charged, the voucher pays {voucher}; sign a voucher for the "
                f"session's statement (at most {self.credit} units may be unpaid)"
            )
        return payment, payer, most

    def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements, context: FacilitatorContext | None = None
    ) -> VerifyResponse:
        try:
            _, payer, _ = self._check(payload, requirements)
        except (InvalidInput, ValueError) as exc:
            reason, _, message = str(exc).partition(": ")
            return VerifyResponse(is_valid=False, invalid_reason=reason, invalid_message=message or reason)
        return VerifyResponse(is_valid=True, payer=payer)

    def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements, context: FacilitatorContext | None = None
    ) -> SettleResponse:
        network = str(requirements.network)
        try:
            with self._admitting:  # the check and the hold as one: concurrent payments cannot both fit
                payment, payer, most = self._check(payload, requirements)  # again: another may have come
                self.ledger.admit(
                    payment.channel_id,
                    payment.session_id,
                    payer,
                    payment.nonce,
                    most,
                    payment.cumulative,
                    payment.voucher_signature,
                )
        except NonceUsed:
            return SettleResponse(success=False, error_reason="nonce_already_used", transaction="", network=network)
        except SessionEnded:
            return SettleResponse(success=False, error_reason="session_ended", transaction="", network=network)
        except ChannelInUse:
            return SettleResponse(success=False, error_reason="channel_in_use", transaction="", network=network)
        except (InvalidInput, ValueError) as exc:
            reason, _, message = str(exc).partition(": ")
            return SettleResponse(
                success=False, error_reason=reason, error_message=message, transaction="", network=network
            )
        return SettleResponse(
            success=True,
            payer=payer,
            transaction="0x" + payment.nonce.hex(),  # no transaction: the admitted request's nonce
            network=network,
            amount=str(most),
            extra={
                "channelId": "0x" + payment.channel_id.hex(),
                "sessionId": "0x" + payment.session_id.hex(),
                "voucher": str(payment.cumulative),
            },
        )


class RelayFunding(Protocol):
    """Where the gateway's relayed money goes: its provider channels (payer/payments.py)."""

    def relay_target(self) -> tuple[str, bytes, int] | None: ...

    def relay_funded(self, provider: str, channel_id: bytes, amount: int) -> None: ...

    def fund_from_relay(self) -> list[str]: ...


class SessionGate:
    """What the gateway does for sessions besides admission: charge, statement, redeem.

    `redeem_above`: a session's vouchers are redeemed when more than this is unredeemed on
    its channel (or when the channel closes), not per session: each redeem costs gas.
    `funding`: the gateway's provider channels; each redeem puts what it pays straight into
    the one charged most beyond what was relayed into it (Channels.redeem's `fund_into`: no
    `fund` transaction), anything left with `fund_from_relay`. `on_redeemed`: called after
    every redeem (without `funding`: the gateway funds its provider channels from the relay
    balance there)."""

    def __init__(
        self,
        contracts: Contracts,
        ledger: X402Ledger,
        redeem_above: int = 10_000_000,
        on_redeemed: Callable[[], Any] | None = None,
        funding: RelayFunding | None = None,
    ) -> None:
        self.contracts = contracts
        self.ledger = ledger
        self.domain = contracts.channels.voucher_domain()
        self.redeem_above = redeem_above
        self.on_redeemed = on_redeemed
        self.funding = funding

    def statement(self, channel_id: bytes, after: int, at: int = -1, signature: bytes = b"") -> dict[str, Any]:
        """The session's charges after `after` (a sequence number), each with its receipt:
        for the channel's payer only, who signs each read at unix time `at`
        (core/x402_session.py); StatementRefused otherwise, the same for a channel that
        does not exist (the refusal tells nothing about it)."""
        state = self.ledger.session(channel_id)
        try:
            reader = statement_reader(channel_id, at, signature, time.time(), self.domain)
        except InvalidSignature as exc:
            raise StatementRefused(f"a session's statement is its payer's to read: {exc}") from None
        payer = state.payer if state is not None else self._payer_on_chain(channel_id)
        if payer is None or reader.lower() != payer.lower():
            raise StatementRefused(f"a session's statement is its payer's to read, not {reader}'s")
        charges = self.ledger.charges(channel_id, after)
        live, in_use = self.ledger.in_use_by(channel_id)
        return {
            "channel_id": "0x" + channel_id.hex(),
            # the live session and when its channel last paid: a process of the same wallet
            # that sees another's session live takes a channel of its own
            "live_session": None if live is None else "0x" + live.hex(),
            "in_use": in_use,
            "charged": str(0 if state is None else state.charged),
            "voucher": str(0 if state is None else state.cumulative),
            "voucher_signature": "0x" + (b"" if state is None or state.voucher is None else state.voucher).hex(),
            "redeemed": str(0 if state is None else state.redeemed),
            "last_seq": self.ledger.last_seq(channel_id),
            "charges": [
                {"seq": seq, "nonce": "0x" + nonce.hex(), "amount": str(amount), "receipt": json.loads(receipt)}
                for seq, nonce, amount, receipt in charges
            ],
        }

    def _payer_on_chain(self, channel_id: bytes) -> str | None:
        """The payer of a channel with no session yet (the agent reads before its first
        payment); None if there is no such channel."""
        try:
            return self.contracts.channels.channel(channel_id).payer
        except ChainError:
            return None

    def last_voucher(
        self,
        channel_id: bytes,
        cumulative: int,
        signature: bytes,
        redeem: bool = True,
        session_id: bytes | None = None,
    ) -> dict[str, Any]:
        """The agent's voucher at the end of a session: checked and kept; redeemed at once if
        the channel is closing (the agent wants its deposit back) or more than `redeem_above`
        is unredeemed on it, otherwise with a later batch. `session_id`: the session it ends
        (its payments are refused from then on, and the channel is free for a new one)."""
        state = self.ledger.session(channel_id)
        if state is None and cumulative == 0:
            return {"redeemed": [], "held": "0"}  # a session that paid for nothing: nothing to end
        if state is None:
            raise InvalidInput("no session on this channel")
        voucher = SignedVoucher(Voucher(channel_id, SESSION_MODEL, cumulative), signature)
        try:
            voucher.verify(self.domain, state.payer)
        except InvalidSignature as exc:
            raise InvalidInput(f"the voucher is not the session payer's: {exc}") from None
        if cumulative > state.charged:
            raise InvalidInput(f"the voucher pays {cumulative}, more than the {state.charged} charged")
        self.ledger.take_voucher(channel_id, cumulative, signature)
        if session_id is not None:  # the voucher's signature is the payer's: it may end its session
            self.ledger.end_window(channel_id, session_id)
        held = max(state.cumulative, cumulative)
        if not redeem:
            return {"redeemed": [], "held": str(held)}
        closing = self.contracts.channels.channel(channel_id).closes_at != 0
        redeemed = []
        if closing or held - state.redeemed > self.redeem_above:
            redeemed = self.redeem_due(above=2**256, channels=frozenset({channel_id}))
        return {"redeemed": redeemed, "held": str(held)}

    def close(
        self, channel_id: bytes, at: int, signature: bytes, voucher: tuple[int, bytes] | None = None
    ) -> dict[str, Any]:
        """A cooperative close, asked by the channel's payer (its signature over the close
        request at unix time `at`, core/x402_session.py) with its last voucher: the gateway
        redeems it, gives the channel up and sends the payer its unspent deposit, all in one
        transaction (Channels.redeem with `release`), so the agent needs no transaction and
        no close delay. Only a fully paid session is closed so: every charge vouched for,
        nothing in flight (InvalidInput otherwise; the agent can still close on chain)."""
        try:
            requester = close_requester(channel_id, at, signature, time.time(), self.domain)
        except InvalidSignature as exc:
            raise StatementRefused(f"only the channel's payer may close it: {exc}") from None
        state = self.ledger.session(channel_id)
        payer = state.payer if state is not None else self._payer_on_chain(channel_id)
        if payer is None or requester.lower() != payer.lower():
            raise StatementRefused(f"only the channel's payer may close it, not {requester}")
        if voucher is not None:
            self.last_voucher(channel_id, voucher[0], voucher[1], redeem=False)
            state = self.ledger.session(channel_id)
        if state is not None and (state.held or state.charged > state.cumulative):
            raise InvalidInput(
                f"the session owes {state.charged - state.cumulative} unvouched and has {state.held} in flight: "
                "sign its statement's charges first"
            )
        channels = self.contracts.channels
        record = channels.channel(channel_id)
        now = int(self.contracts.client.w3.eth.get_block("latest")["timestamp"])
        if record.closes_at and record.closes_at <= now:
            raise InvalidInput("the channel is closed already")
        if state is not None and state.voucher is not None and state.cumulative > state.redeemed:
            sent = self._redeem([(channel_id, state.cumulative, state.voucher, state.redeemed)], release=True)
        else:
            sent = channels.release(channel_id).tx_hash
            if record.deposit > record.spent:
                channels.withdraw(channel_id)
        self.ledger.released(channel_id)
        spent = channels.channel(channel_id).spent
        log.info("session channel 0x%s closed on its payer's request, %d spent", channel_id.hex(), spent)
        return {"closed": True, "spent": str(spent), "transaction": sent}

    def redeem_due(self, above: int = 0, channels: frozenset[bytes] = frozenset()) -> list[str]:
        """Redeem, in one batch, the session vouchers that are due: those of `channels`, those
        of channels that are closing (after the close they can no longer be redeemed) and
        those with more than `above` units unredeemed. A channel already past its close is
        dropped with an error in the log (its voucher would revert the whole batch). Returns
        the transaction hashes (none when nothing is due)."""
        now = int(self.contracts.client.w3.eth.get_block("latest")["timestamp"])
        due = []
        redeemed_of = {}
        for channel_id, cumulative, signature, redeemed in self.ledger.unredeemed():
            redeemed_of[channel_id] = redeemed
            closes_at = self.contracts.channels.channel(channel_id).closes_at
            if closes_at and closes_at <= now:
                log.error("session 0x%s closed with %d units unredeemed", channel_id.hex(), cumulative - redeemed)
                self.ledger.set_redeemed(channel_id, cumulative)
            elif channel_id in channels or closes_at or cumulative - redeemed > above:
                due.append((channel_id, cumulative, signature))
        batch = [(c, cum, sig, redeemed_of.get(c, 0)) for c, cum, sig in due]
        return [self._redeem(batch[i : i + REDEEM_BATCH]) for i in range(0, len(batch), REDEEM_BATCH)]

    def _redeem(self, due: list[tuple[bytes, int, bytes, int]], release: bool = False) -> str:
        """Redeem `due` (channel, voucher, signature, redeemed before) in one transaction, its
        relayed money into a provider channel (`funding`), with `release` closing the channels
        and refunding their payers; the ledger learns what was redeemed. The hash."""
        vouchers = [SignedVoucher(Voucher(c, SESSION_MODEL, cum), sig) for c, cum, sig, _ in due]
        paid = sum(cumulative - before for _, cumulative, _, before in due)
        channels = self.contracts.channels
        target = None if self.funding is None else self.funding.relay_target()
        if target is not None:
            try:
                sent = channels.redeem(vouchers, fund_into=target[1], fund_most=target[2], release=release)
            except ContractReverted as exc:  # that channel closing meanwhile: into the relay balance
                log.info("channel 0x%s not funded by the redeem: %s", target[1].hex(), exc.reason)
                target = None
        if target is None:
            sent = channels.redeem(vouchers, release=release)
        for channel_id, cumulative, _, _ in due:
            self.ledger.set_redeemed(channel_id, cumulative)
        log.info("redeemed %d session voucher(s) in %s", len(due), sent.tx_hash)
        try:
            if target is not None and self.funding is not None:
                self.funding.relay_funded(target[0], target[1], min(paid, target[2]))
            if self.funding is not None and (target is None or paid > target[2]):
                self.funding.fund_from_relay()
            if self.on_redeemed is not None:
                self.on_redeemed()
        except Exception as exc:  # the relay balance waits for the next redeem or upkeep
            log.warning("funding the provider channels from the relay balance failed: %s", exc)
        return sent.tx_hash

    def expire(self, idle: float, now: float | None = None) -> list[bytes]:
        """Give back the deposits of sessions that have paid for nothing for `idle` seconds:
        their vouchers redeemed, each channel released (`Channels.release`: it closes at once)
        and its unspent deposit withdrawn to its payer, who needs to do nothing. Returns the
        channels released. A channel the agent already asked to close is left to it."""
        now = time.time() if now is None else now
        channels = self.contracts.channels
        stale = []
        for channel_id in self.ledger.idle_channels(now - idle):
            if channels.channel(channel_id).closes_at:
                self.ledger.released(channel_id)  # closing on the agent's command: redeemed as such
            else:
                stale.append(channel_id)
        if not stale:
            return []
        # those with a voucher to redeem: redeemed, released and refunded in one transaction
        due = [d for d in self.ledger.unredeemed() if d[0] in stale]
        for i in range(0, len(due), REDEEM_BATCH):
            self._redeem(due[i : i + REDEEM_BATCH], release=True)
        for channel_id in stale:
            record = channels.channel(channel_id)
            if not record.closes_at:
                channels.release(channel_id)
                if record.deposit > record.spent:
                    channels.withdraw(channel_id)
            self.ledger.released(channel_id)
            log.info("session channel 0x%s expired: released, its unspent deposit back to its payer", channel_id.hex())
        return stale


def mount_sessions(app: FastAPI, sessions: Callable[[], Awaitable[SessionGate]]) -> None:
    """The session scheme's routes: its statement (what each answered request was charged,
    with its provider's receipt; the agent signs its next voucher from it) and the agent's
    last voucher (on close)."""

    def channel_of(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise InvalidRequest("a channel id is 32 bytes of 0x-hex", param="channel_id")
        return raw

    def signed_by_payer(request: Request, what: str) -> tuple[int, bytes]:
        """The time and signature a payer's statement read or close request carries in its headers."""
        at, signature = request.headers.get(STATEMENT_TIME, ""), request.headers.get(STATEMENT_SIGNATURE, "")
        try:
            return int(at), bytes.fromhex(signature.removeprefix("0x"))
        except ValueError:
            raise StatementRefused(f"{what} carries {STATEMENT_TIME} and {STATEMENT_SIGNATURE}") from None

    @app.get("/v1/x402/sessions/{channel_id}")
    async def session_statement(channel_id: str, request: Request, after: int = 0) -> dict[str, Any]:
        gate, channel = await sessions(), channel_of(channel_id)
        when, raw = signed_by_payer(request, "a statement read")
        return await asyncio.to_thread(gate.statement, channel, max(0, after), when, raw)

    @app.post("/v1/x402/sessions/{channel_id}/close")
    async def session_close(channel_id: str, request: Request) -> dict[str, Any]:
        gate, channel = await sessions(), channel_of(channel_id)
        when, raw = signed_by_payer(request, "a close request")
        try:
            body = await request.json()
        except ValueError:
            body = None
        voucher = None
        if isinstance(body, dict) and body.get("cumulative") is not None:
            cumulative, voucher_signature = body.get("cumulative"), body.get("signature")
            if not isinstance(cumulative, str) or not cumulative.isdigit() or not isinstance(voucher_signature, str):
                raise InvalidRequest("expected {cumulative: a decimal string, signature: 65 bytes of 0x-hex}")
            try:
                voucher = (int(cumulative), bytes.fromhex(voucher_signature.removeprefix("0x")))
            except ValueError:
                raise InvalidRequest("the voucher's signature is not hex") from None
        try:
            return await asyncio.to_thread(gate.close, channel, when, raw, voucher)
        except (ValueError, ContractReverted) as exc:  # InvalidInput is a ValueError
            raise InvalidRequest(str(exc)) from None

    @app.post("/v1/x402/sessions/{channel_id}/voucher")
    async def session_voucher(channel_id: str, request: Request) -> dict[str, Any]:
        gate = await sessions()
        try:
            body = await request.json()
        except ValueError:
            body = None
        cumulative = body.get("cumulative") if isinstance(body, dict) else None
        signature = body.get("signature") if isinstance(body, dict) else None
        session = body.get("session") if isinstance(body, dict) else None
        if not isinstance(cumulative, str) or not cumulative.isdigit() or not isinstance(signature, str):
            raise InvalidRequest("expected {cumulative: a decimal string, signature: 65 bytes of 0x-hex}")
        if session is not None and not isinstance(session, str):
            raise InvalidRequest("session: the 0x-hex id of the session this voucher ends")
        try:
            raw = bytes.fromhex(signature.removeprefix("0x"))
            ends = None if session is None else channel_of(session)
            return await asyncio.to_thread(
                gate.last_voucher, channel_of(channel_id), int(cumulative), raw, session_id=ends
            )
        except ValueError as exc:  # InvalidInput is one
            raise InvalidRequest(str(exc)) from None


__all__ = [
    "SESSION_MODEL",
    "SessionFacilitatorScheme",
    "SessionGate",
    "SessionServerScheme",
    "StatementRefused",
    "mount_sessions",
]

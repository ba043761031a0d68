"""The x402 `session` scheme for the official `x402` client: one line in an agent's client,

    client.register("eip155:*", SessionScheme(key, network="http://chain:8545"))

and an Allmende gateway's requests are paid from a channel in `Channels` that the agent's
own key opens (on the first payment, topped up when its deposit would not cover the next
request: `top_up_amount` says by how much, within the agent's `max_locked`) and that pays the
gateway. Each later request carries a cumulative voucher and the request's authorisation
(core/x402_session.py).

The channel outlives the session. `end()` ends a session (its last voucher goes to the
gateway, naming the session it ends; no transaction) and the next payment to the same
gateway begins a new one on the same channel, found in the `state` file or, without one, on
chain (the wallet's channels to that gateway, newest first, one not closing): a later session
of the same wallet costs no gas at all. `close()` closes the channel itself, to get the
unspent deposit back.

Two processes of one wallet never share a channel: cumulative vouchers, each counting only
its own process's requests, cannot pay from one. A channel whose live session is another's
and paid lately (its statement says `in_use`) is passed over, and a new one opened; a process
that loses a race to a channel (the gateway refuses its first payment: `channel_in_use`, as it
refuses any new session on a channel in use) takes a channel of its own at its next payment.

What the agent trusts: the chain (the contracts are checked at `network`, as `Agent` does)
and its own key. What it checks: every requirement names this deployment's payment token and
Channels contract (a gateway cannot point it at another contract); every charge on the
gateway's statement is one of its own paid requests, once, with its provider's signed
receipt, priced at most usage × the provider's offer on chain and at most the most it
authorised (`check_charge`). It signs vouchers only for the sum of the charges it checked,
so it pays at most its receipts; a statement that asks for more raises `Overcharged` and
nothing is signed. The gateway gives each session a credit of one request or so, as
providers give the gateways (the last answer is paid by the voucher `close` sends).

`close()` settles up and closes every channel: it asks the gateway, with its signed close
request and last voucher, to redeem, give the channel up and send the unspent deposit back
in one transaction of the gateway's (no transaction of the agent's, no close delay; checked
on chain). A gateway that does not closes nothing: the agent then asks the channel to close
on chain and sends the last voucher (the gateway redeems it at once, seeing the channel
close), and after the close delay `withdraw()` brings the unspent deposit back.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from x402.schemas import PaymentRequirements

from allmende.agent.client import agent_key
from allmende.chain import ChainClient, Contracts
from allmende.chain.errors import ChainError, ContractReverted
from allmende.chain.network import resolve_network
from allmende.core import SignedReceipt
from allmende.core.eip712 import sign_digest
from allmende.core.errors import InvalidInput, InvalidSignature
from allmende.core.vouchers import SignedVoucher, Voucher
from allmende.core.x402_session import (
    SCHEME,
    SESSION_MODEL,
    Charge,
    Overcharged,
    check_charge,
    close_headers,
    sign_session_payment,
    statement_headers,
)

log = logging.getLogger("allmende.agent.x402")
FIND_DEPTH = 64  # how many of the wallet's newest channels are looked at for one to reuse
DEPOSIT = 2_000_000  # 2 dUSD: what the first payment locks in a new channel
MAX_LOCKED = 20_000_000  # 20 dUSD: the most a top-up leaves unspent in the channel


def top_up_amount(deposit: int, unspent: int, need: int, *, first: int, max_locked: int) -> int:
    """How much a top-up adds to a channel that has taken `deposit` in all, holds `unspent`
    of it not yet paid or promised, and is `need` short of the next request's most.

    The rule: the channel doubles (the top-up is what it has taken so far, at least `first`),
    but never to more than `max_locked` unspent after the top-up; always at least `need`. The
    channel only runs short when the agent has spent its deposit, so the top-ups follow the
    spending: an agent that spends little stays at its first deposit, one that spends a lot
    tops up 2, 4, 8 … dUSD and then `max_locked` at a time, so its top-ups (52k gas each) come
    ever rarer instead of one every `first`. A request whose most alone passes `max_locked`
    cannot be covered within the cap: `InvalidInput`, nothing sent."""
    room = max_locked - unspent  # unspent + amount ≤ max_locked
    if need > room:
        raise InvalidInput(
            f"a request's most needs {need - room} units more locked in the channel than max_locked={max_locked}"
        )
    return max(need, min(max(deposit, first), room))


@dataclass
class Session:
    """One channel to one gateway, as the agent's own books have it, and its live session."""

    channel_id: bytes
    deposit: int
    statement: str  # the gateway's statement URL for this channel
    paid: int = 0  # Σ charges checked on the channel (all its sessions): what the vouchers pay
    seen: int = 0  # the statement's last sequence number read
    unsettled: dict[bytes, int] = field(default_factory=dict)  # nonce → most, paid requests not yet charged
    receipts: list[SignedReceipt] = field(default_factory=list)
    prepared: int = 0  # statements read by `prepare` (off the event loop) for payments not yet signed
    session_id: bytes | None = None  # the live session's window; None: the next payment begins one


class SessionScheme:
    """The official x402 client's SchemeNetworkClient for `session` (see the module doc)."""

    scheme = SCHEME

    def __init__(
        self,
        key: bytes | str | None = None,
        network: str | None = None,
        *,
        rpc: str | None = None,
        deposit: int = DEPOSIT,
        max_locked: int = MAX_LOCKED,
        http: httpx.Client | None = None,
        state: Path | None = None,
    ) -> None:
        """`deposit`: what the first payment locks in a new channel (units); `max_locked`: the
        most a top-up leaves unspent in it (`top_up_amount`): the agent's cap on what its
        channel holds beyond what it has spent."""
        if not 0 < deposit <= max_locked:
            raise InvalidInput(f"the deposit ({deposit}) must be positive and at most max_locked ({max_locked})")
        network = network or os.environ.get("ALLMENDE_NETWORK")
        if not network:
            raise InvalidInput("no network: pass network=URL (a chain's JSON-RPC or a gateway's) or ALLMENDE_NETWORK")
        self.key = agent_key(key)
        deployment = resolve_network(network, rpc)  # checked on chain: code, wiring, chain id
        self.contracts = Contracts(ChainClient(deployment.rpc_url, self.key), deployment)
        self.address = self.contracts.client.address
        self.network = f"eip155:{self.contracts.client.chain_id}"
        self.domain = self.contracts.channels.voucher_domain()
        self.receipt_domain = self.contracts.registry.receipt_domain()
        self.deposit = deposit
        self.max_locked = max_locked
        self.http = http or httpx.Client(timeout=30)
        self.state = state  # a JSON file that keeps the sessions across restarts (None: in memory)
        self.sessions: dict[str, Session] = {} if state is None or not state.exists() else load_sessions(state)
        self.closed: list[Session] = []  # closed by this process (their receipts stay countable)
        self._offers: dict[tuple[str, bytes], tuple[int, int]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ x402

    def create_payment_payload(
        self, requirements: PaymentRequirements, extensions: Any = None, context: Any = None
    ) -> dict[str, Any]:
        """The payment for one request: a voucher for every charge checked so far and this
        request's authorisation; opens or tops up the channel first where needed."""
        body_hash = bytes.fromhex(str((requirements.extra or {}).get("requestHash", "0x"))[2:])
        with self._lock:
            session, most = self._ready(requirements, read=False)
            nonce = os.urandom(32)
            session.unsettled[nonce] = most
            if session.session_id is None:
                session.session_id = os.urandom(32)
            self._save()  # before the payment leaves: a restart still knows this nonce
            payment = sign_session_payment(
                session.channel_id, session.session_id, session.paid, nonce, body_hash, self.domain, self.key
            )
        return payment.to_payload()

    def register_with(self, client: Any) -> None:
        """`client.register("eip155:*", self)`, and for the SDK's async `x402Client` also
        `prepare` as a before-payment hook: the SDK calls a scheme synchronously, so without
        it the chain work (the first payment's approve and open, top-ups) and the statement
        read would block the client's event loop while they run."""
        client.register("eip155:*", self)
        hook = getattr(client, "on_before_payment_creation", None)
        if hook is not None and inspect.iscoroutinefunction(getattr(client, "create_payment_payload", None)):
            hook(self.prepare)

    async def prepare(self, context: Any) -> None:
        """The SDK's before-payment hook (async clients): open or top up the channel and read
        the statement on a worker thread, so `create_payment_payload` on the loop only signs."""
        requirements = context.selected_requirements
        if getattr(requirements, "scheme", None) == SCHEME:
            await asyncio.to_thread(self._prepare, requirements)

    def _prepare(self, requirements: PaymentRequirements) -> None:
        with self._lock:
            session, _ = self._ready(requirements, read=True)
            session.prepared += 1

    def _ready(self, requirements: PaymentRequirements, read: bool) -> tuple[Session, int]:
        """The session for `requirements`, its statement read (unless `prepare` read it for
        this payment already) and its deposit covering the request's most. Nothing is sent
        unless the requirements name this chain, its payment token and its Channels."""
        extra = requirements.extra or {}
        if str(requirements.network) != self.network:
            raise InvalidInput(f"session payment asked on {requirements.network}, this agent's chain is {self.network}")
        if requirements.asset.lower() != self.contracts.stable.address.lower():
            raise InvalidInput(f"session payment asked in {requirements.asset}, not this network's payment token")
        if str(extra.get("channels", "")).lower() != self.contracts.channels.address.lower():
            raise InvalidInput("session payment asked into a contract that is not this network's Channels")
        most = int(requirements.amount)
        statement = str(extra.get("statement", ""))
        session = self._session(requirements.pay_to, statement, most)
        if read or not session.prepared:
            if self._in_use_by_another(self._read_statement(session) or {}, session):
                # another process of this wallet pays from this channel (it won a race to it,
                # or took it over after this one went quiet): this one takes a channel of its own
                log.info("channel 0x%s is in use by another session; taking another", session.channel_id.hex())
                self.closed.append(self.sessions.pop(requirements.pay_to.lower()))
                session = self._session(requirements.pay_to, statement, most)
                self._read_statement(session)
        else:
            session.prepared -= 1
        self._cover(session, most)
        return session, most

    def _save(self) -> None:
        if self.state is not None:
            save_sessions(self.state, self.sessions)

    # ------------------------------------------------------------ the books

    def _session(self, gateway: str, statement: str, most: int) -> Session:
        session = self.sessions.get(gateway.lower())
        if session is not None and session.session_id is None:  # a new session: is its channel still open?
            record = self.contracts.channels.channel(session.channel_id)
            if record.closes_at:  # released by the gateway (expired) or closed elsewhere
                self.closed.append(self.sessions.pop(gateway.lower()))
                session = None
            else:
                session.deposit = record.deposit
        if session is None:
            session = self._find_channel(gateway, statement)
        if session is None:
            if most > self.max_locked:
                raise InvalidInput(f"a request's most ({most}) passes max_locked ({self.max_locked})")
            deposit = max(self.deposit, most)
            self.contracts.stable.ensure_allowance(self.contracts.channels.address, deposit)
            channel_id = self.contracts.channels.open(gateway, deposit)
            session = Session(channel_id, deposit, statement.rstrip("/") + "/0x" + channel_id.hex())
        if self.sessions.get(gateway.lower()) is not session:
            self.sessions[gateway.lower()] = session
            self._save()
        return session

    def _find_channel(self, gateway: str, statement: str) -> Session | None:
        """This wallet's newest channel to `gateway` that is not closing (opened by an earlier
        session, another process, a lost state file), taken up where its vouchers stand: what
        the agent has paid on it is the highest voucher the gateway holds *signed by this key*
        (or, failing one, what was redeemed on chain, which this key signed too). Charges on
        it the agent never vouched for (an earlier session's last answers, if it ended without
        its last voucher) are not paid: this process cannot check that they were its own."""
        channels = self.contracts.channels
        count = channels.channel_nonce(self.address)
        for nonce in range(count - 1, max(-1, count - 1 - FIND_DEPTH), -1):
            channel_id = channels.channel_id_of(self.address, gateway, nonce)
            try:
                record = channels.channel(channel_id)
            except ChainError:  # that nonce's channel went to another address
                continue
            if record.closes_at:
                continue
            session = Session(channel_id, record.deposit, statement.rstrip("/") + "/0x" + channel_id.hex())
            header = self._statement(session, after=2**62)  # no lines: where the statement stands
            if self._in_use_by_another(header, session):
                continue  # another process of this wallet is paying from it
            session.seen = int(header.get("last_seq", 0))
            # no voucher of ours held there: what was redeemed on chain is what we paid
            session.paid = max(record.spent, self._held_voucher(header, channel_id))
            return session
        return None

    def _held_voucher(self, header: dict[str, Any], channel_id: bytes) -> int:
        """The cumulative amount of the voucher the gateway holds on `channel_id` if this key
        signed it (this process or another of the same wallet), else 0."""
        try:
            held = SignedVoucher(
                Voucher(channel_id, SESSION_MODEL, int(header.get("voucher", "0"))),
                bytes.fromhex(str(header.get("voucher_signature", "0x"))[2:]),
            )
            held.verify(self.domain, self.address)
        except (InvalidSignature, InvalidInput, ValueError):
            return 0
        return held.voucher.cumulative_amount

    def _cover(self, session: Session, most: int) -> None:
        """Top the channel up if what it owes, what is in flight and this request's most pass
        its deposit (the gateway refuses the request otherwise), by `top_up_amount`."""
        owed = session.paid + sum(session.unsettled.values())
        need = owed + most - session.deposit
        if need > 0:
            amount = top_up_amount(
                session.deposit, session.deposit - owed, need, first=self.deposit, max_locked=self.max_locked
            )
            self.contracts.stable.ensure_allowance(self.contracts.channels.address, amount)
            self.contracts.channels.top_up(session.channel_id, amount)
            session.deposit += amount

    def _statement(self, session: Session, after: int) -> dict[str, Any]:
        headers = statement_headers(session.channel_id, int(time.time()), self.domain, self.key)
        reply = self.http.get(session.statement, params={"after": after}, headers=headers)
        if reply.status_code != 200:
            raise InvalidInput(f"the gateway's session statement: HTTP {reply.status_code} {reply.text[:200]}")
        body: dict[str, Any] = reply.json()
        return body

    @staticmethod
    def _in_use_by_another(header: dict[str, Any], session: Session) -> bool:
        """Whether the statement shows another session live on the channel, paying lately."""
        ours = None if session.session_id is None else "0x" + session.session_id.hex()
        return bool(header.get("in_use")) and header.get("live_session") != ours

    def _read_statement(self, session: Session) -> dict[str, Any]:
        """Check the gateway's new charges and add them to what the vouchers pay; the statement.
        Not while another session is live on the channel: its charges are another process's
        (and this one is about to leave the channel, see `_ready`)."""
        statement = self._statement(session, session.seen)
        if self._in_use_by_another(statement, session):
            return statement
        taken = self._taken_up(statement, session)
        for line in statement.get("charges", []):
            charge = Charge.from_json(line)
            if taken and charge.nonce not in session.unsettled:
                # the other process's charge: its vouchers, which the held one counts, paid it
                session.seen = max(session.seen, int(line.get("seq", session.seen)))
                continue
            receipt = charge.receipt.receipt
            price_in, price_out = self._offer(receipt.provider, receipt.model_id)
            amount = check_charge(charge, session.unsettled.get(charge.nonce), self.receipt_domain, price_in, price_out)
            del session.unsettled[charge.nonce]
            session.paid += amount
            session.receipts.append(charge.receipt)
            session.seen = max(session.seen, int(line.get("seq", session.seen)))
        return statement

    def _taken_up(self, statement: dict[str, Any], session: Session) -> bool:
        """Whether another process of this wallet paid on the channel since this one last
        read it (it took the channel up while this one was quiet: its session is live, or the
        gateway holds a voucher of this key above what this process paid). If so, this
        process's books move to where the wallet's vouchers stand: it has paid the held
        voucher (every charge the other process checked), its own requests' charges are still
        checked and paid, the other's are not its to check; and its own session has ended (its
        next payment begins one). Before, the other's charges read as charges for no request of
        this agent: `Overcharged`, and a wallet that paid every receipt stopped paying."""
        ours = None if session.session_id is None else "0x" + session.session_id.hex()
        live = statement.get("live_session")
        held = self._held_voucher(statement, session.channel_id)
        if live in (None, ours) and held <= session.paid:
            return False
        log.info("channel 0x%s was taken up by another process of this wallet; paying on from its voucher (%d)",
                 session.channel_id.hex(), held)  # fmt: skip
        session.paid = max(session.paid, held)
        if live != ours:
            session.session_id = None
        return True

    def _offer(self, provider: str, model_id: bytes) -> tuple[int, int]:
        key = (provider.lower(), model_id)
        if key not in self._offers:
            offer = self.contracts.registry.offer(provider, model_id)
            self._offers[key] = (offer.price_in, offer.price_out)
        return self._offers[key]

    # ------------------------------------------------------------ the wallet

    def receipts(self) -> list[SignedReceipt]:
        """Every receipt the agent checked and paid for, all sessions."""
        with self._lock:
            return [r for s in [*self.closed, *self.sessions.values()] for r in s.receipts]

    def paid(self) -> int:
        """What the agent's vouchers pay, all sessions: the sum of its checked receipts."""
        with self._lock:
            return sum(s.paid for s in [*self.closed, *self.sessions.values()])

    def end(self) -> int:
        """End the live session with every gateway: its last charges checked and the voucher
        for them sent (the gateway keeps it and redeems it with a later batch). No
        transaction: the channel stays open and the next payment begins a new session on it.
        Returns what the vouchers pay on all channels."""
        with self._lock:
            for session in self.sessions.values():
                self._read_statement(session)
                self._send_voucher(session, ends=session.session_id)
                session.session_id = None
            self._save()
            return sum(s.paid for s in self.sessions.values())

    def close(self) -> list[bytes]:
        """Close every channel to get its unspent deposit back: its last charges checked, then
        the gateway asked to close it with the voucher for them (a cooperative close: the
        gateway redeems it, gives the channel up and sends the unspent deposit back in one
        transaction; no transaction of the agent's and no close delay, checked on chain).
        Should the gateway not do so, the agent closes on chain: the channel asked to close,
        then the voucher sent (the gateway, seeing the channel close, redeems it at once), and
        after the close delay `withdraw()` brings the rest back. Returns the channel ids."""
        closed = []
        with self._lock:
            for session in self.sessions.values():
                self._read_statement(session)
                if not self._close_with_gateway(session):
                    self.contracts.channels.request_close(session.channel_id)
                    self._send_voucher(session)
                closed.append(session.channel_id)
            self.closed += self.sessions.values()  # a closing channel takes no more payments: the next opens anew
            self.sessions.clear()
            self._save()
        return closed

    def _close_with_gateway(self, session: Session) -> bool:
        """Ask the gateway for a cooperative close; True once the chain shows the channel
        closed with its unspent deposit paid back (whatever the gateway answered)."""
        voucher: dict[str, str] = {}
        if session.paid:
            signed = sign_digest(Voucher(session.channel_id, SESSION_MODEL, session.paid).digest(self.domain), self.key)
            voucher = {"cumulative": str(session.paid), "signature": "0x" + signed.hex()}
        headers = close_headers(session.channel_id, int(time.time()), self.domain, self.key)
        try:
            reply = self.http.post(session.statement + "/close", json=voucher, headers=headers)
        except httpx.HTTPError as exc:
            log.info("cooperative close of 0x%s failed: %s; closing on chain", session.channel_id.hex(), exc)
            return False
        record = self.contracts.channels.channel(session.channel_id)
        if reply.status_code != 200 or not record.closes_at or record.deposit != record.spent:
            log.info("the gateway did not close 0x%s (HTTP %d); closing on chain", session.channel_id.hex(),
                     reply.status_code)  # fmt: skip
            return False
        if record.spent > session.paid:
            raise Overcharged(f"the closed channel paid {record.spent}, the agent's vouchers {session.paid}")
        return True

    def _send_voucher(self, session: Session, ends: bytes | None = None) -> None:
        """The voucher for what the agent checked; `ends`: the session it ends at the gateway
        (the channel is then free for this wallet's next session, in any process)."""
        if not session.paid and ends is None:
            return
        voucher = Voucher(session.channel_id, SESSION_MODEL, session.paid)
        signature = sign_digest(voucher.digest(self.domain), self.key)
        body = {"cumulative": str(session.paid), "signature": "0x" + signature.hex()}
        if ends is not None:
            body["session"] = "0x" + ends.hex()
        reply = self.http.post(session.statement + "/voucher", json=body)
        if reply.status_code != 200:
            raise InvalidInput(f"the gateway refused the last voucher: {reply.text[:300]}")

    def withdraw(self, channel_ids: list[bytes]) -> int:
        """Take back what is left of closed channels after their close delay; the units (a
        channel closed cooperatively paid its rest back at its close: nothing to take)."""
        token = self.contracts.stable
        before = token.balance_of(self.address)
        for channel_id in channel_ids:
            record = self.contracts.channels.channel(channel_id)
            if record.closes_at and record.deposit == record.spent:
                continue
            try:
                self.contracts.channels.withdraw(channel_id)
            except ContractReverted as exc:
                raise InvalidInput(f"channel 0x{channel_id.hex()} cannot be withdrawn yet: {exc.reason}") from None
        return int(token.balance_of(self.address) - before)


def save_sessions(path: Path, sessions: dict[str, Session]) -> None:
    """The sessions as JSON, written whole and renamed into place (a crash leaves the old file)."""
    data = {
        gateway: {
            "channel_id": "0x" + s.channel_id.hex(),
            "deposit": str(s.deposit),
            "statement": s.statement,
            "paid": str(s.paid),
            "seen": s.seen,
            "unsettled": {"0x" + n.hex(): str(m) for n, m in s.unsettled.items()},
            "receipts": [r.to_json() for r in s.receipts],
            "session_id": None if s.session_id is None else "0x" + s.session_id.hex(),
        }
        for gateway, s in sessions.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def load_sessions(path: Path) -> dict[str, Session]:
    data = json.loads(path.read_text())
    return {
        gateway: Session(
            bytes.fromhex(s["channel_id"][2:]),
            int(s["deposit"]),
            s["statement"],
            int(s["paid"]),
            int(s["seen"]),
            {bytes.fromhex(n[2:]): int(m) for n, m in s["unsettled"].items()},
            [SignedReceipt.from_json(r) for r in s["receipts"]],
            session_id=bytes.fromhex(s["session_id"][2:]) if s.get("session_id") else None,
        )
        for gateway, s in data.items()
    }


__all__ = ["Overcharged", "Session", "SessionScheme", "top_up_amount"]

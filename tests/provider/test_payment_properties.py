"""The provider's payment logic over random interleavings (issue 42), in process.

Hypothesis drives the real ProviderService, PaymentGate, Settlement, CloseWatcher and
ProviderStore (SQLite) against a model of the Channels contract with its own clock:
requests and streams cut at random points, vouchers of any size a payer may sign (none,
some, all it owes), redeems, closes, withdrawals, time moving on, and the provider going
down and coming back (a restart: new gate, watcher and settlement on the same store). The
node's loops are modelled as one watcher scan and one settlement pass after each step of
time while it is online. It asserts the README's bounds after every step:

- per channel, unpaid work (earned − the highest voucher) never exceeds the credit limit,
  and everything a payer received is in `earned` (cut streams included);
- no voucher is lost while the provider was online during its channel's close window: a
  voucher stored before a pass that ran before the close time is redeemed in full.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from allmende.api.client import PayerKey, ProviderInfo, build_envelope
from allmende.chain.bindings import ChannelRecord
from allmende.chain.errors import ContractReverted
from allmende.core import Domain, SignedReceipt, SignedVoucher, Voucher, request_cost, sign_voucher
from allmende.core.envelope import public_key_bytes
from allmende.engine.base import TokenEvent
from allmende.provider.errors import BadVoucher, PaymentRequired
from allmende.provider.payments import CreditPolicy, PaymentGate
from allmende.provider.service import ProviderService, ServedModel
from allmende.provider.settlement import Settlement, SettlementPolicy
from allmende.provider.store import ProviderStore
from allmende.provider.watch import ChainClock, CloseWatcher
from tests.gateway.fakes import MODEL_ID, FakeEngine

CHAIN_ID = 31337
VOUCHERS = Domain(CHAIN_ID, "0x" + "c1" * 20)
RECEIPTS = Domain(CHAIN_ID, "0x" + "c2" * 20)
PRICE_IN, PRICE_OUT = 200_000, 600_000
CREDIT_LIMIT = 300
DEPOSIT = 3_000
CLOSE_DELAY = 600  # the model's minimum close delay (the devnet's is 3,600 s)
POLICY = CreditPolicy(credit_limit=CREDIT_LIMIT, close_margin=120, ttl=30, grace=300, watch_interval=2)
PAYER_KEYS = [bytes([i + 1]) * 32 for i in range(3)]
PROVIDER_KEY = b"\x77" * 32
PROVIDER = Account.from_key(PROVIDER_KEY).address
X25519 = X25519PrivateKey.from_private_bytes(b"\x55" * 32)
INFO = ProviderInfo(PROVIDER, public_key_bytes(X25519), CHAIN_ID, [], {})


@dataclass
class ChainChannel:
    payer: str
    deposit: int
    spent: int = 0
    closes_at: int = 0
    close_requested_at: int = 0


@dataclass
class Chain:
    """The Channels contract as far as the provider uses it, with a clock and a block count."""

    time: int = 1_000_000
    block: int = 1
    channels: dict[bytes, ChainChannel] = field(default_factory=dict)
    redeemed_: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    closes: list[tuple[int, bytes, int]] = field(default_factory=list)  # (block, channel, closes_at)
    contract: object = None

    @property
    def client(self) -> Chain:
        return self  # the watcher asks the binding's client for blocks and events

    def mine(self) -> None:
        self.block += 1

    # ---- ChainClient
    def rpc(self, thunk: Any) -> Any:
        return thunk()

    @property
    def w3(self) -> Any:
        chain = self

        class Eth:
            @staticmethod
            def get_block(_: str) -> dict[str, int]:
                return {"number": chain.block, "timestamp": chain.time}

        return type("W3", (), {"eth": Eth})()

    def events(self, contract: object, name: str, start: int, end: int) -> list[dict[str, Any]]:
        assert name == "CloseRequested"
        return [{"args": {"channel_id": c, "closes_at": t}} for b, c, t in self.closes if start <= b <= end]

    # ---- Channels
    def channel(self, channel_id: bytes) -> ChannelRecord:
        if channel_id not in self.channels:
            raise ContractReverted("channels: unknown channel")
        c = self.channels[channel_id]
        return ChannelRecord(c.payer, PROVIDER, c.deposit, c.spent, c.closes_at, 0)

    def redeemed(self, channel_id: bytes, model_id: bytes) -> int:
        return self.redeemed_.get((channel_id, model_id), 0)

    def redeem(self, vouchers: list[SignedVoucher]) -> Any:
        spent: dict[bytes, int] = {}
        for signed in vouchers:  # all or nothing, as the contract
            v = signed.voucher
            c = self.channels[v.channel_id]
            if c.closes_at and self.time >= c.closes_at:
                raise ContractReverted("channels: channel closed")
            amount = v.cumulative_amount - self.redeemed(v.channel_id, v.model_id)
            if amount <= 0:
                raise ContractReverted("channels: voucher not above last")
            spent[v.channel_id] = spent.get(v.channel_id, c.spent) + amount
            if spent[v.channel_id] > c.deposit:
                raise ContractReverted("channels: over deposit")
        for signed in vouchers:
            v = signed.voucher
            self.redeemed_[(v.channel_id, v.model_id)] = v.cumulative_amount
        for channel_id, total in spent.items():
            self.channels[channel_id].spent = total
        self.mine()
        return type("Sent", (), {"tx_hash": f"0x{self.block:064x}"})()


class ProviderPayments(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.chain = Chain()
        self.store = ProviderStore(Path(self.dir.name) / "provider.db", now=self.wall)
        self.online = True
        self.ids: list[bytes] = []
        self.payers: dict[bytes, PayerKey] = {}
        self.received: dict[bytes, int] = {}  # channel → cost of what its payer received
        # channel → (highest voucher, chain time and step when stored); steps order events
        # that happen in the same second
        self.stored_at: dict[bytes, tuple[int, int, int]] = {}
        self.passes: list[tuple[int, int]] = []  # (chain time, step) of settlement passes while online
        self.closed_at_step: dict[bytes, int] = {}
        self.steps = itertools.count()
        self.counter = itertools.count()
        self.start()

    def wall(self) -> float:
        return float(self.chain.time)  # the model's wall clock is the chain's

    def start(self) -> None:
        """A (re)started node on the same store: nothing of the previous run's memory."""
        self.clock = ChainClock(self.wall)
        self.watcher = CloseWatcher(self.store, self.chain, self.clock, wall=self.wall)  # type: ignore[arg-type]
        self.gate = PaymentGate(
            self.store, VOUCHERS, PROVIDER, self.chain.channel, now=self.wall, policy=POLICY,
            clock=self.clock, watcher=self.watcher,
        )  # fmt: skip
        engine = FakeEngine()
        served = {MODEL_ID: ServedModel(engine, PRICE_IN, PRICE_OUT)}  # type: ignore[arg-type]
        self.service = ProviderService(PROVIDER_KEY, X25519, served, self.store, self.gate, RECEIPTS)
        policy = SettlementPolicy(threshold=10**9, max_age=10**9)  # only closes make redeems due
        self.settlement = Settlement(self.store, self.chain, policy, self.clock)  # type: ignore[arg-type]
        self.watcher.tick()  # the node's watch loop scans at once when it starts

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    @initialize(n=st.integers(1, 3))
    def open_channels(self, n: int) -> None:
        for key in PAYER_KEYS[:n]:
            channel_id = os.urandom(32)
            payer = PayerKey(key, VOUCHERS)
            self.chain.channels[channel_id] = ChainChannel(payer.address, DEPOSIT)
            self.chain.mine()
            self.ids.append(channel_id)
            self.payers[channel_id] = payer
            self.received[channel_id] = 0

    # ------------------------------------------------------------------ payers

    @rule(
        which=st.integers(0, 2),
        pay=st.sampled_from([None, 0.0, 0.5, 1.0, 1.0, 2.0]),
        max_tokens=st.integers(1, 40),
        stream=st.booleans(),
        cut=st.integers(0, 40),
    )
    def request(self, which: int, pay: float | None, max_tokens: int, stream: bool, cut: int) -> None:
        """A request with a voucher for a share of what the provider earned so far (2.0: an
        overpaying one, capped at the deposit); a stream may be cut after `cut` deltas."""
        if not self.online:
            return
        channel_id = self.ids[which % len(self.ids)]
        voucher = None
        if pay is not None:
            earned = sum(r.earned for r in self.store.ledger(channel_id))
            amount = min(DEPOSIT, int(earned * pay))
            voucher = sign_voucher(Voucher(channel_id, MODEL_ID, amount), VOUCHERS, self.payers[channel_id].key)
        body = {"messages": [{"role": "user", "content": f"q{next(self.counter)}"}], "max_tokens": max_tokens}
        if stream:
            body["stream"] = True
        _, envelope, sealer = build_envelope(INFO, MODEL_ID, "chat", body, self.payers[channel_id], channel_id, voucher)
        req = self.service.open(envelope)
        before = {(r.model_id): r.cumulative for r in self.store.ledger(channel_id)}.get(MODEL_ID, 0)
        try:
            self.service.admit(req)
        except (PaymentRequired, BadVoucher):  # no credit left, closing; a voucher over the deposit
            pass
        else:
            received = asyncio.run(self._serve(req, sealer, cut))
            self.received[channel_id] += received
        after = {(r.model_id): r.cumulative for r in self.store.ledger(channel_id)}.get(MODEL_ID, 0)
        if after > before:
            self.stored_at[channel_id] = (after, self.chain.time, next(self.steps))

    async def _serve(self, req: Any, sealer: Any, cut: int) -> int:
        """Serve as the HTTP layer does; the cost of what the payer received."""
        if not req.stream:
            try:
                sealed = await self.service.run(req)
            finally:
                self.service.release(req)
            return int(json.loads(sealer.open(sealed, 0))["receipt"]["amount"])
        chunks = self.service.stream(req)
        seq, tokens = 0, 0
        try:
            async for sealed in chunks:
                data = json.loads(sealer.open(sealed, seq))
                seq += 1
                if data.get("done"):
                    return int(data["receipt"]["amount"])
                tokens += data["tokens"]
                if tokens >= cut:
                    break  # the payer walks away
        finally:
            await chunks.aclose()
            self.service.end_stream(req)  # what the HTTP layer's finally does
        return request_cost(req.progress.prompt_tokens, tokens, PRICE_IN, PRICE_OUT)

    @rule(which=st.integers(0, 2), max_tokens=st.integers(1, 40))
    def request_paying_all(self, which: int, max_tokens: int) -> None:
        """The usual request: a voucher for everything earned so far."""
        self.request(which, 1.0, max_tokens, False, 0)

    @rule(which=st.integers(0, 2))
    def close(self, which: int) -> None:
        channel_id = self.ids[which % len(self.ids)]
        c = self.chain.channels[channel_id]
        if c.closes_at:
            return
        self.chain.mine()
        c.closes_at, c.close_requested_at = self.chain.time + CLOSE_DELAY, self.chain.time
        self.closed_at_step[channel_id] = next(self.steps)
        self.chain.closes.append((self.chain.block, channel_id, c.closes_at))

    @rule(which=st.integers(0, 2))
    def withdraw(self, which: int) -> None:
        c = self.chain.channels[self.ids[which % len(self.ids)]]
        if c.closes_at and self.chain.time >= c.closes_at and c.deposit > c.spent:
            c.deposit = c.spent
            self.chain.mine()

    # ---------------------------------------------------------- time, provider

    @rule(seconds=st.sampled_from([2, 30, 150, 400]))
    def time_passes(self, seconds: int) -> None:
        """Time moves on; an online node scans for closes and runs a settlement pass."""
        self.chain.time += seconds
        if not self.online:
            return
        self.watcher.tick()
        if self.settlement.closing_due():
            self.settlement.tick()
        self.passes.append((self.chain.time, next(self.steps)))

    @rule()
    def provider_goes_down(self) -> None:
        self.online = False

    @rule()
    def provider_comes_back(self) -> None:
        if not self.online:
            self.online = True
            self.start()

    # -------------------------------------------------------------- invariants

    @invariant()
    def unpaid_work_stays_within_the_credit_limit(self) -> None:
        for channel_id in self.ids:
            ledger = self.store.ledger(channel_id)
            earned = sum(r.earned for r in ledger)
            paid = sum(r.cumulative for r in ledger)
            assert earned - paid <= CREDIT_LIMIT, (earned, paid)
            assert self.received[channel_id] <= earned, "a payer received work that was not billed"
            assert self.gate.reserved(channel_id) == 0

    @invariant()
    def no_voucher_is_lost_while_the_provider_was_online_in_the_close_window(self) -> None:
        for channel_id, (cumulative, stored, stored_step) in self.stored_at.items():
            c = self.chain.channels[channel_id]
            if not c.closes_at or self.chain.time < c.closes_at:
                continue
            after = max(stored_step, self.closed_at_step[channel_id])
            if any(step > after and t < c.closes_at for t, step in self.passes):
                assert self.chain.redeemed(channel_id, MODEL_ID) >= cumulative, (
                    f"voucher {cumulative} stored at {stored} lost: close requested at {c.close_requested_at}, "
                    f"closed at {c.closes_at}, passes {self.passes}"
                )


ProviderPayments.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestProviderPayments = ProviderPayments.TestCase


class MidCharacterEngine(FakeEngine):
    """Generates one token whose text is not complete yet (a character split over tokens), then
    waits for ever: the moment a prompt has been processed but no text went out."""

    def __init__(self) -> None:
        super().__init__()
        self.generated = asyncio.Event()

    async def generate(self, prompt_ids: list[int], params: Any) -> AsyncIterator[TokenEvent]:
        yield TokenEvent("", 195, None, None, None)
        self.generated.set()
        await asyncio.Event().wait()


def test_payer_cutting_every_stream_before_its_first_delta_still_pays_the_prompts(tmp_path: Path) -> None:
    # Prepare: a provider whose engine has processed the prompt but sent no text
    chain = Chain()
    channel_id = os.urandom(32)
    payer = PayerKey(PAYER_KEYS[0], VOUCHERS)
    chain.channels[channel_id] = ChainChannel(payer.address, DEPOSIT)
    store = ProviderStore(tmp_path / "provider.db")
    gate = PaymentGate(store, VOUCHERS, PROVIDER, chain.channel, policy=POLICY)
    engine = MidCharacterEngine()
    served = {MODEL_ID: ServedModel(engine, PRICE_IN, PRICE_OUT)}  # type: ignore[arg-type]
    service = ProviderService(PROVIDER_KEY, X25519, served, store, gate, RECEIPTS)
    body = {"messages": [{"role": "user", "content": "a long prompt " * 8}], "max_tokens": 8, "stream": True}
    _, envelope, _ = build_envelope(INFO, MODEL_ID, "chat", body, payer, channel_id, None)
    req = service.open(envelope)
    service.admit(req)

    # Execute: the client goes away (the HTTP layer's task is cancelled) before any delta
    async def cut() -> None:
        chunks = service.stream(req)
        first = asyncio.ensure_future(chunks.__anext__())
        await engine.generated.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        service.end_stream(req)

    asyncio.run(cut())

    # Assert: the prompt is billed (no tokens went out), with a signed receipt
    (raw,) = store.receipts(channel_id)
    receipt = SignedReceipt.from_json(json.loads(raw)).receipt
    assert receipt.tokens_out == 0 and receipt.tokens_in == req.progress.prompt_tokens > 0
    assert receipt.amount == request_cost(receipt.tokens_in, 0, PRICE_IN, PRICE_OUT) > 0
    assert sum(r.earned for r in store.ledger(channel_id)) == receipt.amount
    assert gate.reserved(channel_id) == 0
    store.close()

"""A channel and a voucher on every stage call: a paid stage admits a call under its own
credit rule (`provider.payments.PaymentGate`, the rule of whole-model requests), not on the
strength of vouchers a gateway may deliver afterwards. Adversaries: no channel, a channel
whose deposit is used up, a voucher replayed or lowered, another signer, a call replayed; the
honest side: a session through three paid stages leaves each provider holding exactly what
its receipts say, which it redeems on chain, and a replacement stage provider has its
reservation before its replay arrives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from eth_account import Account

from allmende.api.stages import FORWARD_PATH, MEDIA_TYPE
from allmende.chain import Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.core.receipts import SignedReceipt
from allmende.core.stages import StageLayout, StagePrice
from allmende.core.vouchers import SignedVoucher, Voucher, sign_voucher
from allmende.engine import Engine, SamplingParams, collect
from allmende.engine.stages import StageEngine
from allmende.payer.stage_payer import SessionPayer
from allmende.payer.stages import StageSession
from allmende.provider.settlement import Settlement
from tests.conftest import contracts_for
from tests.stages.paid import PaidStage, Wire, funded, gateway_payments, paid_stage, run_paid, sealed_call

ROWS = 4  # positions per call in the adversary tests: 4 units at 1 a position
PRICES = [StagePrice(2), StagePrice(3), StagePrice(4, 50)]
MAX_TOKENS = 6


@pytest.fixture
def admin(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> Contracts:
    return contracts_for(anvil, deployment, accounts[0])


@pytest.fixture
def tight(
    anvil: Anvil, deployment: Deployment, admin: Contracts, stages3: list[StageEngine], tmp_path: Path
) -> PaidStage:
    """The first stage at 1 unit a position, trusting a payer with at most one call's cost unpaid."""
    return paid_stage(anvil, deployment, admin, stages3[0], StagePrice(1), "http://tight", tmp_path, credit_limit=ROWS)


def post(stage: PaidStage, body: bytes) -> tuple[int, str]:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=stage.transport(), base_url=stage.url) as client:
            return await client.post(FORWARD_PATH, content=body, headers={"content-type": MEDIA_TYPE})

    reply = asyncio.run(run())
    return reply.status_code, "ok" if reply.status_code == 200 else reply.json()["error"]["code"]


def test_stage_calls_without_a_valid_voucher_or_deposit_are_refused(
    anvil: Anvil, deployment: Deployment, admin: Contracts, tight: PaidStage, chat_ids: list[list[int]]
) -> None:
    ids = np.asarray(chat_ids[0], dtype=np.int64)
    payer_key, payer = funded(anvil, deployment, admin, stable=10**6)
    payer.stable.approve(payer.channels.address)
    channel = payer.channels.open(tight.address, 100)
    small = payer.channels.open(tight.address, ROWS + 1)  # room for one call, not two
    domain = tight.gate.domain
    stage_id = tight.engine.spec.stage_id

    def voucher(amount: int, key: bytes = payer_key, on: bytes = channel) -> SignedVoucher:
        return sign_voucher(Voucher(on, stage_id, amount), domain, key)

    def call(
        session: str, n: int, on: bytes = channel, v: SignedVoucher | None = None, key: bytes = payer_key
    ) -> bytes:
        return sealed_call(tight, key, on, session, n * ROWS, ids[n * ROWS : (n + 1) * ROWS], v)[0]

    first, second = call("s", 0), call("s", 1, v=voucher(ROWS))
    outcomes = {
        "no-channel": post(tight, call("x", 0, on=bytes(32))),
        "signed-by-another-key": post(tight, call("x", 0, key=bytes(Account.create().key))),
        "first-call-within-the-credit-limit": post(tight, first),
        "second-call-without-a-voucher": post(tight, call("s", 1)),
        "second-call-with-the-voucher-for-the-first": post(tight, second),
        "replayed-call": post(tight, second),
        "replayed-voucher": post(tight, call("s", 2, v=voucher(ROWS))),
        "lowered-voucher": post(tight, call("s", 2, v=voucher(2 * ROWS - 1))),
        "voucher-signed-by-another-key": post(tight, call("s", 2, v=voucher(2 * ROWS, bytes(Account.create().key)))),
        "voucher-beyond-the-deposit": post(tight, call("s", 2, v=voucher(101))),
        "third-call-with-the-voucher-for-both": post(tight, call("s", 2, v=voucher(2 * ROWS))),
        "small-channel-first-call": post(tight, call("t", 0, on=small)),
        "small-channel-deposit-used-up": post(tight, call("t", 1, on=small, v=voucher(ROWS, on=small))),
    }
    tight.engine.close("s")
    tight.engine.close("t")

    assert outcomes == {
        "no-channel": (402, "payment_required"),
        "signed-by-another-key": (401, "payer_not_authenticated"),
        "first-call-within-the-credit-limit": (200, "ok"),
        "second-call-without-a-voucher": (402, "payment_required"),
        "second-call-with-the-voucher-for-the-first": (200, "ok"),
        "replayed-call": (409, "replayed_request"),
        "replayed-voucher": (402, "payment_required"),
        "lowered-voucher": (402, "payment_required"),
        "voucher-signed-by-another-key": (402, "bad_voucher"),
        "voucher-beyond-the-deposit": (402, "bad_voucher"),
        "third-call-with-the-voucher-for-both": (200, "ok"),
        "small-channel-first-call": (200, "ok"),
        "small-channel-deposit-used-up": (402, "payment_required"),
    }
    assert tight.earned(channel) == 3 * ROWS and tight.earned(small) == ROWS  # refused calls earned nothing
    held = {row.channel_id: row.cumulative for row in tight.store.ledger(channel) + tight.store.ledger(small)}
    assert held == {channel: 2 * ROWS, small: ROWS}  # the lowered and foreign vouchers were not kept


def receipts_of(stage: PaidStage, channel: bytes) -> list[SignedReceipt]:
    return [SignedReceipt.from_json(json.loads(r)) for r in stage.store.receipts(channel)]


def test_each_stage_provider_redeems_exactly_what_its_receipts_say(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    whole: Engine,
    stages3: list[StageEngine],
    chat_ids: list[list[int]],
    tmp_path: Path,
) -> None:
    paid = [
        paid_stage(anvil, deployment, admin, e, PRICES[i], f"http://stage{i}", tmp_path) for i, e in enumerate(stages3)
    ]
    prompt = chat_ids[1]
    payments = gateway_payments(anvil, deployment, admin, tmp_path, 10**6)
    payer = SessionPayer(payments, lambda _: 1_000_000, len(prompt) + MAX_TOKENS, MAX_TOKENS, None)

    tokens, session = asyncio.run(run_paid(paid, payer, prompt, MAX_TOKENS))
    for stage in paid:
        Settlement(stage.store, stage.contracts.channels).redeem(force=True)

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    assert tokens == asyncio.run(collect(whole.generate(prompt, params), len(prompt))).token_ids
    positions = len(prompt) + MAX_TOKENS - 1
    expected = [2 * positions, 3 * positions, 4 * positions + 50 * MAX_TOKENS]
    for stage, owed in zip(paid, expected, strict=True):
        stage_id = stage.engine.spec.stage_id
        channel = payer.holds[stage.address].channel
        receipts = receipts_of(stage, channel)
        assert len(receipts) == MAX_TOKENS  # one call per token, each admitted with its payment
        assert sum(r.receipt.amount for r in receipts) == owed == session.owed_by_stage[(stage.address, stage_id)]
        assert stage.earned(channel) == owed
        assert admin.channels.redeemed(channel, stage_id) == owed  # on chain: exactly the receipts, no more
        assert payments.store.owed(channel, stage_id)[0] == owed
    assert all(payments.in_flight(h.channel) == 0 for h in payer.holds.values())  # every reservation ended


def test_a_replacement_stage_provider_has_its_reservation_before_its_replay(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    whole: Engine,
    stages3: list[StageEngine],
    layout3: StageLayout,
    chat_ids: list[list[int]],
    tmp_path: Path,
) -> None:
    paid = [
        paid_stage(anvil, deployment, admin, e, PRICES[i], f"http://stage{i}", tmp_path) for i, e in enumerate(stages3)
    ]
    # the same weights as the middle stage, dearer: chosen only when the middle one fails
    spare = paid_stage(anvil, deployment, admin, stages3[1], StagePrice(5), "http://spare1", tmp_path)
    prompt = chat_ids[0]
    payments = gateway_payments(anvil, deployment, admin, tmp_path, 10**6)
    payer = SessionPayer(payments, lambda _: 1_000_000, len(prompt) + MAX_TOKENS, MAX_TOKENS, None)
    wire = Wire({s.url: s.transport() for s in [*paid, spare]})

    def reserved_at_the_spare() -> tuple[bytes | None, int]:
        known = payments.store.channel(spare.address)
        return (None, 0) if known is None else (known[0], payments.in_flight(known[0]))

    wire.on_call[spare.url] = reserved_at_the_spare

    def lose_the_middle_session(session: StageSession, tokens: list[int]) -> None:
        if len(tokens) == 3:  # the middle stage's cache is gone (as when its process restarts): it answers 409
            stages3[1].close(session.session)

    offers = [s.offer() for s in [*paid, spare]]
    tokens, session = asyncio.run(
        run_paid([*paid, spare], payer, prompt, MAX_TOKENS, wire, offers, lose_the_middle_session)
    )

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    assert tokens == asyncio.run(collect(whole.generate(prompt, params), len(prompt))).token_ids
    assert session.hops[1].replaced == 1 and session.hops[1].offer.url == spare.url
    (channel, reserved), *later = wire.before[spare.url]
    # the channel to the spare was open, and the most it can earn in the session reserved, before its replay
    assert channel is not None and reserved == 5 * (len(prompt) + MAX_TOKENS)
    receipts = receipts_of(spare, channel)
    assert receipts[0].receipt.tokens_in == len(prompt) + 3  # every position the middle stage had seen
    assert len(receipts) == 1 + len(later)
    owed = payments.store.owed(channel, layout3.stages[1].stage_id)[0]
    assert sum(r.receipt.amount for r in receipts) == spare.earned(channel) == owed
    assert spare.store.ledger(channel)[0].cumulative == owed  # its last voucher pays all of it

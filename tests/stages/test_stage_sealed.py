"""Sealed activations per hop: every call of a paid chain travels encrypted to its stage
provider's X25519 key and its answer comes back encrypted, so what crosses between hops
(captured here byte for byte) holds none of the activations, the session, the tokens drawn,
the payments or the receipts; the receipts still bind the plaintext activations. A sealed
call that was altered, or sealed to another provider's key or address, is refused with a
JSON error before any payment or computation."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from allmende.api.stages import (
    CLOSE_PATH,
    FORWARD_PATH,
    MEDIA_TYPE,
    ForwardRequest,
    activation_hash,
    is_sealed,
    seal_call,
)
from allmende.chain import Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.core.envelope import public_key_bytes
from allmende.core.stages import StagePrice
from allmende.engine import Engine, SamplingParams, collect
from allmende.engine.stages import StageEngine
from allmende.payer.stage_payer import SessionPayer
from tests.conftest import contracts_for
from tests.stages.paid import PaidStage, Wire, funded, gateway_payments, paid_stage, run_paid, sealed_call

MAX_TOKENS = 6
PRICES = [StagePrice(2), StagePrice(3), StagePrice(4, 50)]
DEPOSIT = 10**6


@pytest.fixture
def admin(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> Contracts:
    return contracts_for(anvil, deployment, accounts[0])


@pytest.fixture
def paid3(
    anvil: Anvil, deployment: Deployment, admin: Contracts, stages3: list[StageEngine], tmp_path: Path
) -> list[PaidStage]:
    return [
        paid_stage(anvil, deployment, admin, engine, PRICES[i], f"http://stage{i}", tmp_path)
        for i, engine in enumerate(stages3)
    ]


def test_a_paid_chain_seals_every_hop_and_its_receipts_bind_the_plaintext(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    whole: Engine,
    paid3: list[PaidStage],
    chat_ids: list[list[int]],
    tmp_path: Path,
) -> None:
    prompt = chat_ids[0]
    payments = gateway_payments(anvil, deployment, admin, tmp_path, DEPOSIT)
    payer = SessionPayer(payments, lambda _: 1_000_000, len(prompt) + MAX_TOKENS, MAX_TOKENS, None)
    wire = Wire({s.url: s.transport() for s in paid3})

    tokens, session = asyncio.run(run_paid(paid3, payer, prompt, MAX_TOKENS, wire))

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    assert tokens == asyncio.run(collect(whole.generate(prompt, params), len(prompt))).token_ids
    calls = [body for _, path, body in wire.sent if path.endswith("/forward")]
    assert len(calls) == 3 * MAX_TOKENS and all(is_sealed(body) for body in calls)
    closes = [body for _, path, body in wire.sent if path.endswith("/close")]
    assert len(closes) == 3 and all(b'"sealed":"close"' in body for body in closes)
    assert not any(s.engine.holds(session.session) for s in paid3)  # the sealed closes freed every cache
    seen = wire.bytes_seen()
    secrets = [session.session.encode(), np.asarray(prompt, dtype=np.int64).tobytes()]
    for hop in session.hops:
        secrets += [rows.tobytes() for rows in hop.inputs]  # ids, then every hidden row sent on
        secrets += [r.hidden.tobytes() for r in hop.replies if r.hidden is not None]
    secrets = [s for s in secrets if len(s) >= 16]  # (one token's 8 bytes could be any length field)
    secrets += [b'"session"', b'"receipt"', b'"voucher"', b'"signature"', b'"channel"', b'"temperature"', b'"hidden"']
    leaked = [s[:24] for s in secrets if s in seen]
    plain = ForwardRequest(session.hops[0].offer.stage.stage_id, session.session, 0, session.hops[0].inputs[0]).encode()
    assert all(s in plain for s in secrets[:2])  # (unsealed, the first call would have shown them)
    assert len(secrets) > 3 * MAX_TOKENS and not leaked
    # the receipts bind the plaintext activations, and chain: each stage's output is the next one's input
    by_stage = [
        [r.receipt for r in session.receipts if r.receipt.model_id == h.offer.stage.stage_id] for h in session.hops
    ]
    for hop, mine in zip(session.hops, by_stage, strict=True):
        assert [r.input_hash for r in mine] == [activation_hash(rows) for rows in hop.inputs]
    for before, after in itertools.pairwise(by_stage):
        assert [r.output_hash for r in before] == [r.input_hash for r in after]


async def _post(stage: PaidStage, body: bytes, path: str = FORWARD_PATH) -> httpx.Response:
    async with httpx.AsyncClient(transport=stage.transport(), base_url=stage.url) as client:
        return await client.post(path, content=body, headers={"content-type": MEDIA_TYPE})


def test_tampered_misaddressed_and_plain_calls_are_refused_before_any_work(
    anvil: Anvil, deployment: Deployment, admin: Contracts, paid3: list[PaidStage], chat_ids: list[list[int]]
) -> None:
    first, other = paid3[0], paid3[1]
    payer_key, payer = funded(anvil, deployment, admin, stable=DEPOSIT)
    payer.stable.approve(payer.channels.address)
    channel = payer.channels.open(first.address, DEPOSIT)
    rows = np.asarray(chat_ids[0][:8], dtype=np.int64)
    body, _ = sealed_call(first, payer_key, channel, "t", 0, rows)
    flipped = bytearray(body)
    flipped[-5] ^= 0x01  # a bit of the ciphertext, as a relay might alter it
    plain = ForwardRequest(first.engine.spec.stage_id, "t", 0, rows).encode()
    call = ForwardRequest(first.engine.spec.stage_id, "t", 0, rows)
    to_other_key, _ = seal_call(call, public_key_bytes(other.x25519), first.address)  # another provider's key
    to_other_address, _ = seal_call(call, public_key_bytes(first.x25519), other.address)  # bound to another address
    renamed = body.replace(call.call_id.hex().encode(), os.urandom(32).hex().encode())  # another call id outside
    attempts = {
        "tampered": bytes(flipped),
        "sealed-to-another-providers-key": to_other_key,
        "sealed-for-another-address": to_other_address,
        "another-call-id-outside": renamed,
        "plain": plain,
    }

    async def run() -> dict[str, tuple[int, str]]:
        out = {}
        for name, attempt in attempts.items():
            reply = await _post(first, attempt)
            out[name] = (reply.status_code, reply.json()["error"]["code"])
        return out

    refused = asyncio.run(run())

    assert refused == {
        "tampered": (400, "bad_envelope"),
        "sealed-to-another-providers-key": (400, "bad_envelope"),
        "sealed-for-another-address": (400, "bad_envelope"),
        "another-call-id-outside": (400, "bad_envelope"),
        "plain": (400, "invalid_stage"),
    }
    assert first.earned(channel) == 0 and not first.engine.holds("t")  # nothing computed, nothing charged
    reply = asyncio.run(_post(first, b'{"session": "t"}', CLOSE_PATH))
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, "invalid_stage")  # closes are sealed too
    reply = asyncio.run(_post(first, body))  # the untouched call is served
    assert reply.status_code == 200 and first.earned(channel) == 8 * PRICES[0].per_position
    first.engine.close("t")


def test_an_answer_altered_between_hops_is_not_trusted_and_stays_counted(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    whole: Engine,
    paid3: list[PaidStage],
    stages3: list[StageEngine],
    chat_ids: list[list[int]],
    tmp_path: Path,
) -> None:
    """A relay flips a bit of the middle stage's third answer: the gateway cannot open it, so
    the stage is replaced and replayed (the stream is the whole model's), and the call, which
    the provider did serve and earn, stays counted on its channel as a call of unknown outcome
    (so the gateway's exposure never falls below the provider's)."""
    spare = paid_stage(anvil, deployment, admin, stages3[1], StagePrice(5), "http://spare1", tmp_path)
    prompt = chat_ids[0]
    payments = gateway_payments(anvil, deployment, admin, tmp_path, DEPOSIT)
    payer = SessionPayer(payments, lambda _: 1_000_000, len(prompt) + MAX_TOKENS, MAX_TOKENS, None)
    wire = Wire({s.url: s.transport() for s in [*paid3, spare]})

    def flip_the_third(call: int, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if call == 3 else data

    wire.tamper[paid3[1].url] = flip_the_third
    offers = [s.offer() for s in [*paid3, spare]]

    tokens, session = asyncio.run(run_paid([*paid3, spare], payer, prompt, MAX_TOKENS, wire, offers))

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    assert tokens == asyncio.run(collect(whole.generate(prompt, params), len(prompt))).token_ids
    assert session.hops[1].replaced == 1 and session.hops[1].offer.url == spare.url
    middle = paid3[1]
    channel = payer.holds[middle.address].channel
    owed = payments.store.owed(channel, middle.engine.spec.stage_id)[0]
    altered = PRICES[1].per_position  # the third call: one position
    assert middle.earned(channel) == owed + altered  # the provider earned the call whose answer was altered ...
    assert payments.in_flight(channel) == altered  # ... and the gateway still counts it after the session

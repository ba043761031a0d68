"""Accumulated evidence on the real test model (allmende:tiny): audits served by real engines,
answered under receipts the provider signs, accumulated in the validator's SQLite ledger and
judged by the sequential test against the shipped calibration (validator/honest_profiles.json).

- an honest provider (the registered weights, served in continuous batches, in fp32 or bf16)
  accumulates to "honest" and is never accused;
- providers serving int8 weights or every weight moved 1 % pass every per-request check and are
  caught within N audited tokens (the test prints N);
- a juror convicts on the case's evidence from its own recomputation; a reporter that inflates
  an honest provider's statistics, counts one audit twice or slips in a receipt the provider
  never signed convicts nobody;
- on the calibration's measured statistics, no honest provider is accused in 10,000 audited
  requests per engine and batch shape, and every cheat row is caught within 2,000 tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import pytest
import torch
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import canonical
from allmende.api.protocol import input_hash
from allmende.core import Receipt, sign_receipt
from allmende.core.eip712 import Domain
from allmende.core.evidence_test import Counts, Decision, SequentialTest
from allmende.engine.base import collect
from allmende.engine.tiny import ensure_tiny_model
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.weights import move_weights, quantize_int8
from allmende.validator.accumulated import Calibration, audit_record, case_evidence, recheck_accumulated
from allmende.validator.answers import Choice, answer_stats, check_answer, prefills_of
from allmende.validator.checker import Verdict
from allmende.validator.divergence import AuditStats
from allmende.validator.evidence import Evidence
from allmende.validator.ledger import EvidenceLedger

pytestmark = pytest.mark.process

DOMAIN = Domain(31337, "0x" + "ab" * 20)
QUESTIONS = ["Tell me about rivers.", "Why do cats purr?", "Explain payment channels.", "Write a poem on rain."]
TOKENS = 32  # one proof chunk per audit
MOST_TOKENS = 640  # the most audited tokens a cheat below may take to be caught


def load(path: Path | None = None) -> CausalLMEngine:
    return CausalLMEngine("allmende:tiny", path or ensure_tiny_model())


@pytest.fixture(scope="module")
def validator_engine() -> CausalLMEngine:
    return load()


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return Calibration.load()


def body_of(i: int) -> dict[str, object]:
    """Audit i: a question, greedy or a seeded draw (what audits drawn from users' shapes send)."""
    body: dict[str, object] = {
        "model": "allmende:tiny",
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}],
        "max_tokens": TOKENS,
    }
    if i % 2:
        body |= {"temperature": 0.8, "seed": 100 + i}
    else:
        body |= {"temperature": 0}
    return body


def serve(
    provider: CausalLMEngine, reference: CausalLMEngine, key: bytes, first: int, count: int
) -> list[tuple[dict[str, object], Choice, Receipt, object]]:
    """`count` audits answered by `provider` concurrently (one continuous batch), each under a
    receipt signed with `key`: (body, choice, receipt, signed receipt)."""
    address = Account.from_key(key).address
    plans = []
    for i in range(first, first + count):
        body = body_of(i)
        request_id = os.urandom(32)
        prompt, params = canonical("chat", body, request_id).generation
        ids = reference.prompt_ids(prompt)
        plans.append((body, request_id, ids, params))

    async def run() -> list[object]:
        return list(await asyncio.gather(*(collect(provider.generate(ids, p), len(ids)) for _, _, ids, p in plans)))

    out = []
    for (body, request_id, ids, _), gen in zip(plans, asyncio.run(run()), strict=True):
        tokens, proof = gen.token_ids, gen.proof  # type: ignore[attr-defined]
        text = reference.decode(tokens)
        receipt = Receipt(request_id, reference.model_id, address, input_hash("chat", body), keccak(text.encode()),
                          keccak(proof), len(ids), len(tokens), 1, int(time.time()))  # fmt: skip
        out.append((body, Choice(tokens, proof, text), receipt, sign_receipt(receipt, DOMAIN, key)))
    return out


def audit(
    reference: CausalLMEngine, body: dict[str, object], choice: Choice, signed: object
) -> tuple[Verdict, AuditStats, Evidence]:
    """What the validator does with one answer: the per-request check and, from the same
    prefill, the divergence statistics; and the audit's evidence record."""
    from allmende.core import SignedReceipt

    assert isinstance(signed, SignedReceipt)
    prompt, _ = canonical("chat", body, signed.receipt.request_id).generation
    ids = reference.prompt_ids(prompt)
    prefills = prefills_of(reference, ids, [choice])
    verdict = check_answer(reference, body, ids, [choice], signed, "chat", prefills)
    stats = answer_stats(reference, body, ids, [choice], signed, "chat", prefills)
    assert stats is not None
    evidence = Evidence("chat", body, "0x" + reference.model_id.hex(), ids, choice.token_ids, choice.text,
                        "0x" + choice.proof.hex(), signed.to_json(), "audited")  # fmt: skip
    return verdict, stats, evidence


def accumulate(
    provider: CausalLMEngine, reference: CausalLMEngine, ledger: EvidenceLedger, key: bytes, rounds: int, batch: int = 4
) -> list[Decision]:
    """Audit `provider` in rounds of `batch` concurrent requests until the ledger says
    "cheating" or `rounds` rounds are over; every window that ends "honest" is closed. Returns
    the decisions, one per audit; every audit must pass the per-request checks."""
    address = Account.from_key(key).address
    model = "0x" + reference.model_id.hex()
    decisions = []
    for r in range(rounds):
        for body, choice, _, signed in serve(provider, reference, key, r * batch, batch):
            verdict, stats, evidence = audit(reference, body, choice, signed)
            assert verdict.ok, f"the per-request checks pass (the ledger is what catches it): {verdict.reason}"
            standing = ledger.add(address, model, stats, audit_record(evidence, stats))
            decisions.append(standing.decision)
            if standing.decision is Decision.HONEST:
                ledger.close(address, model, standing)
            if standing.decision is Decision.CHEATING:
                return decisions
    return decisions


def new_ledger(tmp_path: Path, calibration: Calibration, reference: CausalLMEngine) -> EvidenceLedger:
    model = "0x" + reference.model_id.hex()
    assert calibration.allowed(model), "the shipped calibration covers the test model"
    return EvidenceLedger(tmp_path / "ledger.db", {model: calibration.allowed(model)})


@pytest.mark.parametrize(
    "serving",
    [
        pytest.param(lambda: load(), id="fp32"),
        # bf16 serving (GPUs' default precision) is an honest variant of the fp32 registration
        pytest.param(lambda: CausalLMEngine("allmende:tiny", ensure_tiny_model(), dtype=torch.bfloat16), id="bf16"),
    ],
)
def test_an_honest_provider_accumulates_to_honest_and_is_never_accused(
    tmp_path: Path, validator_engine: CausalLMEngine, calibration: Calibration, serving: object
) -> None:
    ledger = new_ledger(tmp_path, calibration, validator_engine)
    key = Account.create().key

    decisions = accumulate(serving(), validator_engine, ledger, bytes(key), rounds=6)  # type: ignore[operator]

    assert Decision.CHEATING not in decisions
    closed = ledger.closed(Account.from_key(key).address, "0x" + validator_engine.model_id.hex())
    assert closed and all(c[0] == "honest" for c in closed), closed


@pytest.mark.parametrize(
    "serving",
    [
        pytest.param(lambda: quantize_int8(load()), id="int8-weights"),
        pytest.param(lambda: move_weights(load(), 0.01, 11), id="every-weight-moved-1pct"),
    ],
)
def test_a_provider_serving_a_cheaper_or_sibling_model_is_caught_within_n_tokens(
    tmp_path: Path, validator_engine: CausalLMEngine, calibration: Calibration, serving: object
) -> None:
    ledger = new_ledger(tmp_path, calibration, validator_engine)
    key = bytes(Account.create().key)
    provider = serving()  # type: ignore[operator]

    decisions = accumulate(provider, validator_engine, ledger, key, rounds=MOST_TOKENS // (4 * TOKENS))

    assert decisions[-1] is Decision.CHEATING, decisions
    assert Decision.HONEST not in decisions
    tokens = len(decisions) * TOKENS
    print(f"caught after {len(decisions)} audits, {tokens} audited tokens")
    assert tokens <= MOST_TOKENS


@pytest.fixture(scope="module")
def cheat_case(
    validator_engine: CausalLMEngine, calibration: Calibration, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Evidence, str]:
    """The evidence document of a case against an int8 provider, and the provider's address."""
    ledger = new_ledger(tmp_path_factory.mktemp("ledger"), calibration, validator_engine)
    key = bytes(Account.create().key)
    address = Account.from_key(key).address
    model = "0x" + validator_engine.model_id.hex()
    decisions = accumulate(quantize_int8(load()), validator_engine, ledger, key, rounds=MOST_TOKENS // (4 * TOKENS))
    assert decisions[-1] is Decision.CHEATING
    standing = ledger.standing(address, model)
    audits = [a for _, a in ledger.window_audits(address, model)]
    return case_evidence(audits, standing, calibration.allowed(model), calibration.version), address


def test_a_juror_convicts_from_its_own_recomputation(
    cheat_case: tuple[Evidence, str], validator_engine: CausalLMEngine, calibration: Calibration
) -> None:
    evidence, provider = cheat_case
    juror = load()  # its own copy of the model
    blob = Evidence.from_bytes(evidence.to_bytes())  # as fetched

    found = recheck_accumulated(
        juror, blob, provider, DOMAIN, calibration.allowed(evidence.model_id), rng=random.Random(1)
    )

    assert found.guilty, found.reason
    assert found.standing is not None and found.standing.decision is Decision.CHEATING


def test_a_reporter_that_inflates_an_honest_providers_statistics_convicts_nobody(
    tmp_path: Path, validator_engine: CausalLMEngine, calibration: Calibration
) -> None:
    key = bytes(Account.create().key)
    address = Account.from_key(key).address
    model = "0x" + validator_engine.model_id.hex()
    profiles = calibration.allowed(model)
    records = []
    for body, choice, _, signed in serve(load(), validator_engine, key, 0, 8):
        _, stats, evidence = audit(validator_engine, body, choice, signed)
        lie = AuditStats(tuple(0.5 for _ in stats.gaps), tuple(0.5 for _ in stats.chunk_errors))  # "every token off"
        records.append(audit_record(evidence, lie))
    ledger = EvidenceLedger(tmp_path / "lie.db", {model: profiles})
    for record in records:
        ledger.add(address, model, AuditStats.from_json(record["stats"]), record)
    standing = ledger.standing(address, model)
    assert standing.decision is Decision.CHEATING  # what the lying reporter's own numbers say
    document = case_evidence(records, standing, profiles, calibration.version)

    found = recheck_accumulated(validator_engine, document, address, DOMAIN, profiles, rng=random.Random(2))

    assert not found.guilty
    assert "not what the juror recomputes" in found.reason


def test_a_reporter_that_raises_only_the_chunk_errors_level_convicts_nobody(
    tmp_path: Path, validator_engine: CausalLMEngine, calibration: Calibration
) -> None:
    """The subtler lie: every token left as measured, every chunk error set just under the
    bf16 profile's chunk limit (no limit crossed), so only the errors' level says cheating.
    A juror that re-checks one audit of the eight (the others count with the reporter's
    numbers) finds that one's level inflated and votes not guilty."""
    key = bytes(Account.create().key)
    address = Account.from_key(key).address
    model = "0x" + validator_engine.model_id.hex()
    profiles = calibration.allowed(model)
    below = 0.9 * min(p.chunk_limit for p in profiles if p.level_sd > 0 and p.chunk_limit > 0.001)
    records = []
    for body, choice, _, signed in serve(load(), validator_engine, key, 0, 8):
        _, stats, evidence = audit(validator_engine, body, choice, signed)
        records.append(audit_record(evidence, AuditStats(stats.gaps, tuple(below for _ in stats.chunk_errors))))
    ledger = EvidenceLedger(tmp_path / "level.db", {model: profiles})
    for record in records:
        ledger.add(address, model, AuditStats.from_json(record["stats"]), record)
    standing = ledger.standing(address, model)
    assert standing.decision is Decision.CHEATING  # what the reporter's numbers say
    document = case_evidence(records, standing, profiles, calibration.version)

    found = recheck_accumulated(validator_engine, document, address, DOMAIN, profiles, sample=1, rng=random.Random(2))

    assert not found.guilty
    assert "not what the juror recomputes" in found.reason


def test_an_audit_counted_twice_or_signed_by_someone_else_convicts_nobody(
    cheat_case: tuple[Evidence, str], validator_engine: CausalLMEngine, calibration: Calibration
) -> None:
    evidence, provider = cheat_case
    profiles = calibration.allowed(evidence.model_id)
    audits = evidence.accumulated["audits"]  # type: ignore[index]
    twice = dataclasses.replace(evidence, accumulated={**evidence.accumulated, "audits": [*audits, audits[0]]})  # type: ignore[dict-item]
    forged = json.loads(json.dumps(audits[0]))
    other = Account.create()
    receipt = Evidence.from_bytes(json.dumps({k: v for k, v in forged.items() if k != "stats"}).encode()).signed_receipt
    forged["receipt"] = sign_receipt(receipt.receipt, DOMAIN, bytes(other.key)).to_json()
    swapped = dataclasses.replace(evidence, accumulated={**evidence.accumulated, "audits": [forged, *audits[1:]]})  # type: ignore[dict-item]

    counted_twice = recheck_accumulated(validator_engine, twice, provider, DOMAIN, profiles)
    not_signed = recheck_accumulated(validator_engine, swapped, provider, DOMAIN, profiles)
    another_provider = recheck_accumulated(validator_engine, evidence, other.address, DOMAIN, profiles)

    assert not counted_twice.guilty and "counted twice" in counted_twice.reason
    assert not not_signed.guilty and "not signed by the provider" in not_signed.reason
    assert not another_provider.guilty


def test_on_the_calibration_data_no_honest_provider_is_accused_and_every_cheat_is_caught(
    calibration: Calibration,
) -> None:
    """The α/β check on the measured statistics (bench/results/evidence_tiny_cpu.json, what
    bench/calibrate_evidence.py recorded of real servings): providers audited with audits drawn
    from each row's pool, the ledger's test as the validator runs it. Honest rows: 10,000
    audited requests each, none accused. Cheat rows: 100 providers each, every one caught
    within 2,000 audited tokens."""
    raw = json.loads((Path(__file__).parents[2] / "bench" / "results" / "evidence_tiny_cpu.json").read_text())
    profiles = calibration.allowed(raw["meta"]["model_id"])
    test = SequentialTest()
    rng = random.Random(35)

    def audit_until_decided(pool: list[AuditStats], budget: int) -> tuple[Decision, int]:
        counts = {p.name: Counts() for p in profiles}
        for n in range(1, budget + 1):
            audit = rng.choice(pool)
            counts = {p.name: counts[p.name] + p.counts(audit.gaps, audit.chunk_errors) for p in profiles}
            decision = test.decide(test.statistic(counts, profiles))
            if decision is not Decision.CONTINUE:
                return decision, n
        return Decision.CONTINUE, budget

    for row in raw["rows"]:
        pool = [AuditStats.from_json(a) for a in row["audits"]]
        if row["honest"]:
            requests, accused = 0, 0
            while requests < 10_000:
                decision, n = audit_until_decided(pool, 10_000)
                requests += n
                accused += decision is Decision.CHEATING
            assert accused == 0, row["row"]
        else:
            caught = [audit_until_decided(pool, 2000 // raw["meta"]["tokens_per_audit"]) for _ in range(100)]
            assert all(d is Decision.CHEATING for d, _ in caught), row["row"]

"""The calibration harness's stage rows that batching and F16 registrations added (the other
rows, batch 1 honest and cheating, are tests/stages/test_stage_engine.py's audits; all of them
with more prompts: `bench/verify.py --stages`): an honest stage audited after serving its
session inside a continuous batch passes, and a provider serving an F16 registration in int8
is caught."""

from __future__ import annotations

import pytest
import torch

from allmende.engine.proofs import MAX_MEDIAN_REL_ERROR
from allmende.engine.stages import F16_MEDIAN_REL_ERROR, audit_limit
from allmende.testing.stage_harness import StageHarness

ROWS = (
    "bf16 stage in a continuous batch of 4",
    "F16 registration served in fp16, continuous batch of 4",
    "int8 of an F16 registration",
)


@pytest.fixture(scope="module")
def harness() -> StageHarness:
    return StageHarness(questions=1, tokens=8, batch=4)


def test_batched_honest_stages_pass_and_int8_of_an_f16_registration_fails(harness: StageHarness) -> None:
    results = {r.name: r for r in harness.run(lambda name: name in ROWS)}

    assert set(results) == set(ROWS)
    for name in ROWS[:2]:  # every stage of the chain audited, none falsely accused, and they did batch
        honest = results[name]
        assert honest.kind == "honest" and honest.runs == 3 and honest.wrong == 0, (name, honest.reasons)
        assert honest.batched_passes >= 3 * harness.tokens, name
    cheat = results["int8 of an F16 registration"]
    assert cheat.kind == "cheat" and cheat.runs == 3 and cheat.passed == 0
    assert cheat.best_median_rel_error > F16_MEDIAN_REL_ERROR


def test_an_f16_registration_is_audited_at_f16_precision(harness: StageHarness) -> None:
    f16, fp32 = harness.reference_f16[1], harness.reference[1]

    assert f16.registered_dtype == torch.float16 and fp32.registered_dtype == torch.float32
    assert audit_limit(f16) == F16_MEDIAN_REL_ERROR < audit_limit(fp32) == MAX_MEDIAN_REL_ERROR
    assert harness.f16[1].slice != harness.layout.stages[1].slice  # its own registration, its own hash

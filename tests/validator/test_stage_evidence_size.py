"""Stage evidence within what jurors download: a stage's case carries the stage's inputs from
position 0, so an auditor keeps its sessions within `stage_positions_within` of the juror's cap
(`MAX_STAGE_EVIDENCE_BYTES`), drawing prompts again, then cutting a long one (`fit_prompt`).
Sized with the real encoding: float32 rows in safetensors and base64, a real proof of the
accused rows, a signed receipt for every call before it."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
import torch
from eth_account import Account
from safetensors.numpy import save

from allmende.core import Receipt, sign_receipt
from allmende.core.eip712 import Domain
from allmende.engine.proofs import commit
from allmende.validator.evidence import MAX_EVIDENCE_BYTES, MAX_STAGE_EVIDENCE_BYTES, Evidence, stage_positions_within
from allmende.validator.stages import fit_prompt

KEY = b"\x07" * 32
DOMAIN = Domain(31337, "0x" + "22" * 20)


def stage_evidence(positions: int, width: int, tokens: int) -> Evidence:
    """A stage case's evidence as `StageAuditor` writes it, accusing the prompt call (the
    largest proof) after `tokens` drawn calls: the worst case for its size."""
    rng = np.random.default_rng(7)
    inputs = rng.standard_normal((positions, width), dtype=np.float32)
    receipt = Receipt(
        os.urandom(32), os.urandom(32), Account.from_key(KEY).address, os.urandom(32), os.urandom(32), os.urandom(32),
        positions, 1, 10**12, 1_700_000_000,
    )  # fmt: skip
    signed = sign_receipt(receipt, DOMAIN, KEY).to_json()
    return Evidence(
        kind="stage",
        body={
            "stage": "0x" + "ab" * 32,
            "session": "0x" + "cd" * 32,
            "start": 0,
            "rows": positions,
            "inputs": base64.b64encode(save({"input": inputs})).decode(),
            "before": [signed] * (tokens + 1),
        },
        model_id="0x" + "ab" * 32,
        prompt_ids=[],
        token_ids=[],
        text="",
        proof="0x" + commit(torch.from_numpy(inputs)).hex(),
        receipt=signed,
        reason="call 1 of 9 (positions 0-2300): 70% of values off by > 10%",
    )


@pytest.mark.parametrize("width", [576, 8192])
def test_an_audit_within_its_positions_leaves_evidence_jurors_take(width: int) -> None:
    tokens = 8
    most = stage_positions_within(width, tokens)
    # at the largest session the evidence fits the cap; a tenth more would not
    size = len(stage_evidence(most, width, tokens).to_bytes())
    assert MAX_EVIDENCE_BYTES < size <= MAX_STAGE_EVIDENCE_BYTES
    assert size > 0.9 * MAX_STAGE_EVIDENCE_BYTES
    # an 8,192-wide stage: a session of some 2,300 positions (prompt and drawn tokens)
    assert most == pytest.approx(96 * 2**20 / (4 * width * 4 / 3), rel=0.05)


def test_a_long_prompt_is_drawn_again_then_cut_to_its_last_positions() -> None:
    drawn = iter([list(range(50)), list(range(40)), list(range(12)), list(range(60))])
    assert fit_prompt(lambda: next(drawn), 20) == list(range(12))  # the third draw fits
    too_long = iter([list(range(50 + i)) for i in range(4)])
    assert fit_prompt(lambda: next(too_long), 20) == list(range(33, 53))  # the last draw's last 20
    assert fit_prompt(lambda: [1, 2, 3], 0) == [3]  # at least one position

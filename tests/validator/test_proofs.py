"""Proof commitments: the wire format, and the calibration harness (honest variants pass,
every cheat fails)."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from allmende.core.proofs import TOP_K, ChunkCommitment, ProofFormatError, decode_proof, encode_proof
from allmende.engine.proofs import check, commit
from allmende.testing.harness import (
    ENDINGS,
    IGNORES,
    NEVER_EOS,
    OVERRUN,
    PARAMETER_SETTINGS,
    SETTINGS,
    Harness,
    setting_name,
)

SETTING_NAMES = [setting_name(p) for p in SETTINGS]


@given(
    hidden=st.sampled_from([64, 384, 4096]),
    positions=st.integers(1, 32),
    data=st.data(),
)
def test_encode_decode_round_trip(hidden: int, positions: int, data: st.DataObject) -> None:
    k = min(TOP_K, positions * hidden)  # what every chunk commits to (core.proofs.committed_k)
    indices = sorted(data.draw(st.sets(st.integers(0, positions * hidden - 1), min_size=k, max_size=k)))
    values = data.draw(st.lists(st.floats(-1000, 1000, width=16), min_size=k, max_size=k))
    chunk = ChunkCommitment(positions, tuple(indices), tuple(values))

    (decoded,) = decode_proof(encode_proof([chunk], hidden), hidden)

    assert decoded == chunk


@pytest.mark.parametrize(("hidden", "limit"), [(64, 258), (4096, 258)])
def test_a_full_chunk_fits_toplocs_budget(hidden: int, limit: int) -> None:
    proof = commit(torch.randn(32, hidden))
    assert len(proof) <= limit


@pytest.mark.parametrize(
    "mangle",
    [lambda p: p[:-1], lambda p: p[:2], lambda p: b"\x38\x21\x0b" + p[3:]],
    ids=["truncated", "header-only", "wrong-positions"],
)
def test_malformed_proofs_fail_the_check(mangle) -> None:  # type: ignore[no-untyped-def]
    hidden = torch.randn(40, 64)
    assert check(commit(hidden), hidden).ok
    assert not check(mangle(commit(hidden)), hidden).ok


def test_decode_rejects_a_header_for_another_model() -> None:
    proof = commit(torch.randn(32, 64))
    with pytest.raises(ProofFormatError):
        decode_proof(proof, 4096)


def test_proof_for_fewer_tokens_fails() -> None:
    hidden = torch.randn(64, 64)
    assert not check(commit(hidden[:32]), hidden).ok


def test_a_proof_of_nan_values_at_the_right_indices_fails() -> None:
    # the cheat: find the top-k positions cheaply, skip the values, send NaN (every comparison
    # with NaN is false, so no error threshold would trip)
    hidden = torch.randn(40, 64)
    nan_proof = b""
    for chunk in decode_proof(commit(hidden), 64):
        k = len(chunk.indices)
        nan_proof += chunk.encode(64)[: -2 * k] + struct.pack(">e", math.nan) * k

    result = check(nan_proof, hidden)

    assert not result.ok
    assert "malformed proof" in result.reason


def test_harness_honest_pass_and_cheats_fail() -> None:
    results = Harness(questions=3).run()

    by_name = {r.name: r for r in results}
    assert len(results) >= 10
    assert [r.name for r in results if r.honest and r.wrong] == []  # no false alarms
    assert [r.name for r in results if not r.honest and r.wrong] == []  # no misses
    assert by_name["weights quantised to int8"].runs == 3


@pytest.fixture(scope="module")
def attacks() -> Harness:
    """The attack rows' harness: both tests below run rows of the same one."""
    return Harness(questions=2, attacks=True)


def test_harness_attacks_on_the_draw_are_all_caught(attacks: Harness) -> None:
    """A cheap generator whose proof is recomputed by one honest prefill (another model, a
    skipped layer, random tokens, another sampling seed), truncated and empty completions:
    all caught under greedy and every sampled setting, and honest fp32/bf16 runs pass."""
    results = attacks.run(lambda name: "," in name and not name.startswith(ENDINGS))

    assert len(results) >= 40
    assert [r.name for r in results if r.honest and r.wrong] == []
    assert [r.name for r in results if not r.honest and r.wrong] == []
    assert {r.name for r in results if r.limit} == {f"int8 + recomputed proof, {s}" for s in SETTING_NAMES}


def test_harness_completions_that_run_past_their_end_are_all_caught(attacks: Harness) -> None:
    """The right model and an honest proof, but the completion goes on past where the engine
    had to end it, billed up to max_tokens: past the EOS of a request whose answer ends early,
    and past a requested stop string. Every one is caught under greedy and every sampled
    setting (none passes: each claim really runs past its end), and the honest answers of the
    same requests pass."""
    results = attacks.run(lambda name: name.startswith(ENDINGS))

    overruns = [r for r in results if r.name.startswith(OVERRUN)]
    assert len(overruns) == 2 * len(SETTINGS)
    assert {r.name: r.passed for r in overruns} == {r.name: 0 for r in overruns}
    assert all("runs past its end" in r.reasons[0] for r in overruns)
    assert [r.name for r in results if r.honest and r.wrong] == []
    assert len([r for r in results if r.honest]) == 2 * len(SETTINGS)
    # never drawing EOS is caught by the draw except where EOS led by less than the tolerance
    masked = [r for r in results if r.name.startswith(NEVER_EOS)]
    assert len(masked) == len(SETTINGS) and all(r.limit for r in masked)
    assert sum(r.runs - r.passed for r in masked) > 0


def test_harness_sampling_parameters_honest_pass_and_ignored_or_altered_are_caught() -> None:
    """presence_penalty, frequency_penalty, logit_bias, top_k and min_p (and greedy with a
    penalty): the honest answers pass on fp32 and a bf16 provider; a provider that ignores
    the parameter, or serves it altered, with an honest proof of what it drew, is caught
    unless its tokens happen to equal the honest draw's."""
    results = Harness(questions=2, parameters=True).run(lambda name: name.startswith(tuple(PARAMETER_SETTINGS)))

    assert len(results) == 4 * len(PARAMETER_SETTINGS)
    assert [r.name for r in results if r.honest and r.wrong] == []
    assert [r.name for r in results if not r.honest and r.wrong] == []
    ignored = {r.name: r.runs - r.passed for r in results if r.name.endswith(f"{IGNORES} it")}
    assert all(ignored.values()), ignored  # every parameter changes these answers: ignoring it fails
    assert all("not the request's draw" in r.reasons[0] for r in results if not r.honest and r.reasons)

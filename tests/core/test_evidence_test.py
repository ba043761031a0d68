"""The sequential test on accumulated evidence (allmende.core.evidence_test): Wald's error
bounds hold empirically on streams drawn at the calibrated rates, a profile is fitted from
honest statistics as documented, and the composite test convicts only when every allowed
honest engine is rejected."""

from __future__ import annotations

import math
import random

import pytest

from allmende.core.evidence_test import (
    ALPHA,
    BETA,
    CHUNK_FLOOR,
    CONFIDENCE_Z,
    GAP_TIE,
    LEVEL_CLIP,
    LEVEL_FLOOR,
    LEVEL_SD_FLOOR,
    TOKEN_FLOOR,
    TOKEN_RATIO,
    Counts,
    Decision,
    Profile,
    SequentialTest,
    fit_profile,
    wilson_upper,
)

TIGHT = Profile("f16", chunk_limit=0.001, chunk_p0=0.05, chunk_p1=0.5, token_p0=0.004, token_p1=0.016)
LOOSE = Profile("native", chunk_limit=0.02, chunk_p0=0.05, chunk_p1=0.5, token_p0=0.012, token_p1=0.048)


def run_window(
    rng: random.Random, token_rate: float, chunk_rate: float, profile: Profile, test: SequentialTest
) -> tuple[Decision, int]:
    """Draw 32-token audits at the given rates until the test decides; (decision, tokens)."""
    counts, tokens = Counts(), 0
    while True:
        mismatches = sum(rng.random() < token_rate for _ in range(32))
        exceeding = int(rng.random() < chunk_rate)
        counts = counts + Counts(32, mismatches, 1, exceeding)
        tokens += 32
        decision = test.decide(test.statistic({profile.name: counts}, [profile]))
        if decision is not Decision.CONTINUE:
            return decision, tokens


def test_wald_bounds_are_the_documented_ones() -> None:
    test = SequentialTest()
    assert test.upper == pytest.approx(math.log((1 - BETA) / ALPHA))
    assert test.lower == pytest.approx(math.log(BETA / (1 - ALPHA)))
    assert test.decide(test.upper) is Decision.CHEATING
    assert test.decide(test.lower) is Decision.HONEST
    assert test.decide(0.0) is Decision.CONTINUE


def test_false_alarm_and_miss_rates_hold_empirically() -> None:
    """At loose error rates (α = β = 0.05, so that errors are frequent enough to count in a
    few thousand windows) the empirical rates stay within Wald's bounds α/(1−β), β/(1−α)."""
    rng = random.Random(35)
    test = SequentialTest(alpha=0.05, beta=0.05)
    windows = 2000
    false_alarms = sum(
        run_window(rng, TIGHT.token_p0, TIGHT.chunk_p0, TIGHT, test)[0] is Decision.CHEATING for _ in range(windows)
    )
    misses = sum(
        run_window(rng, TIGHT.token_p1, TIGHT.chunk_p1, TIGHT, test)[0] is Decision.HONEST for _ in range(windows)
    )
    # the bound plus three binomial standard deviations
    bound = 0.05 / 0.95
    slack = 3 * math.sqrt(bound * (1 - bound) / windows)
    assert false_alarms / windows <= bound + slack
    assert misses / windows <= bound + slack


def test_at_the_shipped_rates_honest_streams_are_never_accused() -> None:
    """α = 1e-6: 3,000 honest windows at the profile's own honest rates, none ends 'cheating';
    every cheat at the design rates ends 'cheating'."""
    rng = random.Random(7)
    test = SequentialTest()
    honest = [run_window(rng, TIGHT.token_p0, TIGHT.chunk_p0, TIGHT, test)[0] for _ in range(3000)]
    assert honest.count(Decision.CHEATING) == 0
    cheats = [run_window(rng, TIGHT.token_p1, TIGHT.chunk_p1, TIGHT, test) for _ in range(300)]
    assert all(decision is Decision.CHEATING for decision, _ in cheats)


def test_cheating_only_when_every_allowed_engine_is_rejected() -> None:
    """Evidence that the tight engine rejects but the loose one explains is not cheating
    while the loose engine is allowed."""
    test = SequentialTest()
    # 640 tokens, 20 chunks: every chunk's error is 0.005 (above the tight limit, below the
    # loose one), 5 mismatches (about the loose engine's honest rate)
    counts = {"f16": Counts(640, 5, 20, 20), "native": Counts(640, 5, 20, 0)}
    assert test.decide(test.statistic(counts, [TIGHT])) is Decision.CHEATING
    assert test.decide(test.statistic(counts, [TIGHT, LOOSE])) is not Decision.CHEATING
    with pytest.raises(ValueError):
        test.statistic(counts, [])


def test_counts_use_the_tie_and_the_profiles_limit() -> None:
    c = TIGHT.counts([0.0, GAP_TIE, GAP_TIE * 2, 0.3], [0.0005, 0.001, 0.0011])
    assert c == Counts(tokens=4, mismatches=2, chunks=3, exceeding=1)


def test_fit_profile_takes_the_worst_batch_shape_and_the_floors() -> None:
    alone = [{"gaps": [0.0] * 100, "chunk_errors": [0.0003, 0.0004, 0.0002]} for _ in range(20)]
    batched = [{"gaps": [0.0] * 98 + [0.01, 0.02], "chunk_errors": [0.0005, 0.0004, 0.0003]} for _ in range(20)]
    profile = fit_profile("f16", [alone, batched])
    assert profile.chunk_limit == pytest.approx(0.001)  # the floor: twice the largest honest error is below it
    assert profile.token_p0 == pytest.approx(round(wilson_upper(40, 2000), 6))  # the batched shape's bound
    assert profile.token_p0 > 40 / 2000 and profile.token_p0 >= TOKEN_FLOOR
    assert profile.chunk_p0 >= CHUNK_FLOOR
    assert profile.token_p1 == pytest.approx(min(0.5, TOKEN_RATIO * profile.token_p0), abs=1e-5)
    assert profile.calibrated_tokens == 4000 and profile.calibrated_chunks == 120
    assert Profile.from_json(profile.to_json()) == profile
    with pytest.raises(ValueError):
        fit_profile("empty", [[]])


def test_wilson_upper_bounds_the_rate() -> None:
    assert wilson_upper(0, 0) == 1.0
    assert 0 < wilson_upper(0, 1000) < 0.01
    assert wilson_upper(10, 1000) > 0.01
    assert wilson_upper(1000, 1000) == pytest.approx(1.0)


def level_profile(errors_per_shape: list[list[float]]) -> Profile:
    """A profile fitted from honest chunk errors only (no mismatched tokens)."""
    return fit_profile(
        "bf16", [[{"gaps": [0.0] * 32, "chunk_errors": [e]} for e in errors] for errors in errors_per_shape]
    )


def level_window(
    rng: random.Random, profile: Profile, median: float, test: SequentialTest, spread: float = 0.2
) -> tuple[Decision, int]:
    """32-token audits whose one chunk's error is log-normal around `median`, no token off the
    draw, until the test decides; (decision, tokens)."""
    counts, tokens = Counts(), 0
    while True:
        counts = counts + profile.counts([0.0] * 32, [median * math.exp(rng.gauss(0, spread))])
        tokens += 32
        decision = test.decide(test.statistic({profile.name: counts}, [profile]))
        if decision is not Decision.CONTINUE:
            return decision, tokens


def test_fit_profile_bounds_the_level_by_the_worst_shape() -> None:
    rng = random.Random(3)
    low = [0.003 * math.exp(rng.gauss(0, 0.2)) for _ in range(96)]
    high = [0.004 * math.exp(rng.gauss(0, 0.2)) for _ in range(96)]
    profile = level_profile([low, high])
    logs = [math.log(e) for e in high]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    assert profile.level == pytest.approx(mean + CONFIDENCE_Z * sd / math.sqrt(96), abs=1e-5)
    assert profile.level_sd >= sd
    # errors below the floor count as the floor: fp32's level is the commitment's rounding
    exact = level_profile([[0.0002] * 50])
    assert exact.level == pytest.approx(math.log(LEVEL_FLOOR) + CONFIDENCE_Z * LEVEL_SD_FLOOR / math.sqrt(50), abs=1e-5)
    assert exact.level_sd == LEVEL_SD_FLOOR


def test_the_level_tells_larger_errors_from_an_honest_engines_within_every_limit() -> None:
    """bf16-like honest errors (median 0.005): 2,000 windows, none accused, even on an honest
    machine whose errors run 10 % above the calibration's. Errors 1.5x higher (int8 weights
    against bf16 on SmolLM2) stay far inside the chunk limit, every token the validator's
    draw, and are caught, all within 1,000 tokens."""
    rng = random.Random(35)
    test = SequentialTest()
    profile = level_profile([[0.005 * math.exp(rng.gauss(0, 0.2)) for _ in range(48)]])
    assert profile.chunk_limit > 0.0075 * math.exp(0.4)  # the limit alone cannot tell them apart
    honest = [level_window(rng, profile, 0.005 * 1.1, test)[0] for _ in range(2000)]
    assert honest.count(Decision.CHEATING) == 0
    caught = [level_window(rng, profile, 0.0075, test) for _ in range(200)]
    assert all(d is Decision.CHEATING and tokens <= 1000 for d, tokens in caught)


def test_one_wild_chunk_cannot_decide_a_window_and_old_profiles_keep_the_chunk_stream() -> None:
    profile = level_profile([[0.005] * 48])
    wild = profile.counts([0.0] * 32, [1.0])  # an unreadable proof counts as error 1.0
    bound = LEVEL_CLIP * profile.level_sd
    assert wild.level == pytest.approx(bound)
    assert SequentialTest().decide(profile.llr(wild)) is Decision.CONTINUE
    # a profile fitted before the level (no level in its JSON) is judged by the chunk limit
    before = {k: v for k, v in profile.to_json().items() if k not in ("level", "level_sd")}
    old = Profile.from_json(before)
    assert old.level_sd == 0
    counts = old.counts([0.0] * 32, [1.0])
    assert counts.level == 0 and old.llr(counts) == pytest.approx(
        math.log(old.chunk_p1 / old.chunk_p0) + 32 * math.log((1 - old.token_p1) / (1 - old.token_p0))
    )

"""The sequential test on accumulated audit evidence: honest, keep auditing, or cheating.

One request's check must let through whatever honest hardware differs by, so a quantised or
slightly moved model passes it. Over many audited tokens it does not: each audited token
and proof chunk is an observation (two Bernoulli streams and the chunk errors' level), and Wald's sequential
probability ratio test (SPRT) decides between "the provider runs an honest engine" (H0) and
"it runs something that diverges measurably more" (H1):

- token stream: the token is not the validator's own seeded draw by more than a float tie
  (`GAP_TIE` of the row's logit scale); honest rate `token_p0`, cheat rate `token_p1`;
- chunk stream: a proof chunk's median relative error exceeds the honest engine's
  `chunk_limit`; honest rate `chunk_p0`, cheat rate `chunk_p1`;
- level stream (profiles fitted with it; it then replaces the chunk stream): the chunk's
  error itself, on a log scale (Wald's test for a normal mean):
  the honest engine's errors sit around `level` (the upper confidence bound of their mean
  log, `level_sd` their spread), a cheat's around `level` + `LEVEL_SHIFT`. Rounding engines
  have a narrow, machine-independent error level (bf16 rounds every product to 2^-8 on any
  device), so a model whose errors sit 25 % higher is told apart within some hundreds of
  tokens even where both pass every limit: int8 weights of SmolLM2 put its chunks at 1.5x
  bf16's, inside bf16's chunk limit. Each chunk's deviation is clipped at `LEVEL_CLIP`
  spreads, so one odd chunk cannot decide a window.

A `Profile` holds those numbers for one engine (transformers, llama.cpp on the F16 copy,
llama.cpp on a quantised file), fitted from honest runs at several batch shapes by
`fit_profile` (the worst shape counts; the honest rates are one-sided upper confidence
bounds, never below a floor), shipped as data (validator/honest_profiles.json, made by
bench/calibrate_evidence.py). The log-likelihood ratio of the evidence is summed per profile;
a provider may run any engine its registration allows, so the test takes the profile that
explains the evidence best (the smallest ratio): cheating only when every allowed honest
engine is rejected.

Error rates, chosen up front (`ALPHA`, `BETA`): Wald's bounds A = log((1 − β)/α) and
B = log(β/(1 − α)) keep the chance that one window of an honest provider ends in "cheating"
at most α/(1 − β) ≈ 1e-6, and the chance that a cheat at the design rates ends in "honest"
at most β/(1 − α) ≈ 1e-3. A window that ends "honest" closes and a new one begins (a provider
that starts cheating later is caught in a later window): over W windows an honest provider's
chance of a false accusation is at most W·α/(1 − β).

Pure: no torch, no I/O. The statistics it consumes are computed by
allmende.validator.divergence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

ALPHA = 1e-6  # the most an honest provider's window may end in "cheating"
BETA = 1e-3  # the most a cheat at the design rates may end a window "honest"
GAP_TIE = 1e-4  # a draw gap up to this (of the row's logit scale) is a float tie, not a mismatch
CHUNK_FACTOR = 2.0  # chunk limit = this × the largest honest chunk error seen in calibration ...
# ... and never below this: the float16 rounding of the committed values alone gives medians up
# to about 0.0005 on any machine, so a tighter limit would measure the machine, not the model
CHUNK_LIMIT_FLOOR = 0.001
CHUNK_P1 = 0.5  # a cheat's design rate of chunks over the limit
# a cheat's design mismatch rate, as a multiple of the honest one. Low on purpose: a cheat
# whose rate lies between the honest bound and the design rate drifts towards whichever is
# nearer, and at 4x the quantised servings' 1.5-2x the honest rate counted for honesty
TOKEN_RATIO = 2.0
TOKEN_FLOOR = 0.002  # the honest mismatch rate assumed is never below this ...
CHUNK_FLOOR = 0.01  # ... nor the honest chunk rate below this
CONFIDENCE_Z = 3.09  # one-sided 99.9 % Wilson upper bound on each honest rate
LEVEL_FLOOR = CHUNK_LIMIT_FLOOR  # errors below this count as this (the commitment's own rounding)
LEVEL_SHIFT = math.log(1.25)  # a cheat's design level: 25 % larger chunk errors than the honest bound
LEVEL_SD_FLOOR = 0.1  # the honest spread of log errors assumed is never below this
LEVEL_CLIP = 4.0  # a chunk's deviation from the honest level counts at most this many spreads


class Decision(StrEnum):
    HONEST = "honest"
    CONTINUE = "keep auditing"
    CHEATING = "cheating"


@dataclass(frozen=True)
class Counts:
    """One window's evidence against one profile."""

    tokens: int = 0
    mismatches: int = 0  # tokens whose gap exceeds GAP_TIE
    chunks: int = 0
    exceeding: int = 0  # chunks whose error exceeds the profile's chunk limit
    level: float = 0.0  # sum over chunks of the clipped deviation of log error from the profile's level

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tokens + other.tokens,
            self.mismatches + other.mismatches,
            self.chunks + other.chunks,
            self.exceeding + other.exceeding,
            self.level + other.level,
        )


@dataclass(frozen=True)
class Profile:
    """An honest engine's calibrated rates (see the module docstring)."""

    name: str
    chunk_limit: float
    chunk_p0: float
    chunk_p1: float
    token_p0: float
    token_p1: float
    calibrated_tokens: int = 0
    calibrated_chunks: int = 0
    level: float = 0.0  # upper bound on the honest mean of log(chunk error) ...
    level_sd: float = 0.0  # ... and its spread; 0: no level stream (a profile from before it)

    def counts(self, gaps: Iterable[float], chunk_errors: Iterable[float]) -> Counts:
        gap_list, error_list = list(gaps), list(chunk_errors)
        deviation = 0.0
        if self.level_sd > 0:
            bound = LEVEL_CLIP * self.level_sd
            deviation = sum(max(-bound, min(bound, _log_level(e) - self.level)) for e in error_list)
        return Counts(
            len(gap_list),
            sum(1 for g in gap_list if g > GAP_TIE),
            len(error_list),
            sum(1 for e in error_list if e > self.chunk_limit),
            deviation,
        )

    def llr(self, c: Counts) -> float:
        """log P(evidence | cheat at the design rates) − log P(evidence | this honest engine)."""
        ratio = _bernoulli_llr(c.mismatches, c.tokens, self.token_p0, self.token_p1)
        if self.level_sd > 0:  # normal mean, known spread: honest level vs level + LEVEL_SHIFT
            # the level replaces the chunk stream (both read the same number: counting a chunk
            # twice is no likelihood ratio); a chunk far off counts LEVEL_CLIP spreads
            return ratio + LEVEL_SHIFT / self.level_sd**2 * (c.level - c.chunks * LEVEL_SHIFT / 2)
        return ratio + _bernoulli_llr(c.exceeding, c.chunks, self.chunk_p0, self.chunk_p1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        return cls(
            str(data["name"]),
            float(data["chunk_limit"]),
            float(data["chunk_p0"]),
            float(data["chunk_p1"]),
            float(data["token_p0"]),
            float(data["token_p1"]),
            int(data.get("calibrated_tokens", 0)),
            int(data.get("calibrated_chunks", 0)),
            float(data.get("level", 0.0)),
            float(data.get("level_sd", 0.0)),
        )


def _log_level(error: float) -> float:
    return math.log(max(error, LEVEL_FLOOR))


def _bernoulli_llr(k: int, n: int, p0: float, p1: float) -> float:
    return k * math.log(p1 / p0) + (n - k) * math.log((1 - p1) / (1 - p0))


@dataclass(frozen=True)
class SequentialTest:
    """Wald's SPRT with error rates `alpha` (false accusation) and `beta` (missed cheat)."""

    alpha: float = ALPHA
    beta: float = BETA

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    def statistic(self, counts: dict[str, Counts], profiles: Sequence[Profile]) -> float:
        """The evidence against the honest engine that explains it best."""
        if not profiles:
            raise ValueError("the test needs at least one honest profile")
        return min(p.llr(counts.get(p.name, Counts())) for p in profiles)

    def decide(self, statistic: float) -> Decision:
        if statistic >= self.upper:
            return Decision.CHEATING
        if statistic <= self.lower:
            return Decision.HONEST
        return Decision.CONTINUE


def wilson_upper(k: int, n: int, z: float = CONFIDENCE_Z) -> float:
    """One-sided upper confidence bound on a rate seen k times in n trials."""
    if n <= 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def fit_profile(name: str, shapes: Sequence[Sequence[dict[str, Sequence[float]]]]) -> Profile:
    """The profile of one honest engine from its audits' statistics at each batch shape
    (`shapes[i]`: the audits served at shape i, each `{"gaps": [...], "chunk_errors": [...]}`).
    Rates are upper bounds per shape, and the profile takes the largest: the validator does not
    know which batch an audit was served in. So is the level: per shape the mean log error
    plus `CONFIDENCE_Z` standard errors, the largest shape's, with the largest spread."""
    every_error = [e for shape in shapes for a in shape for e in a["chunk_errors"]]
    if not every_error:
        raise ValueError(f"no honest chunks to calibrate {name} from")
    limit = max(CHUNK_LIMIT_FLOOR, CHUNK_FACTOR * max(every_error))
    token_p0, chunk_p0, tokens, chunks = TOKEN_FLOOR, CHUNK_FLOOR, 0, 0
    level, level_sd = math.log(LEVEL_FLOOR), LEVEL_SD_FLOOR
    for shape in shapes:
        gaps = [g for a in shape for g in a["gaps"]]
        errors = [e for a in shape for e in a["chunk_errors"]]
        tokens, chunks = tokens + len(gaps), chunks + len(errors)
        token_p0 = max(token_p0, wilson_upper(sum(1 for g in gaps if g > GAP_TIE), len(gaps)))
        chunk_p0 = max(chunk_p0, wilson_upper(sum(1 for e in errors if e > limit), len(errors)))
        if errors:
            logs = [_log_level(e) for e in errors]
            mean = sum(logs) / len(logs)
            sd = max(LEVEL_SD_FLOOR, math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs)))
            level, level_sd = max(level, mean + CONFIDENCE_Z * sd / math.sqrt(len(logs))), max(level_sd, sd)
    return Profile(
        name,
        round(limit, 6),
        round(chunk_p0, 6),
        max(CHUNK_P1, round(2 * chunk_p0, 6)),
        round(token_p0, 6),
        min(0.5, round(TOKEN_RATIO * token_p0, 6)),
        tokens,
        chunks,
        round(level, 6),
        round(level_sd, 6),
    )

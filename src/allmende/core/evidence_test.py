"""The sequential test on accumulated audit evidence: honest, keep auditing, or cheating.

One request's check must let through whatever honest hardware differs by, so a quantised or
slightly moved model passes it. Over many audited tokens it does not: each audited token
and proof chunk is one observation of two Bernoulli streams, and Wald's sequential
probability ratio test (SPRT) decides between "the provider runs an honest engine" (H0) and
"it runs something that diverges measurably more" (H1):

- token stream: the token is not the validator's own seeded draw by more than a float tie
  (`GAP_TIE` of the row's logit scale); honest rate `token_p0`, cheat rate `token_p1`;
- chunk stream: a proof chunk's median relative error exceeds the honest engine's
  `chunk_limit`; honest rate `chunk_p0`, cheat rate `chunk_p1`.

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
TOKEN_RATIO = 4.0  # a cheat's design mismatch rate, as a multiple of the honest one
TOKEN_FLOOR = 0.002  # the honest mismatch rate assumed is never below this ...
CHUNK_FLOOR = 0.01  # ... nor the honest chunk rate below this
CONFIDENCE_Z = 3.09  # one-sided 99.9 % Wilson upper bound on each honest rate


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

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tokens + other.tokens,
            self.mismatches + other.mismatches,
            self.chunks + other.chunks,
            self.exceeding + other.exceeding,
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

    def counts(self, gaps: Iterable[float], chunk_errors: Iterable[float]) -> Counts:
        gap_list, error_list = list(gaps), list(chunk_errors)
        return Counts(
            len(gap_list),
            sum(1 for g in gap_list if g > GAP_TIE),
            len(error_list),
            sum(1 for e in error_list if e > self.chunk_limit),
        )

    def llr(self, c: Counts) -> float:
        """log P(evidence | cheat at the design rates) − log P(evidence | this honest engine)."""
        return _bernoulli_llr(c.mismatches, c.tokens, self.token_p0, self.token_p1) + _bernoulli_llr(
            c.exceeding, c.chunks, self.chunk_p0, self.chunk_p1
        )

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
        )


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
    know which batch an audit was served in."""
    every_error = [e for shape in shapes for a in shape for e in a["chunk_errors"]]
    if not every_error:
        raise ValueError(f"no honest chunks to calibrate {name} from")
    limit = max(CHUNK_LIMIT_FLOOR, CHUNK_FACTOR * max(every_error))
    token_p0, chunk_p0, tokens, chunks = TOKEN_FLOOR, CHUNK_FLOOR, 0, 0
    for shape in shapes:
        gaps = [g for a in shape for g in a["gaps"]]
        errors = [e for a in shape for e in a["chunk_errors"]]
        tokens, chunks = tokens + len(gaps), chunks + len(errors)
        token_p0 = max(token_p0, wilson_upper(sum(1 for g in gaps if g > GAP_TIE), len(gaps)))
        chunk_p0 = max(chunk_p0, wilson_upper(sum(1 for e in errors if e > limit), len(errors)))
    return Profile(
        name,
        round(limit, 6),
        round(chunk_p0, 6),
        max(CHUNK_P1, round(2 * chunk_p0, 6)),
        round(token_p0, 6),
        min(0.5, round(TOKEN_RATIO * token_p0, 6)),
        tokens,
        chunks,
    )

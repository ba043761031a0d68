"""Noise for differential privacy: integer-valued, from the operating system's CSPRNG.

Every draw starts from `os.urandom` (the default `RandomBytes`); nothing a requester
chooses or sees (job ids, run ids, addresses) feeds it, and there is no seed to guess.
Tests may inject another byte source to be reproducible; the vault never does.

Textbook floating-point Laplace and Gaussian samplers leak: the set of doubles that
`x + noise` can take depends on `x`, so one output can reveal `x` (Mironov 2012). The
samplers here return integers instead, and the vault adds them to integer statistics
(counts, or sums of values rounded to a fixed grid), so every output lies on a grid that
does not depend on the data:

- `discrete_laplace(b)`: P(k) ∝ exp(-|k|/b), the difference of two geometric variables;
  adding it to an integer statistic of L1 sensitivity Δ is (Δ/b)-DP.
- `discrete_gaussian(σ)`: P(k) ∝ exp(-k²/2σ²), by rejection from the discrete Laplace
  (Canonne, Kamath & Steinke 2020, algorithm 3); adding it to each coordinate of an
  integer vector of L2 sensitivity Δ is (Δ²/2σ²)-zCDP (their theorem 14).

The rejection and geometric steps evaluate exp/log in float64 on 53-bit uniforms, so the
probabilities of the integers drawn are those of the exact distributions up to float64
rounding (about 2⁻⁵³ per draw, and tails beyond about 36 scale units are cut). An exact
rational-arithmetic sampler would remove that residue at a thousandfold cost in Python;
the README states the trade-off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

RandomBytes = Callable[[int], bytes]


def uniform(n: int, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """`n` floats uniform on (0, 1], each from 53 fresh random bits."""
    words = np.frombuffer(random_bytes(8 * n), dtype=np.uint64)[:n] >> np.uint64(11)
    return (words.astype(np.float64) + 1.0) * 2.0**-53


def geometric(p_fail: float, n: int, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """`n` draws of the number of failures before a success, P(k) = (1 - q)·q^k with q = `p_fail`."""
    if not 0.0 <= p_fail < 1.0:
        raise ValueError("geometric needs 0 ≤ q < 1")
    if p_fail == 0.0:
        return np.zeros(n, dtype=np.int64)
    draws: np.ndarray = np.floor(np.log(uniform(n, random_bytes)) / math.log(p_fail)).astype(np.int64)
    return draws


def discrete_laplace(scale: float, n: int, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """`n` integers with P(k) ∝ exp(-|k| / scale)."""
    if not scale > 0 or math.isinf(scale):
        raise ValueError("the discrete Laplace scale must be positive and finite")
    q = math.exp(-1.0 / scale)
    draws: np.ndarray = geometric(q, n, random_bytes) - geometric(q, n, random_bytes)
    return draws


def discrete_gaussian(sigma: float, n: int, random_bytes: RandomBytes = os.urandom) -> np.ndarray:
    """`n` integers with P(k) ∝ exp(-k² / 2σ²) (Canonne, Kamath & Steinke 2020, algorithm 3)."""
    if not sigma > 0 or math.isinf(sigma):
        raise ValueError("the discrete Gaussian sigma must be positive and finite")
    t = math.floor(sigma) + 1
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        want = max(16, int((n - out.size) * 1.5))
        y = discrete_laplace(t, want, random_bytes)
        accept = uniform(want, random_bytes) <= np.exp(-((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma))
        out = np.concatenate([out, y[accept]])
    return out[:n]

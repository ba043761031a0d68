"""Choosing a provider for a request — pure, no I/O, so it can be tested and
benchmarked with thousands of simulated providers.

Each candidate gets a cost-like score (lower is better):

    score = price_weight · price / cheapest
          + latency_weight · expected_delay / smallest expected_delay of the pair
          + load_weight · in_flight / capacity
          + error_weight · error_rate
          − reputation_weight · (reputation − 0.5)

`expected_delay` = latency EWMA × (1 + in_flight) / capacity: when a new request
would be done there (unknown providers start at the pair's mean, so new ones get
traffic). Selection is power-of-two-choices: sample two
candidates (with probability proportional to their throughput, capacity ÷ latency,
so heterogeneous providers are all kept busy) and take the better score; this
spreads load like join-the-shortest-queue without scanning every provider on every
request.
Providers that fail repeatedly are suspended with exponential backoff.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

Preference = Literal["balanced", "cheapest", "fastest"]


@dataclass
class ProviderStats:
    """What the gateway has observed of one provider (mutable, updated per request)."""

    address: str
    price: int  # cost of a reference request, payment-token units
    capacity: int = 8  # requests it serves at once (from /v1/info)
    stake: int = 0
    reputation: float = 0.5  # 0..1, filled in by validators (median of their scores)
    latency_ewma: float | None = None  # seconds
    error_ewma: float = 0.0  # 0..1
    in_flight: int = 0
    failures: int = 0  # consecutive
    suspended_until: float = 0.0

    def record_success(self, latency: float, alpha: float = 0.2) -> None:
        self.latency_ewma = latency if self.latency_ewma is None else (1 - alpha) * self.latency_ewma + alpha * latency
        self.error_ewma *= 1 - alpha
        self.failures = 0

    def record_failure(self, now: float, alpha: float = 0.2, base_backoff: float = 1.0, cap: float = 300.0) -> None:
        self.error_ewma = (1 - alpha) * self.error_ewma + alpha
        self.failures += 1
        if self.failures >= 2:  # one blip is forgiven; repeated failures back off exponentially
            self.suspended_until = now + min(cap, base_backoff * 2 ** (self.failures - 2))


@dataclass(frozen=True)
class RoutingPolicy:
    prefer: Preference = "balanced"
    max_price: int | None = None  # refuse providers whose reference price is above this
    min_stake: int = 0
    price_weight: float = 1.0
    latency_weight: float = 1.0
    load_weight: float = 0.5
    error_weight: float = 4.0
    reputation_weight: float = 1.0

    def weights(self) -> tuple[float, float]:
        if self.prefer == "cheapest":
            return self.price_weight * 4, self.latency_weight / 4
        if self.prefer == "fastest":
            return self.price_weight / 4, self.latency_weight * 4
        return self.price_weight, self.latency_weight


@dataclass
class Router:
    policy: RoutingPolicy = field(default_factory=RoutingPolicy)
    rng: random.Random = field(default_factory=random.Random)
    _cache_key: tuple[int, int, int] = (0, 0, 0)
    _cum: list[float] = field(default_factory=list)
    _uses: int = 0

    def eligible(self, candidates: list[ProviderStats], now: float, exclude: frozenset[str]) -> list[ProviderStats]:
        p = self.policy
        return [
            c
            for c in candidates
            if c.address not in exclude
            and c.suspended_until <= now
            and c.stake >= p.min_stake
            and (p.max_price is None or c.price <= p.max_price)
        ]

    def expected_delay(self, c: ProviderStats, default_latency: float) -> float:
        """Time until a new request would finish there: its latency, stretched by the
        share of its slots already busy (join-the-shortest-expected-delay)."""
        latency = c.latency_ewma if c.latency_ewma is not None else default_latency
        return latency * (1 + c.in_flight) / max(c.capacity, 1)

    def score(self, c: ProviderStats, cheapest: int, fastest: float, default_latency: float) -> float:
        """Lower is better; `fastest` is the smaller expected delay of the pair compared."""
        price_w, latency_w = self.policy.weights()
        return (
            price_w * c.price / max(cheapest, 1)
            + latency_w * self.expected_delay(c, default_latency) / max(fastest, 1e-9)
            + self.policy.load_weight * c.in_flight / max(c.capacity, 1)
            + self.policy.error_weight * c.error_ewma
            - self.policy.reputation_weight * (c.reputation - 0.5)
        )

    def choose(
        self, candidates: list[ProviderStats], now: float, exclude: frozenset[str] = frozenset()
    ) -> ProviderStats | None:
        """Power of two choices among eligible candidates; None if nobody can serve.

        Draws candidates at random and skips ineligible ones (O(1) when most are
        eligible); falls back to filtering the whole list when many are not."""
        n = len(candidates)
        if n == 0:
            return None
        picked: list[ProviderStats] = []
        if n > 8:
            cum = self._cumulative_weights(candidates)
            for c in self.rng.choices(candidates, cum_weights=cum, k=16):
                if self._ok(c, now, exclude) and (not picked or c is not picked[0]):
                    picked.append(c)
                    if len(picked) == 2:
                        break
        if len(picked) < 2:
            pool = self.eligible(candidates, now, exclude)
            if not pool:
                return None
            if len(pool) == 1:
                return pool[0]
            picked = self.rng.sample(pool, 2)
        a, b = picked
        cheapest = min(a.price, b.price)
        known = [c.latency_ewma for c in (a, b) if c.latency_ewma is not None]
        default = sum(known) / len(known) if known else 1.0
        fastest = min(self.expected_delay(a, default), self.expected_delay(b, default))
        return a if self.score(a, cheapest, fastest, default) <= self.score(b, cheapest, fastest, default) else b

    def _cumulative_weights(self, candidates: list[ProviderStats]) -> list[float]:
        """Sampling weights ∝ each provider's throughput (capacity ÷ latency), so a big
        fast provider is offered as often as it can serve; rebuilt every 256 decisions."""
        key = (len(candidates), id(candidates[0]), id(candidates[-1]))
        if key != self._cache_key or self._uses >= 256:
            known = [c.latency_ewma for c in candidates if c.latency_ewma is not None]
            default = sorted(known)[len(known) // 2] if known else 1.0
            total, cum = 0.0, []
            for c in candidates:
                total += max(c.capacity, 1) / max(c.latency_ewma if c.latency_ewma is not None else default, 1e-6)
                cum.append(total)
            self._cache_key, self._cum, self._uses = key, cum, 0
        self._uses += 1
        return self._cum

    def _ok(self, c: ProviderStats, now: float, exclude: frozenset[str]) -> bool:
        p = self.policy
        return (
            c.suspended_until <= now
            and c.address not in exclude
            and c.stake >= p.min_stake
            and (p.max_price is None or c.price <= p.max_price)
        )


def consensus_reputation(scores: list[tuple[int, int]], default: float = 0.5) -> float:
    """Reputation in [0, 1] from validators' (score_bps, stake) pairs, Yuma-style: the
    stake-weighted median is the consensus; scores above it are clipped down to it (a
    few colluding validators cannot inflate a provider); the result is the
    stake-weighted mean of the clipped scores. No scores → `default`."""
    valid = [(s, w) for s, w in scores if w > 0]
    if not valid:
        return default
    total = sum(w for _, w in valid)
    running, median = 0, valid[0][0]
    for s, w in sorted(valid):
        running += w
        if 2 * running >= total:
            median = s
            break
    clipped = sum(min(s, median) * w for s, w in valid)
    return clipped / total / 10_000

"""The routing policy: eligibility, preferences, backoff and load spreading."""

from __future__ import annotations

import random
from collections import Counter

from allmende.core.routing import ProviderStats, Router, RoutingPolicy


def provider(name: str, price: int = 100, latency: float | None = 0.1, capacity: int = 4, **kw: object):
    return ProviderStats(name, price=price, capacity=capacity, stake=10, latency_ewma=latency, **kw)  # type: ignore[arg-type]


def picks(router: Router, pool: list[ProviderStats], n: int = 2000, **kw: object) -> Counter[str]:
    return Counter(router.choose(pool, now=0.0, **kw).address for _ in range(n))  # type: ignore[union-attr, arg-type]


def test_nobody_eligible_gives_none() -> None:
    router = Router(rng=random.Random(1))
    assert router.choose([], 0.0) is None
    assert router.choose([provider("a")], 0.0, frozenset({"a"})) is None


def test_policy_filters_price_and_stake() -> None:
    router = Router(RoutingPolicy(max_price=150, min_stake=5), random.Random(1))
    pool = [provider("cheap"), provider("dear", price=200), ProviderStats("poor", price=10, stake=1)]
    assert set(picks(router, pool)) == {"cheap"}


def test_cheapest_preference_picks_the_cheaper_of_equals() -> None:
    pool = [provider("a", price=100), provider("b", price=130)]
    counts = picks(Router(RoutingPolicy(prefer="cheapest"), random.Random(2)), pool)
    assert counts["a"] > 0.95 * sum(counts.values())


def test_fastest_preference_picks_the_faster_of_equals() -> None:
    pool = [provider("slow", latency=0.5), provider("fast", latency=0.1)]
    counts = picks(Router(RoutingPolicy(prefer="fastest"), random.Random(3)), pool)
    assert counts["fast"] > 0.95 * sum(counts.values())


def test_load_moves_traffic_away_from_a_busy_provider() -> None:
    busy, idle = provider("busy"), provider("idle")
    busy.in_flight = 12
    counts = picks(Router(rng=random.Random(4)), [busy, idle])
    assert counts["idle"] > counts["busy"]


def test_reputation_breaks_ties() -> None:
    good, bad = provider("good", reputation=1.0), provider("bad", reputation=0.0)
    counts = picks(Router(rng=random.Random(5)), [good, bad])
    assert counts["good"] > 0.95 * sum(counts.values())


def test_repeated_failures_suspend_with_backoff() -> None:
    p = provider("flaky")
    p.record_failure(now=100.0)
    assert p.suspended_until == 0.0  # one blip is forgiven
    p.record_failure(now=100.0)
    first = p.suspended_until
    p.record_failure(now=100.0)
    assert first > 100.0 and p.suspended_until - 100.0 == 2 * (first - 100.0)
    router = Router(rng=random.Random(6))
    assert router.choose([p], now=100.5) is None
    assert router.choose([p], now=p.suspended_until) is p
    p.record_success(0.1)
    assert p.failures == 0


def test_success_updates_latency_ewma() -> None:
    p = provider("p", latency=None)
    p.record_success(1.0)
    p.record_success(2.0)
    assert p.latency_ewma == 0.8 * 1.0 + 0.2 * 2.0


def test_big_fast_providers_are_offered_more_often_among_many() -> None:
    pool = [provider(f"small{i}", capacity=1, latency=1.0) for i in range(50)]
    pool.append(provider("big", capacity=8, latency=0.1))  # 80x the throughput of a small one
    counts = picks(Router(rng=random.Random(7)), pool, n=5000)
    assert counts["big"] > 0.3 * 5000


def test_consensus_reputation_is_the_clipped_stake_weighted_score() -> None:
    from allmende.core.routing import consensus_reputation

    assert consensus_reputation([]) == 0.5
    assert consensus_reputation([(10_000, 5)]) == 1.0
    # two honest validators say 20 %; one big-but-minority validator says 100 %: clipped to the median
    assert consensus_reputation([(2_000, 3), (2_000, 3), (10_000, 4)]) == 0.2
    # a low outlier still pulls the mean down (it is not clipped upwards)
    assert 0.6 < consensus_reputation([(9_000, 5), (9_000, 4), (0, 1)]) < 0.9


def test_rate_limiter_allows_burst_then_refills() -> None:
    from allmende.core.ratelimit import RateLimiter

    limiter = RateLimiter(rate=2.0, burst=3.0)
    assert [limiter.allow("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.allow("k", 0.0)
    assert wait == 0.5
    assert limiter.allow("other", 0.0) == 0.0  # keys are independent
    assert limiter.allow("k", 0.5) == 0.0  # refilled one token


def test_rate_limiter_bounds_its_memory() -> None:
    from allmende.core.ratelimit import RateLimiter

    limiter = RateLimiter(rate=1.0, burst=1.0, max_keys=10)
    for i in range(100):
        limiter.allow(f"k{i}", float(i) / 1000)
    assert len(limiter._buckets) <= 10
    assert RateLimiter(rate=0, burst=0).allow("x", 0.0) == 0.0


def test_a_flood_of_new_keys_does_not_reset_a_limited_key() -> None:
    from allmende.core.ratelimit import RateLimiter

    # Prepare: a full table of 3; two keys have refilled by t=5, "hot" has just spent its token
    limiter = RateLimiter(rate=1.0, burst=1.0, max_keys=3)
    limiter.allow("old-1", 0.0)
    limiter.allow("old-2", 0.0)
    limiter.allow("hot", 5.0)

    # Execute: a new key arrives while the table is full
    assert limiter.allow("new", 5.0) == 0.0

    # Assert: only the refilled buckets were forgotten, so "hot" is still limited
    assert set(limiter._buckets) == {"hot", "new"}
    assert limiter.allow("hot", 5.0) == 1.0

"""The routing policy with 1,000 simulated providers — in process, no sockets.

Providers differ in speed (service time 20 ms … 2 s per request) and capacity (1 … 8
concurrent requests). Requests arrive as a Poisson stream at `load` × the network's
total service rate; each is routed with `Router.choose`, queues at the chosen
provider if all its slots are busy, and updates the provider's latency EWMA and
in-flight count like the gateway does.

Reports:
- `us_per_decision`: mean time of one routing decision;
- `capacity_used`: requests completed per second ÷ the most the network can complete
  per second (Σ capacity ÷ service time), after a warm-up, under saturation (offered
  load 1.2: more arrives than the network can serve);
- `p99_over_ideal`: p99 of (latency ÷ the chosen provider's bare service time);
  1.0 would mean no request ever waited.

    python bench/router.py [--providers 1000] [--requests 200000] [--json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import time
from collections import deque
from typing import Any

from rich.console import Console
from rich.table import Table

from allmende.core.routing import ProviderStats, Router, RoutingPolicy


def simulate(providers: int, requests: int, load: float, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    stats, service, capacity = [], [], []
    for i in range(providers):
        s = 10 ** rng.uniform(-1.7, 0.3)  # 20 ms .. 2 s
        c = rng.randint(1, 8)
        service.append(s)
        capacity.append(c)
        stats.append(ProviderStats(f"p{i}", price=rng.randint(90, 110), capacity=c, stake=1, reputation=0.5))
    index = {s.address: i for i, s in enumerate(stats)}
    total_rate = sum(c / s for c, s in zip(capacity, service, strict=True))
    router = Router(RoutingPolicy(), random.Random(seed + 1))
    queues: list[deque[float]] = [deque() for _ in range(providers)]
    busy = [0] * providers
    events: list[tuple[float, int, int, float]] = []  # (finish time, seq, provider, arrival time)
    now, seq, done, decision_ns, ratios = 0.0, 0, 0, 0, []
    busy_slots, last_t, busy_area, warm_at, done_after_warm = 0, 0.0, 0.0, None, 0
    slots = sum(capacity)

    def account(t: float) -> None:
        nonlocal last_t, busy_area
        if warm_at is not None:
            busy_area += busy_slots * (t - max(last_t, warm_at))
        last_t = t

    def start(i: int, arrival: float, at: float) -> None:
        nonlocal seq, busy_slots
        account(at)
        busy_slots += 1
        busy[i] += 1
        seq += 1
        heapq.heappush(events, (at + service[i], seq, i, arrival))

    def finish_until(t: float) -> None:
        nonlocal done, busy_slots, done_after_warm
        while events and events[0][0] <= t:
            end, _, i, arrival = heapq.heappop(events)
            account(end)
            busy_slots -= 1
            busy[i] -= 1
            stats[i].in_flight -= 1
            stats[i].record_success(end - arrival)
            ratios.append((end - arrival) / service[i])
            done += 1
            if warm_at is not None:
                done_after_warm += 1
            if queues[i]:
                start(i, queues[i].popleft(), end)

    for n in range(requests):
        if n == requests // 5:
            warm_at = now  # measure utilisation after a warm-up fifth
        now += rng.expovariate(total_rate * load)
        finish_until(now)
        t0 = time.perf_counter_ns()
        chosen = router.choose(stats, now)
        decision_ns += time.perf_counter_ns() - t0
        assert chosen is not None
        i = index[chosen.address]
        chosen.in_flight += 1
        if busy[i] < capacity[i]:
            start(i, now, now)
        else:
            queues[i].append(now)
    account(now)
    horizon = now - (warm_at or 0.0)
    ratios.sort()
    return {
        "providers": providers,
        "requests": requests,
        "load": load,
        "us_per_decision": round(decision_ns / requests / 1000, 2),
        "capacity_used": round(done_after_warm / (total_rate * horizon), 4),
        "slot_utilisation": round(busy_area / (slots * horizon), 4),
        "completed": done,
        "p50_over_ideal": round(ratios[len(ratios) // 2], 2),
        "p99_over_ideal": round(ratios[int(len(ratios) * 0.99)], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="routing policy with simulated providers")
    parser.add_argument("--providers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [simulate(args.providers, args.requests, load) for load in (0.5, 0.9, 1.2)]
    saturated = rows[-1]
    result = {
        "us_per_decision": saturated["us_per_decision"],
        "capacity_used": saturated["capacity_used"],
        "p99_over_ideal": saturated["p99_over_ideal"],
        "goals": {"us_per_decision": 50, "capacity_used": 0.95},
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title=f"power-of-two routing, {args.providers} simulated providers, {args.requests:,} requests")
    for column in ("offered load", "µs / decision", "capacity used", "p50 ÷ ideal", "p99 ÷ ideal"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            f"{r['load']:.1f}",
            f"{r['us_per_decision']:.1f}",
            f"{r['capacity_used']:.1%}",
            f"{r['p50_over_ideal']:.2f}",
            f"{r['p99_over_ideal']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()

"""Latency added by gateway + provider over calling the engine directly, and throughput
through the gateway at concurrency 1, 8 and 32.

Starts `allmende up --providers 1 --model allmende:tiny` (anvil, one provider process,
the gateway process), then sends OpenAI chat requests over loopback HTTP (greedy, 16
new tokens). `added_ms_p50` = p50 through the gateway − p50 of the engine in process,
at concurrency 1. The gateway path includes routing, a voucher per request, sealing
both ways, the provider's checks, receipt signing and checking, and two HTTP hops.

    python bench/gateway.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from allmende.testing.network import start_network, stop_network

sys.path.insert(0, str(Path(__file__).parent))
from provider import BODY, direct, percentile


def through_gateway(url: str, requests: int, concurrency: int) -> tuple[list[float], float, int]:
    http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))
    body = {**BODY, "model": "allmende:tiny"}

    def one() -> tuple[float, int]:
        start = time.perf_counter()
        reply = http.post(f"{url}/chat/completions", json=body)
        elapsed = (time.perf_counter() - start) * 1000
        reply.raise_for_status()
        return elapsed, reply.json()["usage"]["completion_tokens"]

    one()  # warm-up: opens the payment channel
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: one(), range(requests)))
    wall = time.perf_counter() - start
    return [r[0] for r in results], wall, sum(r[1] for r in results)


def measure(requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "allmende:tiny", "max_tokens": 16, "requests": requests, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, network = start_network(root, "--providers", "1", "--model", "allmende:tiny")
        try:
            url = network["gateway_url"]
            for concurrency in (1, 8, 32):
                for name in ("direct", "gateway"):
                    if name == "direct":
                        lat, wall, toks = direct(requests, concurrency)
                    else:
                        lat, wall, toks = through_gateway(url, requests, concurrency)
                    out["rows"].append(
                        {
                            "path": name,
                            "concurrency": concurrency,
                            "p50_ms": round(statistics.median(lat), 2),
                            "p99_ms": round(percentile(lat, 0.99), 2),
                            "tokens_per_s": round(toks / wall, 1),
                            "requests_per_s": round(len(lat) / wall, 1),
                        }
                    )
        finally:
            stop_network(proc)
    rows = {(r["path"], r["concurrency"]): r for r in out["rows"]}
    out["added_ms_p50"] = round(rows[("gateway", 1)]["p50_ms"] - rows[("direct", 1)]["p50_ms"], 2)
    out["added_ms_p99"] = round(rows[("gateway", 1)]["p99_ms"] - rows[("direct", 1)]["p99_ms"], 2)
    out["goal_added_ms_p50"] = 3.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway + provider overhead vs the engine")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.requests)
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title=f"allmende:tiny via the gateway, 16 new tokens, {args.requests} requests per row")
    for column in ("path", "concurrency", "p50 ms", "p99 ms", "tokens/s", "requests/s"):
        table.add_column(column, justify="right")
    for r in result["rows"]:
        table.add_row(
            r["path"],
            str(r["concurrency"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['requests_per_s']:.1f}",
        )
    Console().print(table)
    print(
        f"added by gateway + provider at concurrency 1: p50 {result['added_ms_p50']} ms, "
        f"p99 {result['added_ms_p99']} ms (goal p50 ≤ 3 ms)"
    )


if __name__ == "__main__":
    main()

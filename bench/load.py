"""Load and soak: N concurrent clients drive the gateway for T seconds over loopback.

Starts `allmende up --providers 3 --model allmende:tiny`, then each client loops: a
chat request (every second one streaming), 16 new tokens. Reports throughput, p50/p99
latency, errors, and the resident memory of the gateway and providers at the start
and the end (`rss_growth_pct`, measured after a warm-up fifth of the run).

    python bench/load.py [--clients 16] [--seconds 30] [--json]
    python bench/load.py --soak            # 10 minutes
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from allmende.testing.network import start_network, stop_network


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(clients: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, network = start_network(root, "--providers", "3", "--model", "allmende:tiny")
        try:
            pids = {"gateway": network["gateway_pid"]} | {
                f"provider-{i + 1}": p["pid"] for i, p in enumerate(network["providers"])
            }
            url = network["gateway_url"] + "/chat/completions"
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            stop_at = time.monotonic() + seconds
            warm_at = time.monotonic() + seconds / 5
            rss_start: dict[str, int] = {}

            def client(n: int) -> None:
                # each client is its own API key, as real users are: per-key rate limits apply to each
                http = httpx.Client(timeout=120, headers={"authorization": f"Bearer load-client-{n}"})
                i = 0
                while time.monotonic() < stop_at:
                    body = {
                        "model": "allmende:tiny",
                        "messages": [{"role": "user", "content": f"Hallo {n}-{i}"}],
                        "max_tokens": 16,
                        "stream": i % 2 == 1,
                    }
                    started = time.perf_counter()
                    try:
                        if body["stream"]:
                            with http.stream("POST", url, json=body) as reply:
                                text = "".join(reply.iter_lines())
                                ok = reply.status_code == 200 and "[DONE]" in text and '"error"' not in text
                        else:
                            reply = http.post(url, json=body)
                            ok = reply.status_code == 200
                        elapsed = time.perf_counter() - started
                        with lock:
                            if ok:
                                latencies.append(elapsed)
                            else:
                                errors.append(f"status {reply.status_code}")
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(type(exc).__name__)
                    i += 1

            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(max(0.0, warm_at - time.monotonic()))
            rss_start = {name: rss_kib(pid) for name, pid in pids.items()}
            for t in threads:
                t.join()
            wall = time.monotonic() - started
            rss_end = {name: rss_kib(pid) for name, pid in pids.items()}
        finally:
            stop_network(proc)
    ordered = sorted(latencies)
    growth = max((rss_end[k] - rss_start[k]) / max(rss_start[k], 1) * 100 for k in rss_start)
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1) if ordered else None,
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1) if ordered else None,
        "rss_start_kib": rss_start,
        "rss_end_kib": rss_end,
        "rss_growth_pct": round(growth, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway load and soak test")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--soak", action="store_true", help="run for 10 minutes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.clients, 600.0 if args.soak else args.seconds)
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title=f"{result['clients']} clients for {result['seconds']} s through the gateway (3 providers)")
    for key in ("requests", "errors", "requests_per_s", "p50_ms", "p99_ms", "rss_growth_pct"):
        table.add_row(key, str(result[key]))
    Console().print(table)
    print(
        "RSS KiB start → end:",
        {k: (result["rss_start_kib"][k], result["rss_end_kib"][k]) for k in result["rss_start_kib"]},
    )


if __name__ == "__main__":
    main()

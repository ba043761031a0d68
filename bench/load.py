"""Load and soak: N concurrent clients drive the gateway for T seconds over loopback.

Starts `allmende up --providers 3 --model allmende:tiny`, then each client loops: a
chat request (every second one streaming), 16 new tokens. Reports throughput, p50/p99
latency, errors, and the resident memory of the gateway and providers at the start
and the end (`rss_growth_pct`, measured after a warm-up fifth of the run).

    python bench/load.py [--clients 16] [--seconds 30] [--json]
    python bench/load.py --soak            # 10 minutes
    python bench/load.py --mixed [--clients 64] [--seconds 120] [--json]

`--mixed` is the payments-under-load run: `allmende up --providers 2` (allmende:tiny and
MiniLM), each client uses the official `openai` client with `max_retries=0` and cycles
through chat, streamed chat, completions and embeddings (a quarter each); errors are
reported by kind and status. Goal: 0 failed requests.
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


def run_mixed(clients: int, seconds: float) -> dict[str, Any]:
    from openai import APIStatusError, OpenAI

    kinds = ("chat", "stream", "completion", "embedding")
    with tempfile.TemporaryDirectory() as tmp:
        proc, network = start_network(Path(tmp), "--providers", "2", "--model", "allmende:tiny", "--model", "minilm")
        try:
            latencies: dict[str, list[float]] = {k: [] for k in kinds}
            errors: dict[str, int] = {}
            lock = threading.Lock()
            stop_at = time.monotonic() + seconds

            def one(client: OpenAI, kind: str, tag: str) -> bool:
                if kind == "chat":
                    reply = client.chat.completions.create(
                        model="allmende:tiny", messages=[{"role": "user", "content": f"Hallo {tag}"}], max_tokens=16
                    )
                    return bool(reply.choices[0].finish_reason)
                if kind == "stream":
                    stream = client.chat.completions.create(
                        model="allmende:tiny",
                        messages=[{"role": "user", "content": f"Erzähl {tag}"}],
                        max_tokens=16,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    chunks = list(stream)
                    return any(c.usage for c in chunks) and any(
                        c.choices and c.choices[0].finish_reason for c in chunks
                    )
                if kind == "completion":
                    completion = client.completions.create(model="allmende:tiny", prompt=f"Es war {tag}", max_tokens=16)
                    return bool(completion.choices[0].finish_reason)
                vectors = client.embeddings.create(model="minilm", input=[f"the commons {tag}", "allmende"])
                return len(vectors.data) == 2

            def client(n: int) -> None:
                openai = OpenAI(base_url=network["gateway_url"], api_key=f"load-{n}", max_retries=0, timeout=300)
                i = 0
                while time.monotonic() < stop_at:
                    kind = kinds[(n + i) % 4]
                    started = time.perf_counter()
                    try:
                        ok = one(openai, kind, f"{n}-{i}")
                        what = f"{kind}: empty answer"
                    except APIStatusError as exc:
                        ok, what = False, f"{kind}: {exc.status_code}"
                    except Exception as exc:
                        ok, what = False, f"{kind}: {type(exc).__name__}"
                    with lock:
                        if ok:
                            latencies[kind].append(time.perf_counter() - started)
                        else:
                            errors[what] = errors.get(what, 0) + 1
                    i += 1

            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
        finally:
            stop_network(proc)

    def pct(values: list[float], q: float) -> float | None:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1) if ordered else None

    done = sum(len(v) for v in latencies.values())
    return {
        "workload": "mixed",
        "providers": 2,
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": done,
        "failed": sum(errors.values()),
        "errors_by_kind_and_status": errors,
        "requests_per_s": round(done / wall, 1),
        "by_kind": {
            k: {"requests": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)} for k, v in latencies.items()
        },
    }


def print_mixed(result: dict[str, Any]) -> None:
    table = Table(
        title=f"mixed load: {result['clients']} clients, {result['seconds']} s, 2 providers, openai client, no retries"
    )
    for column in ("kind", "requests", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "kind" else "left")
    for kind, row in result["by_kind"].items():
        table.add_row(kind, str(row["requests"]), str(row["p50_ms"]), str(row["p99_ms"]))
    table.add_row("all", str(result["requests"]), "", "")
    Console().print(table)
    print(
        f"failed requests: {result['failed']} {result['errors_by_kind_and_status']}; {result['requests_per_s']} req/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway load and soak test")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--soak", action="store_true", help="run for 10 minutes")
    parser.add_argument("--mixed", action="store_true", help="chat/stream/completion/embedding, openai client")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.mixed:
        clients = args.clients if args.clients != 16 else 64
        seconds = args.seconds if args.seconds != 30.0 else 120.0
        mixed = run_mixed(clients, seconds)
        if args.json:
            print(json.dumps(mixed))
        else:
            print_mixed(mixed)
        return
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

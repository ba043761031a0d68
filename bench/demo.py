"""The chat model as `make demo` serves it, through the whole network, with each engine.

Starts `allmende up --providers 2` with the default models (SmolLM2-135M-Instruct and MiniLM)
once per engine: `--engine auto` (what providers run by default: llama.cpp for the GGUF chat
model, with `up` sharing the cores out between its two providers) and `--engine transformers`
(the reference). Then sends OpenAI chat requests to the gateway over loopback HTTP, greedy, 64
new tokens, at concurrency 1, 4 and 16, and reports tokens/s and time per request. The path
includes routing, a voucher per request, end-to-end sealing, the provider's checks, receipts
and two HTTP hops; the engines differ only in what runs the forward passes.

    python bench/demo.py [--rounds N] [--json]
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

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 64
CONCURRENCY = (1, 4, 16)
QUESTIONS = (
    "Write a short poem about the sea.",
    "Explain in a few sentences how a bicycle stays upright.",
    "What should I pack for a weekend in the mountains?",
    "Tell me about the history of bread.",
)


def measure_engine(engine: str, rounds: int) -> list[dict[str, Any]]:
    """Rows for one engine: at each concurrency, `rounds` × concurrency requests."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        options = [] if engine == "auto" else [f"--provider-option=--engine={engine}"]  # auto: as make demo runs
        proc, network = start_network(Path(tmp), "--providers", "2", *options)
        http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))
        url = network["gateway_url"]

        def one(i: int) -> tuple[float, int]:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }
            start = time.perf_counter()
            reply = http.post(f"{url}/chat/completions", json=body)
            if reply.status_code != 200:
                raise SystemExit(f"{engine}: request {i} got {reply.status_code}: {reply.text[:500]}")
            return time.perf_counter() - start, reply.json()["usage"]["completion_tokens"]

        try:
            for i in range(2):
                one(i)  # warm-up: opens the payment channels to both providers
            for concurrency in CONCURRENCY:
                n = rounds * concurrency
                start = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    results = list(pool.map(one, range(n)))
                wall = time.perf_counter() - start
                tokens = sum(r[1] for r in results)
                rows.append(
                    {
                        "engine": engine,
                        "concurrency": concurrency,
                        "requests": n,
                        "tokens": tokens,
                        "tokens_per_s": round(tokens / wall, 1),
                        "p50_s": round(statistics.median(r[0] for r in results), 3),
                    }
                )
        finally:
            http.close()
            stop_network(proc)
    return rows


def measure(rounds: int) -> dict[str, Any]:
    rows = measure_engine("auto", rounds) + measure_engine("transformers", rounds)
    by = {(r["engine"], r["concurrency"]): r["tokens_per_s"] for r in rows}
    return {
        "model": MODEL,
        "providers": 2,
        "max_tokens": MAX_TOKENS,
        "rounds": rounds,
        "rows": rows,
        "auto_over_transformers": {c: round(by[("auto", c)] / by[("transformers", c)], 2) for c in CONCURRENCY},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="the demo network's chat model, llama.cpp (auto) vs transformers")
    parser.add_argument("--rounds", type=int, default=3, help="requests per row = rounds × concurrency")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title=f"{MODEL} through the gateway, 2 providers, {MAX_TOKENS} new tokens, greedy")
    for column in ("engine", "concurrency", "requests", "tokens/s", "p50 s per request"):
        table.add_column(column, justify="right")
    for r in result["rows"]:
        table.add_row(
            r["engine"], str(r["concurrency"]), str(r["requests"]), f"{r['tokens_per_s']:.1f}", f"{r['p50_s']:.2f}"
        )
    console = Console()
    console.print(table)
    ratios = ", ".join(f"{c}: {v:.2f}" for c, v in result["auto_over_transformers"].items())
    console.print(f"auto (llama.cpp) ÷ transformers, tokens/s by concurrency: {ratios}")


if __name__ == "__main__":
    sys.exit(main())

"""Latency and throughput through the provider HTTP API vs calling the engine directly.

Both sides serve the built-in `allmende:tiny` model with the same sampling (greedy,
16 new tokens). The provider path adds: X25519+ChaCha20 sealing both ways, voucher
verification and storage, the credit rule, receipt signing, SQLite and loopback HTTP.
`added_ms_p50` = p50 through the provider − p50 direct, at concurrency 1.

    python bench/provider.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from allmende.api.canonical import prompt_of
from allmende.api.client import PayerKey, build_envelope, fetch_info, infer
from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts, free_port
from allmende.core import Voucher, sign_voucher
from allmende.engine import SamplingParams, collect, load_engine
from allmende.node.supervisor import allmende_command, start

BODY = {"messages": [{"role": "user", "content": "Erzähl mir etwas."}], "max_tokens": 16, "temperature": 0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def direct(requests: int, concurrency: int) -> tuple[list[float], float, int, float]:
    """Latencies (ms), wall time (s), tokens and the CPU seconds this process spent (every
    thread: the engine's scheduler and the event loop) on `requests` in-process requests."""
    engine = load_engine("allmende:tiny", max_concurrency=concurrency)
    ids = engine.prompt_ids(prompt_of("chat", BODY))
    params = SamplingParams(max_tokens=16, temperature=0)

    async def one() -> tuple[float, int]:
        start = time.perf_counter()
        gen = await collect(engine.generate(ids, params), len(ids))
        return (time.perf_counter() - start) * 1000, gen.completion_tokens

    async def run() -> tuple[list[tuple[float, int]], float, float]:
        await one()  # warm-up
        slots = asyncio.Semaphore(concurrency)

        async def bounded() -> tuple[float, int]:
            async with slots:
                return await one()

        start, cpu = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(bounded() for _ in range(requests)))
        return list(results), time.perf_counter() - start, time.process_time() - cpu

    results, wall, cpu = asyncio.run(run())
    return [r[0] for r in results], wall, sum(r[1] for r in results), cpu


def through_provider(url: str, node: Anvil, deployment: Any, payer: Any, requests: int, concurrency: int):
    contracts = Contracts(ChainClient(node.url, payer.key), deployment)
    contracts.stable.approve(contracts.channels.address)
    http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))
    info = fetch_info(http, url)
    model = bytes.fromhex(info.models[0]["model_id"][2:])
    receipt_domain, voucher_domain = contracts.registry.receipt_domain(), contracts.channels.voucher_domain()
    # one channel per worker thread, as a gateway would keep one per provider and payer
    channels = [contracts.channels.open(info.address, 10**9) for _ in range(concurrency)]
    owed = dict.fromkeys(channels, 0)
    signer = PayerKey(payer.key, voucher_domain)

    def one(channel: bytes) -> tuple[float, int]:
        voucher = None
        if owed[channel]:
            voucher = sign_voucher(Voucher(channel, model, owed[channel]), voucher_domain, payer.key)
        start = time.perf_counter()
        rid, env, sealer = build_envelope(info, model, "chat", BODY, signer, channel, voucher)
        answer = infer(http, url, info, receipt_domain, env, sealer, rid)
        elapsed = (time.perf_counter() - start) * 1000
        owed[channel] += answer.receipt.receipt.amount
        return elapsed, answer.usage["completion_tokens"]

    one(channels[0])  # warm-up
    per_worker = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    def worker(i: int) -> list[tuple[float, int]]:
        return [one(channels[i]) for _ in range(per_worker[i])]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for batch in pool.map(worker, range(concurrency)) for r in batch]
    wall = time.perf_counter() - start
    return [r[0] for r in results], wall, sum(r[1] for r in results)


def measure(requests: int) -> dict[str, Any]:
    deployer, provider, payer = devnet_accounts(3)
    out: dict[str, Any] = {"model": "allmende:tiny", "max_tokens": 16, "requests": requests, "rows": []}
    with Anvil() as node, tempfile.TemporaryDirectory() as tmp:
        deployment = deploy_all(ChainClient(node.url, deployer.key), fund=[provider.address, payer.address])
        path = Path(tmp) / "deployments.json"
        deployment.save(path)
        port = free_port()
        command = allmende_command(
            "provider", "--rpc", node.url, "--key", "devnet:1", "--deployments", str(path),
            "--state-dir", str(Path(tmp) / "p"), "--port", str(port), "--model", "allmende:tiny",
            "--claim-models", "--max-concurrency", "8", "--credit-limit", str(10**9),
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        provider_node = start("provider", command, Path(tmp) / "provider.log", url, timeout=180)
        try:
            for concurrency in (1, 8):
                for path_name, fn in (("direct", None), ("provider", through_provider)):
                    if fn is None:
                        lat, wall, toks, _ = direct(requests, concurrency)
                    else:
                        lat, wall, toks = fn(url, node, deployment, payer, requests, concurrency)
                    out["rows"].append(
                        {
                            "path": path_name,
                            "concurrency": concurrency,
                            "p50_ms": round(statistics.median(lat), 2),
                            "p99_ms": round(percentile(lat, 0.99), 2),
                            "tokens_per_s": round(toks / wall, 1),
                            "requests_per_s": round(len(lat) / wall, 1),
                        }
                    )
        finally:
            provider_node.stop()
    rows = {(r["path"], r["concurrency"]): r for r in out["rows"]}
    out["added_ms_p50"] = round(rows[("provider", 1)]["p50_ms"] - rows[("direct", 1)]["p50_ms"], 2)
    out["added_ms_p50_c8"] = round(rows[("provider", 8)]["p50_ms"] - rows[("direct", 8)]["p50_ms"], 2)
    out["goal_added_ms_p50"] = 3.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="provider overhead vs the engine")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.requests)
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title=f"allmende:tiny, {result['max_tokens']} new tokens, {args.requests} requests per row")
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
        f"added p50 at concurrency 1: {result['added_ms_p50']} ms (goal ≤ 3 ms); at 8: {result['added_ms_p50_c8']} ms"
    )


if __name__ == "__main__":
    main()

"""Pipeline stages: tokens/s and time to first token through 1, 2 and 3 stages of the default
model (SmolLM2-135M-Instruct, fp32, on this machine's CPU), at 1 and `--sessions` concurrent
sessions, and a model of the same pipeline at internet scale.

Measured: the stage apps (allmende.provider.stage_app) behind httpx's ASGI transport, in one
process, driven by the router (allmende.payer.stages) with real wire messages (safetensors)
but no sockets. Every session generates `--tokens` greedy tokens after a chat prompt. TTFT is
the median over sessions of the time to the first token; tokens/s is all tokens over the wall
time. Each stage engine batches the calls of concurrent sessions into one forward pass per
step (`StageEngine`); the table says how many passes each stage ran over two or more sessions
and its largest batch (the stage route awaits its call's pass without holding a worker thread,
so every session's call reaches the engine).

The machine is shared with other agents' test runs: the load average before and after is
printed with the figures, and only their shape means anything.

Modelled (`--json` includes it): a 70B Llama-class model (80 blocks, hidden 8,192, fp16
weights, 140 GB) split over N consumer GPUs (RTX 4090 class: 24 GB, ~1 TB/s memory bandwidth)
in different places. Per generated token of one session, each stage reads its weights once
(decode is memory-bound: bytes / bandwidth / efficiency) and each hop sends one hidden state
(8,192 × 2 bytes = 16 KB) over a link of given latency and bandwidth. Assumptions are the
parameters of `internet_model` and are printed with the result.

    python bench/stages.py [--tokens 16] [--sessions 16] [--layouts 1,2,3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import httpx
import torch

from allmende.core.stages import StageLayout
from allmende.engine import DEFAULT_CHAT_MODEL, load_engine, resolve_model
from allmende.engine.base import ChatPrompt
from allmende.engine.stages import StageEngine, stage_layout
from allmende.payer.stages import StageOffer, StageRouter, StageSession
from allmende.provider.stage_app import create_stage_app

PROMPTS = [
    "What is the capital of France?",
    "Write two sentences about the sea.",
    "Name three colours.",
    "What is 2 + 2?",
]


async def measure(
    layout: StageLayout, engines: list[StageEngine], prompts: list[list[int]], tokens: int
) -> dict[str, float]:
    before = [(e.batched_steps, e.steps) for e in engines]
    mounts = {f"http://stage{i}": httpx.ASGITransport(create_stage_app(e)) for i, e in enumerate(engines)}
    offers = [StageOffer(spec, f"http://stage{i}") for i, spec in enumerate(layout.stages)]
    async with httpx.AsyncClient(mounts=mounts) as client:  # type: ignore[arg-type]
        first: list[float] = []
        began = time.perf_counter()

        async def one(prompt: list[int]) -> int:
            session = StageSession(StageRouter(layout, offers), client)
            start, n = time.perf_counter(), 0
            async for _ in session.generate(prompt, tokens):
                if n == 0:
                    first.append(time.perf_counter() - start)
                n += 1
            await session.close()
            return n

        counts = await asyncio.gather(*(one(p) for p in prompts))
        wall = time.perf_counter() - began
    return {
        "tokens_per_s": sum(counts) / wall,
        "ttft_s": statistics.median(first),
        "tokens": float(sum(counts)),
        "passes": float(sum(e.steps - s for e, (_, s) in zip(engines, before, strict=True))),
        "batched_passes": float(sum(e.batched_steps - b for e, (b, _) in zip(engines, before, strict=True))),
        "largest_batch": float(max(e.largest_batch for e in engines)),
    }


def internet_model(
    n_gpus: int,
    params_bytes: float = 140e9,  # 70B parameters in fp16
    hidden_bytes: float = 8192 * 2,  # one fp16 hidden state per hop per token
    gpu_bandwidth: float = 1.0e12,  # bytes/s of GPU memory (RTX 4090: 1,008 GB/s)
    efficiency: float = 0.6,  # share of peak bandwidth a decode step reaches at batch 1
    rtt_s: float = 0.040,  # round trip between two volunteers' hosts on one continent
    link_bps: float = 50e6 / 8,  # bytes/s upstream of a home connection (50 Mbit/s)
    overhead_s: float = 0.002,  # per hop: serialisation, sealing, scheduling
) -> dict[str, float]:
    """Seconds per generated token of one session through `n_gpus` stages, and where they go.
    The client sends each stage's input and receives its output, as the router here does
    (one round trip per hop, Petals' client-driven scheme); the hidden state crosses the
    slowest link once each way."""
    compute = params_bytes / (gpu_bandwidth * efficiency)  # the whole model's weights read once
    network = n_gpus * (rtt_s + 2 * hidden_bytes / link_bps)
    overhead = n_gpus * overhead_s
    per_token = compute + network + overhead
    return {
        "gpus": n_gpus,
        "weights_per_gpu_gb": params_bytes / n_gpus / 1e9,
        "compute_s": compute,
        "network_s": network,
        "overhead_s": overhead,
        "tokens_per_s_per_session": 1 / per_token,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--layouts", default="1,2,3", help="numbers of stages to measure, comma-separated")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch's intra-op threads (1: on this shared 2-core machine two OpenMP threads made a 16-row "
        "matmul 10-40 times slower than one, waiting on each other)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    resolved = resolve_model(DEFAULT_CHAT_MODEL, progress=False)
    whole = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1)
    prompts = [whole.prompt_ids(ChatPrompt.of([{"role": "user", "content": p}])) for p in PROMPTS]
    rows: list[dict[str, Any]] = []
    for n_stages in (int(n) for n in args.layouts.split(",")):
        layout = stage_layout(resolved.path, resolved.model_id, n_stages)
        engines = [StageEngine(resolved.path, spec) for spec in layout.stages]
        asyncio.run(measure(layout, engines, prompts * 2, 3))  # warm-up: the kernels' first shapes, untimed
        for sessions in (1, args.sessions):
            chosen = [prompts[i % len(prompts)] for i in range(sessions)]
            result = asyncio.run(measure(layout, engines, chosen, args.tokens))
            rows.append({"stages": n_stages, "sessions": sessions, **result, "load": os.getloadavg()[0]})
    model = [internet_model(n) for n in (8, 12, 20)]
    load_after = os.getloadavg()[0]
    if args.json:
        print(
            json.dumps(
                {"measured": rows, "internet_70b": model, "load": [load_before, load_after], "threads": args.threads}
            )
        )
        return
    threads = f"{args.threads} torch thread(s)"
    print(f"stages of {DEFAULT_CHAT_MODEL} on this CPU ({os.cpu_count()} cores, shared; {threads})")
    print(f"{'stages':>6} {'sessions':>8} {'tokens/s':>9} {'TTFT s':>7} {'passes':>7} {'batched':>8} {'load':>5}")
    for r in rows:
        print(
            f"{r['stages']:>6} {r['sessions']:>8} {r['tokens_per_s']:>9.2f} {r['ttft_s']:>7.3f} {r['passes']:>7.0f} "
            f"{r['batched_passes']:>8.0f} {r['load']:>5.1f}"
        )
    print(f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after")
    print("\nmodel: 70B fp16 over N consumer GPUs, one session (assumptions: see internet_model)")
    print(f"{'GPUs':>5} {'GB/GPU':>7} {'compute s':>10} {'network s':>10} {'tokens/s':>9}")
    for m in model:
        print(
            f"{m['gpus']:>5} {m['weights_per_gpu_gb']:>7.1f} {m['compute_s']:>10.3f} {m['network_s']:>10.3f} "
            f"{m['tokens_per_s_per_session']:>9.2f}"
        )


if __name__ == "__main__":
    main()

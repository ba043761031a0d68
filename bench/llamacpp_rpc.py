"""llama.cpp RPC (`--llamacpp-rpc`): the default chat model on this host's CPU alone against
the same model spread over this host and 1 or 2 `ggml-rpc-server`s on localhost.

The llama.cpp engine as a provider runs it (F16 weights by default, greedy), one llama.cpp
thread here and one per server (`-t 1`), at 1 and `--sessions` concurrent sessions of
`--tokens` tokens each (ignore_eos, so every run draws the same count); tokens/s is all tokens
over the wall time, TTFT the median time to the first token. On localhost the "network" is the
loopback device: what this measures is the cost of the RPC protocol (a graph split per device,
a round trip per split and step, the logits of every step sent back from the last server), not
a LAN's latency, and three processes share this machine's cores. The 1-minute load average is
printed with every row: the machine is shared, and only the ratios mean anything.

    python bench/llamacpp_rpc.py [--tokens 32] [--sessions 8] [--servers 0,1,2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, resolve_model
from allmende.engine.llamacpp import LlamaCppEngine
from allmende.testing.rpc_servers import RpcServer

QUESTIONS = (
    "Write a short poem about the sea.",
    "Explain in a few sentences how a bicycle stays upright.",
    "What should I pack for a weekend in the mountains?",
    "Tell me about the history of bread.",
)


def engine(endpoints: tuple[str, ...], sessions: int) -> LlamaCppEngine:
    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    return LlamaCppEngine(
        DEFAULT_CHAT_MODEL, resolved.gguf, resolved.path, resolved.gguf_id, sessions, threads=1, rpc=endpoints
    )


async def run(model: LlamaCppEngine, sessions: int, tokens: int) -> dict[str, Any]:
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    model.scheduler.drop_parked()  # every prompt prefilled whole
    prompts = [
        model.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": f"{QUESTIONS[i % 4]} ({i})"}]}))
        for i in range(sessions)
    ]
    started = time.monotonic()
    drawn = 0

    ttft: list[float] = []

    async def timed(prompt: list[int]) -> None:
        nonlocal drawn
        began = None
        async for event in model.generate(prompt, params):
            if event.token_id is not None:
                drawn += 1
                if began is None:
                    began = time.monotonic() - started
                    ttft.append(began)

    await asyncio.gather(*(timed(p) for p in prompts))
    wall = time.monotonic() - started
    return {
        "sessions": sessions,
        "tokens": drawn,
        "tokens_per_s": round(drawn / wall, 2),
        "ttft_s": round(statistics.median(ttft), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--servers", default="0,1,2", help="RPC server counts to measure (0: this host alone)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rpc-bench-"))
    rows: list[dict[str, Any]] = []
    for count in (int(c) for c in args.servers.split(",")):
        servers = [RpcServer(logs / f"{count}-{i}.log") for i in range(count)]
        try:
            model = engine(tuple(s.endpoint for s in servers), args.sessions)
            asyncio.run(run(model, 1, 4))  # warm up: the first pass allocates the graphs
            for sessions in (1, args.sessions):
                load = os.getloadavg()[0]
                row = asyncio.run(run(model, sessions, args.tokens))
                rows.append({"rpc_servers": count, "layers_here": model.local_layers or 30, **row, "load": load})
        finally:
            for server in servers:
                server.stop()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"SmolLM2-135M-Instruct F16 over llama.cpp RPC on localhost, {args.tokens} tokens per session")
    for column in ("RPC servers", "layers here", "sessions", "tokens/s", "TTFT s", "load"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("rpc_servers", "layers_here", "sessions", "tokens_per_s", "ttft_s")),
                      f"{r['load']:.1f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()

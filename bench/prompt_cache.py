"""Prompt caching across requests: an agent loop with a long system prompt sent again every step.

The llama.cpp engine (the default GGUF model, SmolLM2-135M-Instruct, in process) runs `--steps`
chat requests one after another, as an agent does: the same system prompt of about
`--system-tokens` tokens (instructions and tool descriptions), then the conversation so far
(every earlier question and answer), then a new question. Each step is timed from the request
to its first token (TTFT), and its `cached_tokens` (prompt tokens whose cache cells the engine
took from the previous step instead of prefilling them) is reported. The same loop runs again
with the cache emptied before every step, for the TTFT the steps have without it. Goal: the
repeated steps' TTFT at least 3x lower than the first step's. With the load average before and
after (the machine is shared).

    python bench/prompt_cache.py [--steps 6] [--system-tokens 2000] [--tokens 16] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, collect, resolve_model
from allmende.engine.llamacpp import LlamaCppEngine

QUESTIONS = [
    "What is the capital of France?",
    "And of Italy?",
    "Which of the two is larger?",
    "Name a river in the first one.",
    "Name a river in the second one.",
    "Thank you. Summarise in one line.",
    "What is 2 + 2?",
    "Name a colour.",
]


def system_prompt(engine: LlamaCppEngine, tokens: int) -> str:
    """Instructions and tool descriptions of about `tokens` tokens."""
    lines = ["You are a careful agent. Use the tools below when they help; answer briefly."]
    i = 0
    while len(engine.encode_text("\n".join(lines))) < tokens:
        lines.append(
            f"Tool tool_{i}(query: string, limit: integer): looks up record {i} of the archive "
            f"and returns its title, its date and a summary of at most {10 + i % 7} words."
        )
        i += 1
    return "\n".join(lines)


async def step(engine: LlamaCppEngine, messages: list[dict[str, str]], tokens: int) -> dict[str, Any]:
    ids = engine.prompt_ids(prompt_of("chat", {"messages": messages}))
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    stream = engine.generate(ids, params)
    first = await anext(stream)
    ttft = time.perf_counter() - start

    async def rest() -> Any:
        yield first
        async for event in stream:
            yield event

    gen = await collect(rest(), len(ids))
    return {"prompt_tokens": len(ids), "cached_tokens": gen.cached_tokens, "ttft_ms": ttft * 1000, "text": gen.text}


def loop(engine: LlamaCppEngine, system: str, steps: int, tokens: int, cache: bool) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system}]
    rows = []
    engine.scheduler.drop_parked()
    for i in range(steps):
        if not cache:
            engine.scheduler.drop_parked()
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        row = asyncio.run(step(engine, messages, tokens))
        messages.append({"role": "assistant", "content": row.pop("text")})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--system-tokens", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per step (greedy)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    engine = LlamaCppEngine(DEFAULT_CHAT_MODEL, resolved.gguf, resolved.path, resolved.gguf_id)
    system = system_prompt(engine, args.system_tokens)
    loop(engine, system, 1, 2, cache=False)  # warm up (weights paged in, threads started)
    load_before = os.getloadavg()[0]
    cached = loop(engine, system, args.steps, args.tokens, cache=True)
    uncached = loop(engine, system, args.steps, args.tokens, cache=False)
    load_after = os.getloadavg()[0]
    first = cached[0]["ttft_ms"]
    repeated = statistics.median(r["ttft_ms"] for r in cached[1:])
    result = {
        "model": DEFAULT_CHAT_MODEL,
        "engine": f"llamacpp ({engine.weights})",
        "system_tokens": len(engine.encode_text(system)),
        "steps": args.steps,
        "with_cache": cached,
        "without_cache": uncached,
        "first_ttft_ms": first,
        "repeated_ttft_ms_p50": repeated,
        "repeated_ttft_ms_p50_without_cache": statistics.median(r["ttft_ms"] for r in uncached[1:]),
        "speedup_first_over_repeated": first / repeated,
        "goal_speedup": 3.0,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['model']}, {result['engine']}, system prompt {result['system_tokens']} tokens, "
        f"{args.tokens} tokens per step, load average {load_before:.1f} → {load_after:.1f}"
    )
    print()
    print("| step | prompt tokens | cached tokens | TTFT ms, with the cache | TTFT ms, cache emptied |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for i, (a, b) in enumerate(zip(cached, uncached, strict=True)):
        print(
            f"| {i + 1} | {a['prompt_tokens']:,} | {a['cached_tokens']:,} | {a['ttft_ms']:,.1f} | {b['ttft_ms']:,.1f} |"
        )
    print()
    print(
        f"first step {first:,.1f} ms, repeated steps p50 {repeated:,.1f} ms: "
        f"{result['speedup_first_over_repeated']:.1f}× lower (goal ≥ 3×)"
    )


if __name__ == "__main__":
    main()

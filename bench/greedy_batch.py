"""Greedy (temperature 0) alone and inside a batch: how often an answer changes with load.

Each of `--prompts` chat prompts is answered greedily alone (one request at a time), then all
at once in one continuous batch, on each engine serving the default model (transformers, the
reference validators run, and llama.cpp, what providers run by default). Printed per engine:
the answers that differ from the same prompt alone, the first token where they part, and how
many of the batched answers the validator's check (transformers prefill, greedy draw within
its tolerance) accepts: a batch may change a near-tie, never the verifiability.

    python bench/greedy_batch.py [--prompts 16] [--tokens 48] [--engines transformers,llamacpp] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

from rich.console import Console
from rich.table import Table

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, Generation, SamplingParams, collect, load_engine
from allmende.engine.generative import GenerativeEngine
from allmende.testing.harness import QUESTIONS
from allmende.validator.checker import judge


def answers(
    engine: GenerativeEngine, prompts: list[list[int]], params: SamplingParams, together: bool
) -> list[Generation]:
    async def one(ids: list[int]) -> Generation:
        return await collect(engine.generate(ids, params), len(ids))

    async def run() -> list[Generation]:
        if together:
            return list(await asyncio.gather(*(one(ids) for ids in prompts)))
        return [await one(ids) for ids in prompts]

    return asyncio.run(run())


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description="greedy answers alone and in a batch")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engines", default="transformers,llamacpp", help="comma-separated: transformers, llamacpp")
    args = parser.parse_args()
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    questions = [
        QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else " Briefly.") for i in range(args.prompts)
    ]
    reference = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1)
    assert isinstance(reference, GenerativeEngine)
    rows = []
    for engine_kind in args.engines.split(","):
        name = "llama.cpp" if engine_kind == "llamacpp" else engine_kind
        engine = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=args.prompts, engine=engine_kind)
        assert isinstance(engine, GenerativeEngine)
        prompts = [
            engine.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": q}]})) for q in questions
        ]
        alone = answers(engine, prompts, params, together=False)
        if hasattr(engine.scheduler, "drop_parked"):
            engine.scheduler.drop_parked()  # the batch prefills its prompts whole, as a cold server would
        batched = answers(engine, prompts, params, together=True)
        parted = [
            first_difference(a.token_ids, b.token_ids)
            for a, b in zip(alone, batched, strict=True)
            if a.token_ids != b.token_ids
        ]
        verified = sum(
            judge(reference, p, b.token_ids, b.proof, params).ok for p, b in zip(prompts, batched, strict=True)
        )
        rows.append(
            {
                "engine": name,
                "prompts": args.prompts,
                "tokens": args.tokens,
                "differ_from_alone": len(parted),
                "first_difference_median": statistics.median(parted) if parted else None,
                "first_difference_min": min(parted) if parted else None,
                "batched_answers_verified": verified,
                "largest_batch": engine.scheduler.largest_batch,
            }
        )
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    table = Table(
        title=f"greedy alone vs one batch, {DEFAULT_CHAT_MODEL}, {args.prompts} prompts × {args.tokens} tokens"
    )
    for column in (
        "engine",
        "differ from alone",
        "first differing token (median, min)",
        "batched answers verified",
        "largest batch",
    ):
        table.add_column(column, justify="right" if column != "engine" else "left")
    for r in rows:
        table.add_row(
            str(r["engine"]),
            f"{r['differ_from_alone']}/{r['prompts']}",
            f"{r['first_difference_median']}, {r['first_difference_min']}" if r["differ_from_alone"] else "-",
            f"{r['batched_answers_verified']}/{r['prompts']}",
            str(r["largest_batch"]),
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

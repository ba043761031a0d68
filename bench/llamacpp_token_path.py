"""Where a request's time per token goes on the llama.cpp engine, in one process.

The gap to llama-server at one client is a few milliseconds per token, smaller than what the
load of a shared machine moves between two runs. So every path runs in this one process, on
the same loaded model, and the paths alternate many times (the order rotated every round):

- `bare plain tN`: a bare `llama_decode` loop, one token of each sequence per call, argmax of
  each row's logits in numpy, on a context made as llama-server makes its own (no embeddings,
  512 cells per sequence), on N threads: what llama.cpp alone costs;
- `bare ours tN`: the same loop through the engine's own context (`LlamaContext`: embeddings
  on for the proof's hidden states, one unified cache, flash attention) and its `decode` (the
  batch filled from Python, each output's logits and hidden row copied out), on the threads
  the engine uses for that step (half of them for one token, all for a batch);
- `engine tN`: `LlamaCppEngine.generate` of as many greedy requests at once (the scheduler
  thread, the draw, the hidden rows kept and the proofs built, detokenizing, the handoff to
  the event loop), the same prompts.

`--sequences 1,16`: one request alone, and 16 at once. Each sample decodes `--tokens` tokens
per sequence after the prompts; the figures are per decoded token (the prompts' passes are
left out): wall time, and CPU time of the whole process (every thread, llama.cpp's and
OpenMP's included), median and min over the rounds. Both weights (the Q4_1 file and its F16
copy) by default.

    python bench/llamacpp_token_path.py [--weights q4_1,f16] [--sequences 1,16] [--rounds 12]
                                        [--tokens 64] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, resolve_model
from allmende.engine.llamacpp import LlamaContext, LlamaCppEngine, lone_threads
from allmende.testing.harness import QUESTIONS

Entry = tuple[int, int, int, bool]  # (token, sequence id, position, wants output)


class PlainContext:
    """A context as llama-server makes one for -np 16 -c 8192: no embeddings, 512 cells per slot."""

    def __init__(self, lib: Any, model: Any, threads: int) -> None:
        self.lib = lib
        params = lib.llama_context_default_params()
        params.n_ctx = 8192
        params.n_batch = 512
        params.n_ubatch = 512
        params.n_seq_max = 16
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False
        self.ctx = lib.llama_init_from_model(model, params)
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))
        self.batch = lib.llama_batch_init(512, 0, 1)

    def drop(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def greedy(self, entries: list[Entry]) -> list[int]:
        """Decode `entries` (at most 512) and return the argmax of each wanted row."""
        lib, batch = self.lib, self.batch
        for i, (token, seq, pos, out) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = token, pos, 1, seq
            batch.logits[i] = int(out)
        batch.n_tokens = len(entries)
        assert lib.llama_decode(self.ctx, batch) == 0
        return [
            int(np.argmax(np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))))
            for i, entry in enumerate(entries)
            if entry[3]
        ]


class OursContext:
    """The engine's own context (`LlamaContext`) and its `decode`, argmax of each row in numpy."""

    def __init__(self, context: LlamaContext) -> None:
        self.context = context

    def drop(self, seq: int) -> None:
        self.context.drop(seq)

    def greedy(self, entries: list[Entry]) -> list[int]:
        logits, _ = self.context.decode(entries)
        return [int(np.argmax(row)) for row in logits]


def bare_loop(context: PlainContext | OursContext, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    """Prefill every prompt (one sequence id each), then decode `tokens` steps of one token per
    sequence in one `llama_decode` each; (wall, CPU) seconds of the decode steps."""
    for seq in range(len(prompts)):
        context.drop(seq)
    last: list[int] = []
    for seq, prompt in enumerate(prompts):
        last += context.greedy([(t, seq, p, p == len(prompt) - 1) for p, t in enumerate(prompt)])
    positions = [len(p) for p in prompts]
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        last = context.greedy([(t, seq, positions[seq], True) for seq, t in enumerate(last)])
        positions = [p + 1 for p in positions]
    took = time.perf_counter() - wall, time.process_time() - cpu
    for seq in range(len(prompts)):
        context.drop(seq)
    return took


def engine_run(engine: LlamaCppEngine, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    """Greedy requests through `generate`, all at once: the time from the last one's first
    token event to the end (the steps in which every sequence decodes)."""
    params = SamplingParams(max_tokens=tokens + 1, temperature=0.0, ignore_eos=True)
    engine.scheduler.drop_parked()
    firsts: list[tuple[float, float]] = []

    async def one(prompt: list[int]) -> None:
        first = True
        async for _ in engine.generate(prompt, params):
            if first:
                firsts.append((time.perf_counter(), time.process_time()))
                first = False

    async def run() -> tuple[float, float]:
        await asyncio.gather(*(one(p) for p in prompts))
        wall, cpu = max(firsts)
        return time.perf_counter() - wall, time.process_time() - cpu

    return asyncio.run(run())


def measure(weights: str, widths: list[int], rounds: int, tokens: int, threads: int) -> dict[str, Any]:
    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    kind = "native" if weights == "q4_1" else "f16"
    engine = LlamaCppEngine(
        DEFAULT_CHAT_MODEL, resolved.gguf, resolved.path, resolved.gguf_id, 16, threads=threads, weights=kind
    )
    lib, model = engine.lib, engine.models[kind]
    ours = OursContext(LlamaContext(lib, model, 8192, 16, threads))
    plain = {n: PlainContext(lib, model, n) for n in sorted({1, threads})}
    chats = [
        engine.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": f"{QUESTIONS[i % 4]} ({i})"}]}))
        for i in range(max(widths))
    ]
    paths: dict[tuple[int, str], Callable[[], tuple[float, float]]] = {}
    for width in widths:
        prompts = chats[:width]
        for n, context in plain.items():
            if width == 1 or n == threads:
                paths[(width, f"bare plain t{n}")] = lambda c=context, p=prompts: bare_loop(c, p, tokens)
        used = lone_threads(threads) if width == 1 else threads
        paths[(width, f"bare ours t{used}")] = lambda p=prompts: bare_loop(ours, p, tokens)
        paths[(width, f"engine t{used}")] = lambda p=prompts: engine_run(engine, p, tokens)
    for run in paths.values():  # warm-up
        run()
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {key: [] for key in paths}
    keys = list(paths)
    loads = [os.getloadavg()[0]]
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            wall, cpu = paths[key]()
            per = 1000 / (tokens * key[0])
            samples[key].append((wall * per, cpu * per))
        loads.append(os.getloadavg()[0])
    rows = []
    for (width, name), got in samples.items():
        walls, cpus = [w for w, _ in got], [c for _, c in got]
        rows.append(
            {
                "weights": weights,
                "sequences": width,
                "path": name,
                "wall_ms_median": round(statistics.median(walls), 3),
                "wall_ms_min": round(min(walls), 3),
                "cpu_ms_median": round(statistics.median(cpus), 3),
                "cpu_ms_min": round(min(cpus), 3),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ours.context.close()
    return {"weights": weights, "rows": rows, "load": [round(min(loads), 2), round(max(loads), 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description="a lone request's time per token on the llama.cpp engine")
    parser.add_argument("--weights", default="q4_1,f16")
    parser.add_argument("--sequences", default="1,16", help="requests at once (a step decodes one token of each)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="the engine's llama.cpp threads (as --llamacpp-threads)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    widths = [int(n) for n in args.sequences.split(",")]
    results = [
        measure(w.strip(), widths, args.rounds, args.tokens, args.threads) for w in args.weights.split(",") if w.strip()
    ]
    if args.json:
        print(json.dumps({"tokens": args.tokens, "rounds": args.rounds, "threads": args.threads, "runs": results}))
        return
    print(f"ms per decoded token, {args.rounds} rounds interleaved, {args.tokens} tokens each")
    print(f"{'weights':8} {'seqs':>4} {'path':18} {'wall med':>9} {'wall min':>9} {'cpu med':>9} {'cpu min':>9}  load")
    for result in results:
        for row in result["rows"]:
            print(
                f"{row['weights']:8} {row['sequences']:4} {row['path']:18} "
                f"{row['wall_ms_median']:9.2f} {row['wall_ms_min']:9.2f} "
                f"{row['cpu_ms_median']:9.2f} {row['cpu_ms_min']:9.2f}  {result['load'][0]}–{result['load'][1]}"
            )


if __name__ == "__main__":
    main()

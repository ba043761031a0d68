"""Calibration harness for proof checking (TOPLOC-style), with timings.

Honest variants must pass (false alarms = honest runs that fail): fp32, bf16 provider
vs fp32 validator, 1 vs 2 threads, the validator's forward pass inside a batch of 4,
the provider's generation inside a continuous batch of 8 (greedy and sampled), seeded
sampling, and GPU vs CPU when CUDA is present. Cheats must fail (misses =
cheating runs that pass): another model under the claimed id, int8-quantised weights, a
skipped layer, a tampered system prompt, fabricated output tokens. With the attacks also the
rows of completions that run past their end (past EOS, past a stop string, EOS masked: a
known limit) next to the honest answers of the same requests. With --engines, the
cross-engine rows of allmende.testing.engines: llama.cpp provider with transformers
validator and the reverse (honest), and llama.cpp serving the GGUF requantised to Q4_0 or
Q2_K, or a Q2_K generator with the proof recomputed by llama.cpp (cheats). With --parameters,
the sampling-parameter rows: presence_penalty, frequency_penalty, logit_bias, top_k, min_p
honest (fp32 and a bf16 provider) and served ignored or altered (cheats).

    python bench/verify.py [--questions 16] [--json]
    python bench/verify.py --engines --no-attacks --questions 4 --tokens 32
    python bench/verify.py --parameters --no-attacks --questions 8
    python bench/verify.py --stages --questions 4 --tokens 24
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from allmende.testing.harness import Harness


def main() -> None:
    parser = argparse.ArgumentParser(description="proof-check calibration harness")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-attacks", action="store_true", help="skip the attack rows on the draw")
    parser.add_argument("--model", help="run the attack rows on this model (e.g. smollm2-135m-instruct) instead")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per completion (with --model)")
    parser.add_argument(
        "--engines",
        action="store_true",
        help="the cross-engine rows (llama.cpp and transformers on the same GGUF; needs llama-cpp-python); "
        "--model defaults to smollm2-135m-instruct",
    )
    parser.add_argument(
        "--parameters", action="store_true", help="the sampling-parameter rows (honest, ignored, altered)"
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="the pipeline-stage rows instead (allmende.testing.stage_harness: SmolLM2 in 3 stages, each audited "
        "alone; --questions prompts, --tokens tokens each)",
    )
    args = parser.parse_args()
    if args.stages:
        stage_rows(args.questions, args.tokens, args.json)
        return
    model = args.model or ("smollm2-135m-instruct" if args.engines else None)
    harness = Harness(
        args.questions,
        attacks=not args.no_attacks,
        model=model,
        tokens=args.tokens,
        engines=args.engines,
        parameters=args.parameters,
    )
    results = harness.run()
    timing = harness.timing()
    out = {
        "validation_over_generation": round(timing["validation_over_generation"], 4),
        "proof_bytes_per_32_tokens": round(timing["proof_bytes_per_32_tokens"], 1),
        "false_alarms": sum(r.wrong for r in results if r.honest),
        "misses": sum(r.wrong for r in results if not r.honest),
        "known_limit_passes": sum(r.passed for r in results if r.limit),
        "generation_s_128_tokens": round(timing["generation_s"], 4),
        "validation_s_128_tokens": round(timing["validation_s"], 4),
        "goals": {"validation_over_generation": 0.05, "proof_bytes_per_32_tokens": 258, "false_alarms": 0, "misses": 0},
        "variants": [
            {
                "name": r.name,
                "honest": r.honest,
                "known_limit": r.limit,
                "runs": r.runs,
                "passed": r.passed,
                "median_rel_error_min": round(r.best_median_rel_error, 4),
                "median_rel_error_max": round(r.worst_median_rel_error, 4),
                "worst_topk_overlap": r.worst_overlap,
                "passed_with_the_honest_tokens": r.identical,
            }
            for r in results
        ],
    }
    if args.json:
        print(json.dumps(out))
        return
    name = model or "allmende:tiny"
    table = Table(title=f"proof checks, {name}, {args.questions} prompts per variant, {args.tokens} tokens each")
    for column in ("variant", "kind", "passed", "wrong", "median rel. error (min-max)", "worst top-k overlap"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for r in results:
        table.add_row(
            r.name,
            "honest" if r.honest else "limit" if r.limit else "cheat",
            f"{r.passed}/{r.runs}",
            str(r.wrong),
            f"{r.best_median_rel_error:.4f}-{r.worst_median_rel_error:.4f}",
            f"{r.worst_overlap:.2f}",
        )
    Console().print(table)
    print(
        f"false alarms {out['false_alarms']}, misses {out['misses']} (known limit, int8 + recomputed proof: "
        f"{out['known_limit_passes']} passed), proof bytes per 32 tokens "
        f"{out['proof_bytes_per_32_tokens']}, validation ÷ generation (128 tokens) "
        f"{out['validation_over_generation']}"
    )


def stage_rows(questions: int, tokens: int, as_json: bool) -> None:
    """The stage rows: each stage of a 3-stage chain audited alone (`verify_stage`)."""
    import os

    from allmende.engine.proofs import MAX_MEDIAN_REL_ERROR
    from allmende.engine.stages import F16_MEDIAN_REL_ERROR
    from allmende.testing.stage_harness import StageHarness

    load = os.getloadavg()[0]
    results = StageHarness(questions, tokens).run()
    out = {
        "false_alarms": sum(r.wrong for r in results if r.kind == "honest"),
        "misses": sum(r.wrong for r in results if r.kind == "cheat"),
        "limits": {"fp32_registration": MAX_MEDIAN_REL_ERROR, "f16_registration": F16_MEDIAN_REL_ERROR},
        "load_average": round(load, 1),
        "rows": [
            {
                "name": r.name,
                "kind": r.kind,
                "runs": r.runs,
                "passed": r.passed,
                "median_rel_error_min": round(r.best_median_rel_error, 4),
                "median_rel_error_max": round(r.worst_median_rel_error, 4),
                "batched_passes": r.batched_passes,
            }
            for r in results
        ],
    }
    if as_json:
        print(json.dumps(out))
        return
    title = f"stage audits, SmolLM2-135M in 3 stages, {questions} prompts x 3 stages per row, {tokens} tokens"
    table = Table(title=title)
    for column in ("row", "kind", "passed", "wrong", "median rel. error (min-max)", "batched passes"):
        table.add_column(column, justify="right" if column != "row" else "left")
    for r in results:
        table.add_row(
            r.name,
            r.kind,
            f"{r.passed}/{r.runs}",
            str(r.wrong),
            f"{r.best_median_rel_error:.4f}-{r.worst_median_rel_error:.4f}",
            str(r.batched_passes),
        )
    Console().print(table)
    print(
        f"false alarms {out['false_alarms']}, misses {out['misses']}; limits: median relative error "
        f"{MAX_MEDIAN_REL_ERROR} (fp32 registration), {F16_MEDIAN_REL_ERROR} (F16 registration)"
    )


if __name__ == "__main__":
    main()

"""GPU providers against the accumulated-evidence test, from recorded GPU runs.

bench/verify_gpu.py recorded honest completions of the tiny model generated on a lent GPU
(bench/results/verify_gpu.json: prompt, tokens, proof and sampling of every run, in fp32, TF32,
fp16 and bf16). This replays them against a validator here: each record's divergence statistics
from this CPU's fp32 prefill (allmende.validator.divergence), then simulated providers audited
with records drawn from each variant until the test decides, against the shipped tiny profile,
until 10,000 requests per variant. Every variant is honest: fp32, TF32 and fp16 are the
registered weights at (at least) their precision, and bf16, the precision GPU providers serve
in, is an engine the registration allows. The profiles were calibrated on this CPU, so the
GPU's records are out of sample: the check that the calibration carries over to a GPU.

    python bench/evidence_gpu_replay.py [--json] [--save]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

from allmende.core.evidence_test import Counts, Decision, SequentialTest
from allmende.engine.base import SamplingParams
from allmende.engine.tiny import ensure_tiny_model
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.accumulated import Calibration
from allmende.validator.divergence import AuditStats, audit_stats

ROOT = Path(__file__).resolve().parent
RECORDS_PER_VARIANT = 12  # records replayed per variant (the pool audits are drawn from)


def main() -> None:
    parser = argparse.ArgumentParser(description="recorded GPU providers against the evidence test")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="write bench/results/evidence_tiny_gpu_replay.json")
    args = parser.parse_args()
    recorded = json.loads((ROOT / "results" / "verify_gpu.json").read_text())
    validator = CausalLMEngine("allmende:tiny", ensure_tiny_model(), device="cpu")
    pools: dict[str, list[AuditStats]] = collections.defaultdict(list)
    for r in recorded["records"]:
        if not r["honest"] or len(pools[r["variant"]]) >= RECORDS_PER_VARIANT:
            continue
        p = r["params"]
        params = SamplingParams(max_tokens=p["max_tokens"], temperature=p["temperature"], top_p=p["top_p"],
                                seed=p["seed"])  # fmt: skip
        prefill = validator.prefill(r["prompt_ids"] + r["output_ids"])
        stats = audit_stats(prefill, len(r["prompt_ids"]), r["output_ids"], bytes.fromhex(r["proof"]), params)
        pools[r["variant"]].append(stats)
    calibration = Calibration.load()
    profiles = calibration.allowed("0x" + validator.model_id.hex())
    test, rng = SequentialTest(), random.Random(3)
    rows = {}
    for variant, pool in pools.items():
        requests = accused = 0
        while requests < args.requests:
            counts = {p.name: Counts() for p in profiles}
            n, decision = 0, Decision.CONTINUE
            while decision is Decision.CONTINUE and n < 2000:
                n += 1
                audit = rng.choice(pool)
                counts = {p.name: counts[p.name] + p.counts(audit.gaps, audit.chunk_errors) for p in profiles}
                decision = test.decide(test.statistic(counts, profiles))
            requests += n
            accused += decision is Decision.CHEATING
        errors = sorted(e for s in pool for e in s.chunk_errors)
        gaps = [g for s in pool for g in s.gaps]
        rows[variant] = {"requests": requests, "accused": accused,
                         "chunk_error_min": round(errors[0], 5), "chunk_error_max": round(errors[-1], 5),
                         "tokens_off_the_draw": round(sum(g > 1e-4 for g in gaps) / len(gaps), 4)}  # fmt: skip
    out = {"source": "bench/results/verify_gpu.json", "device": recorded["machine"]["device_name"],
           "validator": "CPU fp32", "profiles": [p.name for p in profiles], "rows": rows}  # fmt: skip
    if args.save:
        (ROOT / "results" / "evidence_tiny_gpu_replay.json").write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out))
        return
    print(f"{'variant (recorded on ' + out['device'] + ')':<48} {'chunk error':>16} {'off draw':>9} {'accused':>16}")
    for variant, row in rows.items():
        span = f"{row['chunk_error_min']:.5f}-{row['chunk_error_max']:.5f}"
        print(f"{variant:<48} {span:>16} {row['tokens_off_the_draw']:>9.2%} "
              f"{row['accused']:>6} of {row['requests']:>6}")  # fmt: skip


if __name__ == "__main__":
    main()

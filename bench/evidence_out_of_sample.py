"""Honest providers out of sample: rows measured at batch shapes (or with audits) the shipped
honest profiles were not fitted from, judged against those profiles as the validator judges.

bench/evidence.py replays the calibration's own raw file, so its honest rows are in sample.
This replays a raw file measured separately with bench/calibrate_evidence.py's measuring mode
(e.g. `--only "llama.cpp F16 copy" --batches 1,48 --out bench/results/evidence_smollm2_out_of_sample.json`):
each honest row's simulated providers are audited with audits drawn at random (with
replacement) from its pool until `--honest-requests` requests are spent, the sequential test
runs against the profiles each registration allows (validator/honest_profiles.json, not
refitted), and a provider the test calls cheating is an honest provider falsely accused.
The same is done against the row's own engine's profile alone (the strictest reading: no
other allowed engine to hide behind).

Per row also the raw figures behind it: the share of tokens off the reference draw against
the profile's honest rate `token_p0`, the largest chunk error against `chunk_limit`, and the
chunk errors' mean log level with its upper confidence bound against the profile's `level`.

    python bench/evidence_out_of_sample.py [--raw PATH] [--honest-requests 12000] [--json] [--save]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from allmende.core.evidence_test import CONFIDENCE_Z, GAP_TIE, LEVEL_FLOOR, Decision, Profile, SequentialTest
from allmende.validator.accumulated import Calibration
from allmende.validator.divergence import AuditStats

sys.path.insert(0, str(Path(__file__).parent))
from evidence import BUDGET, run_provider

ROOT = Path(__file__).resolve().parent
RAW = ROOT / "results" / "evidence_smollm2_out_of_sample.json"


def simulate(pool: list[AuditStats], profiles: list[Profile], test: SequentialTest, rng: random.Random,
             requests: int) -> tuple[int, int, int]:  # fmt: skip
    """Honest providers audited from `pool` until `requests` requests are spent, as
    bench/evidence.py counts them: (requests, providers, providers accused)."""
    done = providers = accused = 0
    per_request = max(1, pool[0].tokens)
    while done < requests:
        decision, tokens, _, _ = run_provider(pool, profiles, test, rng, 20 * BUDGET)
        done += max(1, tokens // per_request)
        providers += 1
        accused += decision is Decision.CHEATING
    return done, providers, accused


def raw_figures(pool: list[AuditStats], own: Profile) -> dict[str, Any]:
    """The row's token and chunk figures next to its own engine's profile."""
    gaps = [g for a in pool for g in a.gaps]
    errors = [e for a in pool for e in a.chunk_errors]
    logs = [math.log(max(e, LEVEL_FLOOR)) for e in errors]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    return {
        "tokens": len(gaps),
        "off_draw": sum(1 for g in gaps if g > GAP_TIE),
        "off_draw_rate": round(sum(1 for g in gaps if g > GAP_TIE) / len(gaps), 6),
        "token_p0": own.token_p0,
        "chunks": len(errors),
        "max_chunk_error": round(max(errors), 6),
        "chunks_over_limit": sum(1 for e in errors if e > own.chunk_limit),
        "chunk_limit": own.chunk_limit,
        "level_mean": round(mean, 6),
        "level_upper": round(mean + CONFIDENCE_Z * sd / math.sqrt(len(logs)), 6),
        "level_bound": own.level,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="honest providers out of sample against the shipped profiles")
    parser.add_argument("--raw", type=Path, default=RAW, help="raw statistics from bench/calibrate_evidence.py")
    parser.add_argument("--honest-requests", type=int, default=12000, help="honest requests simulated per row")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="write the figures next to the raw file (*_eval.json)")
    args = parser.parse_args()
    raw = json.loads(args.raw.read_text())
    meta = raw["meta"]
    calibration = Calibration.load()
    model = meta["model"]
    registrations = {"registered file": calibration.allowed(meta["model_id"])}
    if meta.get("f16_model_id"):
        registrations = {"Q4_1 registration": registrations["registered file"],
                         "F16 registration": calibration.allowed(meta["f16_model_id"])}  # fmt: skip
    test = SequentialTest()
    rng = random.Random(35)
    out: dict[str, Any] = {"model": model, "raw": args.raw.name, "calibration_version": calibration.version,
                           "alpha": test.alpha, "beta": test.beta, "rows": []}  # fmt: skip
    for r in raw["rows"]:
        if not r["honest"]:
            continue
        pool = [AuditStats.from_json(a) for a in r["audits"]]
        own = calibration.profiles[f"{model}/{r['profile']}"]
        row: dict[str, Any] = {"row": r["row"], "batch": r["batch"], "threads": r.get("threads"),
                               "audits": len(pool), **raw_figures(pool, own), "judged": {}}  # fmt: skip
        judges = {label: profiles for label, profiles in registrations.items() if own in profiles}
        judges["own profile alone"] = [own]
        for label, profiles in judges.items():
            requests, providers, accused = simulate(pool, profiles, test, rng, args.honest_requests)
            row["judged"][label] = {"requests": requests, "providers": providers, "accused": accused}
        out["rows"].append(row)
    if args.save:
        args.raw.with_name(args.raw.stem + "_eval.json").write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out))
        return
    table = Table(title=f"{model}, {args.raw.name}: honest rows against calibration v{calibration.version} "
                        f"(alpha {test.alpha:g}, beta {test.beta:g})")  # fmt: skip
    for column in ("row", "batch", "off-draw / p0", "max chunk err / limit", "level mean, upper / bound",
                   "judged by", "requests", "accused"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("row", "judged by") else "right")
    for row in out["rows"]:
        for label, judged in row["judged"].items():
            table.add_row(
                row["row"], str(row["batch"]), f"{row['off_draw_rate']:.4f} / {row['token_p0']:.4f}",
                f"{row['max_chunk_error']:.6f} / {row['chunk_limit']:.6f}",
                f"{row['level_mean']:.3f}, {row['level_upper']:.3f} / {row['level_bound']:.3f}",
                label, str(judged["requests"]), str(judged["accused"]),
            )  # fmt: skip
    Console(width=170).print(table)


if __name__ == "__main__":
    main()

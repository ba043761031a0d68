"""Tokens to detection on accumulated evidence, per cheat, per registration; and honest
providers' false accusations.

Replays the per-audit statistics bench/calibrate_evidence.py measured on real servings (no
model runs here): each simulated provider is audited with audits drawn at random (with
replacement) from its row's pool, the sequential test (allmende.core.evidence_test) runs
against the honest profiles the registration allows (validator/honest_profiles.json),
exactly as the validator's ledger runs it, and a window that ends "honest" closes and the
next begins.

Per cheat row and registration: the share of providers caught within the budget (2,000
audited tokens), the median and 95th percentile of tokens to detection, and the AUC of the
test statistic after a fixed number of tokens (honest providers of every engine and batch
shape against this cheat). Per honest row: the honest requests audited and the providers
falsely accused (the issue's goal: 0 in at least 10,000 requests).

    python bench/evidence.py [--model smollm2|tiny] [--providers 200] [--json] [--save]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from allmende.core.evidence_test import Decision, Profile, SequentialTest
from allmende.validator.accumulated import Calibration
from allmende.validator.divergence import AuditStats
from allmende.validator.ledger import counts_of

ROOT = Path(__file__).resolve().parent
BUDGET = 2000  # audited tokens per provider within which a cheat must be caught (the goal)
AUC_TOKENS = (500, 1000, 2000)  # the statistic's AUC is reported after this many tokens


def run_provider(pool: list[AuditStats], profiles: list[Profile], test: SequentialTest, rng: random.Random,
                 budget: int) -> tuple[Decision, int, int, float]:  # fmt: skip
    """Audit one simulated provider until the test says cheating or `budget` tokens are spent:
    (final decision, tokens to it, windows closed honest, statistic of the open window)."""
    window: list[AuditStats] = []
    tokens, honest_windows, statistic = 0, 0, 0.0
    while tokens < budget:
        audit = rng.choice(pool)
        window.append(audit)
        tokens += audit.tokens
        counts = counts_of(window, profiles)
        statistic = min(p.llr(counts[p.name]) for p in profiles)
        decision = test.decide(statistic)
        if decision is Decision.CHEATING:
            return decision, tokens, honest_windows, statistic
        if decision is Decision.HONEST:
            honest_windows += 1
            window = []
    return Decision.CONTINUE, tokens, honest_windows, statistic


def statistic_after(pool: list[AuditStats], profiles: list[Profile], rng: random.Random, tokens: int) -> float:
    """The test statistic of one window of `tokens` audited tokens (no early stop): the score
    the AUC ranks."""
    window: list[AuditStats] = []
    while sum(a.tokens for a in window) < tokens:
        window.append(rng.choice(pool))
    counts = counts_of(window, profiles)
    return min(p.llr(counts[p.name]) for p in profiles)


def auc(honest: list[float], cheat: list[float]) -> float:
    """P(cheat's score > honest's), ties counted half (Mann-Whitney)."""
    wins = sum(1.0 if c > h else 0.5 if c == h else 0.0 for c in cheat for h in honest)
    return wins / (len(cheat) * len(honest))


def main() -> None:
    parser = argparse.ArgumentParser(description="tokens to detection on accumulated evidence")
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    parser.add_argument("--providers", type=int, default=200, help="simulated providers per row")
    parser.add_argument("--honest-requests", type=int, default=12000, help="honest audits simulated per honest row")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="write bench/results/evidence_<model>_detection.json")
    args = parser.parse_args()
    raw = json.loads((ROOT / "results" / f"evidence_{args.model}_cpu.json").read_text())
    meta = raw["meta"]
    calibration = Calibration.load()
    model = meta["model"]
    registrations = {"registered file": calibration.allowed(meta["model_id"])}
    if meta.get("f16_model_id"):
        registrations = {"Q4_1 registration": registrations["registered file"],
                         "F16 registration": calibration.allowed(meta["f16_model_id"])}  # fmt: skip
    test = SequentialTest()
    rng = random.Random(35)
    rows = [(r, [AuditStats.from_json(a) for a in r["audits"]]) for r in raw["rows"]]
    honest_pools = [pool for r, pool in rows if r["honest"]]
    out: dict[str, Any] = {"model": model, "budget_tokens": BUDGET, "alpha": test.alpha, "beta": test.beta,
                           "providers_per_row": args.providers, "registrations": {}}  # fmt: skip
    for label, profiles in registrations.items():
        allowed = {p.name.split("/", 1)[1] for p in profiles}
        section: dict[str, Any] = {"profiles": sorted(allowed), "cheats": [], "honest": []}
        # honest rows of engines this registration allows; the others are cheats here
        honest_here = [pool for r, pool in rows if r["honest"] and r["profile"] in allowed]
        for r, pool in rows:
            if r["honest"] and r["profile"] in allowed:
                requests = 0
                accused = 0
                while requests < args.honest_requests:
                    decision, tokens, _, _ = run_provider(pool, profiles, test, rng, 20 * BUDGET)
                    requests += max(1, tokens // max(1, pool[0].tokens))
                    accused += decision is Decision.CHEATING
                section["honest"].append({"row": r["row"], "batch": r["batch"], "requests": requests,
                                          "accused": accused})  # fmt: skip
                continue
            if r["honest"] and r["batch"] != max(x["batch"] for x, _ in rows if x["row"] == r["row"]):
                continue  # another engine's honest row: once, at its largest batch
            runs = [run_provider(pool, profiles, test, rng, BUDGET) for _ in range(args.providers)]
            caught = sorted(t for d, t, _, _ in runs if d is Decision.CHEATING)
            aucs = {}
            for n in AUC_TOKENS:
                honest_scores = [
                    statistic_after(rng.choice(honest_here), profiles, rng, n) for _ in range(args.providers)
                ]
                cheat_scores = [statistic_after(pool, profiles, rng, n) for _ in range(args.providers)]
                aucs[str(n)] = round(auc(honest_scores, cheat_scores), 4)
            section["cheats"].append({
                "row": r["row"] if not r["honest"] else f"{r['row']} (not allowed here)",
                "caught_within_budget": round(len(caught) / len(runs), 4),
                "median_tokens": statistics.median(caught) if caught else None,
                "p95_tokens": caught[int(0.95 * (len(caught) - 1))] if caught else None,
                "auc": aucs,
            })  # fmt: skip
        out["registrations"][label] = section
    del honest_pools
    if args.save:
        path = ROOT / "results" / f"evidence_{args.model}_detection.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out))
        return
    console = Console(width=150)
    for label, section in out["registrations"].items():
        table = Table(title=f"{model}, {label} (honest engines: {', '.join(section['profiles'])}); "
                            f"alpha {test.alpha:g}, beta {test.beta:g}, budget {BUDGET} tokens")  # fmt: skip
        for column in ("served instead", "caught ≤ budget", "median tokens", "p95 tokens", "AUC @500/1000/2000"):
            table.add_column(column, justify="left" if column == "served instead" else "right")
        for c in section["cheats"]:
            table.add_row(c["row"], f"{c['caught_within_budget']:.1%}", str(c["median_tokens"]), str(c["p95_tokens"]),
                          " / ".join(f"{v:.3f}" for v in c["auc"].values()))  # fmt: skip
        console.print(table)
        for h in section["honest"]:
            print(f"  honest {h['row']}, batch {h['batch']}: {h['requests']} requests audited, {h['accused']} accused")


if __name__ == "__main__":
    main()

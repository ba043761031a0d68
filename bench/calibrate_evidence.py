"""Measure the per-token divergence statistics of honest and cheating servings of the default
model, and calibrate the honest distributions the evidence ledger tests against.

Every row serves the same audits (a prompt from the harness's questions, `--tokens` tokens,
greedy or seeded sampling at the temperatures users send, a fresh seed per audit) and the
transformers reference (fp32, the validator's engine) recomputes each with one prefill;
`allmende.validator.divergence` turns that into per-token draw gaps and per-chunk proof errors.

Honest rows (one per engine and batch shape): transformers fp32; llama.cpp on the F16 copy
of the weights (a provider's default for small models); llama.cpp on the registered Q4_1
file itself; each at every `--batches` shape (concurrent requests in one continuous batch).
Cheat rows, all under the registered id: per-row int8 weights (transformers), the GGUF
requantised by llama.cpp to Q8_0 and Q4_K_M, and another model of the same architecture
with every weight moved by 0.5 %, 1 % and 2 % of its tensor's spread (a near sibling).

Writes the raw statistics (bench/results/evidence_calibration_cpu.json: what bench/evidence.py
replays) and, with --write-profiles, the calibrated honest profiles the validator ships
(src/allmende/validator/honest_profiles.json, allmende.core.evidence_test.fit_profile).

    python bench/calibrate_evidence.py [--model allmende:tiny] [--audits 48] [--tokens 32] [--write-profiles]
    python bench/calibrate_evidence.py --model allmende:tiny --refit   # profiles from the saved statistics
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allmende.engine import resolve_model
from allmende.engine.base import SamplingParams, collect
from allmende.engine.generative import GenerativeEngine
from allmende.testing.harness import QUESTIONS, Harness
from allmende.testing.weights import quantize_int8
from allmende.validator.divergence import audit_stats

ROOT = Path(__file__).resolve().parent
RAW = ROOT / "results" / "evidence_smollm2_cpu.json"
PROFILES = ROOT.parent / "src" / "allmende" / "validator" / "honest_profiles.json"
MODEL = "smollm2-135m-instruct"
SPREADS = (0.005, 0.01, 0.02)


def audits(n: int, tokens: int) -> list[tuple[str, SamplingParams]]:
    """n audits: a question and its sampling, every other one greedy, the rest seeded draws at
    the temperatures audits draw from users' shapes."""
    out = []
    for i in range(n):
        question = QUESTIONS[i % len(QUESTIONS)]
        if i % 2 == 0:
            params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        else:
            t, p = [(0.7, 1.0), (0.8, 0.95), (1.0, 1.0), (0.7, 0.9)][(i // 2) % 4]
            params = SamplingParams(max_tokens=tokens, temperature=t, top_p=p, seed=5000 + i, ignore_eos=True)
        out.append((question, params))
    return out


def serve(engine: GenerativeEngine, requests: list[tuple[list[int], SamplingParams]], batch: int) -> list[Any]:
    """Each request's (tokens, proof), served `batch` at a time concurrently (continuous batching)."""

    async def main() -> list[Any]:
        done: list[Any] = []
        for start in range(0, len(requests), batch):
            group = requests[start : start + batch]
            done += await asyncio.gather(*(collect(engine.generate(p, a), len(p)) for p, a in group))
        return done

    return [(g.token_ids, g.proof) for g in asyncio.run(main())]


Row = tuple[str, str | None, Callable[[], GenerativeEngine], list[int]]  # name, honest profile, engine, batches


def smollm2_rows(harness: Harness, batches: list[int], work: Path) -> tuple[list[Row], dict[str, Any]]:
    """The default model's rows, and its registrations: the Q4_1 file (served natively or from
    its F16 expansion) and that F16 expansion registered on its own (F16 engines only)."""
    from allmende.engine.gguf import gguf_manifest
    from allmende.engine.llamacpp import LlamaCppEngine, expanded_f16, load_binding
    from allmende.testing.engines import requantise, sibling

    resolved = resolve_model(MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    gguf, tokenizer, model_id = resolved.gguf, resolved.path, resolved.gguf_id

    def llama(path: Path, weights: str = "native") -> LlamaCppEngine:
        return LlamaCppEngine(MODEL, path, tokenizer, model_id, max_concurrency=max(batches), weights=weights)

    cheat = [max(batches)]
    rows: list[Row] = [
        ("transformers fp32", "transformers", harness.copy, batches),
        ("llama.cpp F16 copy", "llamacpp-f16", lambda: llama(gguf, "f16"), batches),
        ("llama.cpp Q4_1 native (the registered file)", "llamacpp-native", lambda: llama(gguf, "native"), batches),
        ("int8 weights (transformers)", None, lambda: quantize_int8(harness.copy()), cheat),
        ("Q8_0 requantisation (llama.cpp)", None, lambda: llama(requantise(gguf, "Q8_0", work / "q8.gguf")), cheat),
        ("Q4_K_M requantisation (llama.cpp)", None, lambda: llama(requantise(gguf, "Q4_K_M", work / "q4km.gguf")),
         cheat),
    ]  # fmt: skip
    for spread in SPREADS:
        out = work / f"moved-{spread}.gguf"
        rows.append((f"every weight moved {spread:.1%}", None, lambda s=spread, o=out: llama(sibling(gguf, s, 11, o)),
                     cheat))  # fmt: skip
    f16_id = "0x" + gguf_manifest(expanded_f16(load_binding(), gguf, model_id)).model_id.hex()
    registrations = {
        "0x" + model_id.hex(): ["transformers", "llamacpp-f16", "llamacpp-native"],
        f16_id: ["transformers", "llamacpp-f16"],
    }
    return rows, {"model": MODEL, "model_id": "0x" + model_id.hex(), "f16_model_id": f16_id,
                  "registrations": registrations}  # fmt: skip


def tiny_rows(harness: Harness, batches: list[int]) -> tuple[list[Row], dict[str, Any]]:
    """The test model's rows (transformers only: it has no GGUF): fp32 honest, the cheats."""
    import torch

    from allmende.testing.harness import load
    from allmende.testing.weights import move_weights

    cheat = [max(batches)]
    rows: list[Row] = [
        ("transformers fp32", "transformers", lambda: load(harness.path), batches),
        ("transformers bf16 (not the registered precision)", None, lambda: load(harness.path, torch.bfloat16), cheat),
        ("int8 weights (transformers)", None, lambda: quantize_int8(load(harness.path)), cheat),
    ]
    for spread in SPREADS:
        rows.append((f"every weight moved {spread:.1%}", None,
                     lambda s=spread: move_weights(load(harness.path), s, 11), cheat))  # fmt: skip
    model_id = "0x" + harness.reference.model_id.hex()
    return rows, {"model": "allmende:tiny", "model_id": model_id, "registrations": {model_id: ["transformers"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description="divergence statistics of honest and cheating servings")
    parser.add_argument("--model", default=MODEL, choices=(MODEL, "allmende:tiny"))
    parser.add_argument("--audits", type=int, default=48, help="audits per row")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per audit")
    parser.add_argument("--batches", default="1,48", help="batch shapes of the honest rows")
    parser.add_argument("--write-profiles", action="store_true", help="add the calibrated honest profiles")
    parser.add_argument("--out", type=Path, help="raw statistics (default bench/results/evidence_<model>_cpu.json)")
    parser.add_argument("--refit", action="store_true", help="fit the profiles from the raw file again, run nothing")
    args = parser.parse_args()
    tiny = args.model == "allmende:tiny"
    out = args.out or RAW.with_name(f"evidence_{'tiny' if tiny else 'smollm2'}_cpu.json")
    if args.refit:
        raw = json.loads(out.read_text())
        write_profiles(raw["rows"], raw["meta"])
        return
    harness = Harness(1, model=None if tiny else MODEL, tokens=args.tokens)
    ref = harness.reference
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="allmende-evidence-"))
    rows, meta = tiny_rows(harness, batches) if tiny else smollm2_rows(harness, batches, work)
    meta = {**meta, "tokens_per_audit": args.tokens, "audits_per_row": args.audits,
            "validator": "transformers fp32, CPU"}  # fmt: skip
    plan = audits(args.audits, args.tokens)
    requests = [(harness.prompt(q), p) for q, p in plan]
    results = []
    for name, profile, make, shapes in rows:
        engine = make()
        for batch in shapes:
            started = time.perf_counter()
            served = serve(engine, requests, batch)
            stats = []
            for (prompt, params), (tokens, proof) in zip(requests, served, strict=True):
                prefill = ref.prefill(prompt + tokens)
                stats.append(audit_stats(prefill, len(prompt), tokens, proof, params).to_json())
            count = sum(len(s["gaps"]) for s in stats)
            mismatch = sum(1 for s in stats for g in s["gaps"] if g > 0) / max(count, 1)
            took = time.perf_counter() - started
            print(f"{name}, batch {batch}: {count} tokens, mismatch {mismatch:.4f}, {took:.0f}s", flush=True)
            results.append({"row": name, "profile": profile, "honest": profile is not None, "batch": batch,
                            "audits": stats})  # fmt: skip
            # written after every row: a run cut short keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"meta": meta, "rows": results}))
        close = getattr(engine, "close", None)
        if callable(close):
            close()  # llama.cpp's contexts hold their memory until closed
        del engine
        gc.collect()
    print(f"raw statistics written to {out}")
    if args.write_profiles:
        write_profiles(results, meta)


def write_profiles(results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Fit each engine's honest profile from its rows (every batch shape: the worst counts) and
    merge them, named `<model>/<engine>`, with the model's registrations into the shipped table
    (the other models' entries stay)."""
    from allmende.core.evidence_test import fit_profile

    model = meta["model"]
    table = json.loads(PROFILES.read_text()) if PROFILES.exists() else {}
    table["version"] = int(table.get("version", 0)) + 1
    table["made_by"] = "bench/calibrate_evidence.py --model MODEL --write-profiles"
    profiles = {k: v for k, v in table.get("profiles", {}).items() if not k.startswith(f"{model}/")}
    for engine in sorted({r["profile"] for r in results if r["profile"]}):
        shapes = [list(r["audits"]) for r in results if r["profile"] == engine]
        profiles[f"{model}/{engine}"] = fit_profile(f"{model}/{engine}", shapes).to_json()
    table["profiles"] = profiles
    registrations = dict(table.get("registrations", {}))
    for model_id, engines in meta["registrations"].items():
        registrations[model_id] = [f"{model}/{e}" for e in engines]
    table["registrations"] = registrations
    models = dict(table.get("models", {}))
    models[model] = {k: v for k, v in meta.items() if k != "registrations"}
    table["models"] = models
    PROFILES.write_text(json.dumps(table, indent=1) + "\n")
    print(f"profiles written to {PROFILES}")


if __name__ == "__main__":
    main()

"""Measure the per-token divergence statistics of honest and cheating servings of the default
model, and calibrate the honest distributions the evidence ledger tests against.

Every row serves the same audits (a prompt from the harness's questions, `--tokens` tokens,
greedy or seeded sampling at the temperatures users send, a fresh seed per audit) and the
transformers reference (fp32, the validator's engine) recomputes each with one prefill;
`allmende.validator.divergence` turns that into per-token draw gaps and per-chunk proof errors.

Honest rows (one per engine and batch shape): transformers fp32; transformers bf16 (the
precision GPU providers serve in, DESIGN §5's honest variant); llama.cpp on the F16 copy
of the weights (a provider's default for small models); llama.cpp on the registered Q4_1
file itself; each at every `--batches` shape (concurrent requests in one continuous batch),
and transformers fp32 and llama.cpp F16 at 1 thread besides the default (every core):
those count as more shapes of the same engine's profile.
Cheat rows, all under the registered id: per-row int8 weights (transformers), the GGUF
requantised by llama.cpp to Q8_0 and Q4_K_M, and another model of the same architecture
with every weight moved by 0.5 %, 1 % and 2 % of its tensor's spread (a near sibling).

Writes the raw statistics (bench/results/evidence_calibration_cpu.json: what bench/evidence.py
replays) and, with --write-profiles, the calibrated honest profiles the validator ships
(src/allmende/validator/honest_profiles.json, allmende.core.evidence_test.fit_profile).

Each audit also keeps its chunks' error structure (`chunk_detail`, see `chunk_detail`): what
the harness looks at to tell a rounding engine from changed weights.

    python bench/calibrate_evidence.py [--model allmende:tiny] [--audits 48] [--tokens 32] [--write-profiles]
    python bench/calibrate_evidence.py --model allmende:tiny --refit   # profiles from the saved statistics
    python bench/calibrate_evidence.py --only bf16,thread   # measure these rows, keep the file's others
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

import torch

from allmende.core.proofs import CHUNK_TOKENS, decode_proof
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


def chunk_detail(proof: bytes, hidden: torch.Tensor) -> list[dict[str, float]]:
    """Per proof chunk, the structure of its committed values' error against the recomputed
    `hidden` (one row per output token), beyond the median the ledger counts: the 90th
    percentile of the relative error, its signed mean (a bias), the share of values whose
    magnitude the provider overstates, and the relative error's correlation with the value's
    magnitude. Rounding noise is unbiased and scale-free; changed weights need not be."""
    rows = hidden.detach().float().cpu()
    out = []
    for n, chunk in enumerate(decode_proof(proof, rows.shape[1])):
        block = rows[n * CHUNK_TOKENS : (n + 1) * CHUNK_TOKENS].reshape(-1)
        actual = block[torch.tensor(chunk.indices)]
        committed = torch.tensor(chunk.values)
        signed = (committed - actual) / actual.abs().clamp(min=1e-3)
        rel = signed.abs()
        outward = ((committed.abs() - actual.abs()) > 0).float().mean()
        size = actual.abs().log()
        corr = torch.corrcoef(torch.stack([size, rel]))[0, 1] if rel.std() > 0 else torch.tensor(0.0)
        out.append({"p90": round(float(rel.quantile(0.9)), 6), "bias": round(float(signed.mean()), 6),
                    "outward": round(float(outward), 4), "corr": round(float(corr.nan_to_num()), 4)})  # fmt: skip
    return out


# name, honest profile, engine, batches, threads (None: the default, every core)
Row = tuple[str, str | None, Callable[[], GenerativeEngine], list[int], int | None]


def with_threads(engine: GenerativeEngine, threads: int | None) -> int:
    """Run `engine` at `threads` (llama.cpp: its contexts; transformers: torch's pool); the
    torch pool's previous size, to restore."""
    before = torch.get_num_threads()
    if threads is not None:
        set_threads = getattr(engine, "set_threads", None)
        if callable(set_threads):
            set_threads(threads)
        else:
            torch.set_num_threads(threads)
    return before


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
        ("transformers fp32", "transformers", harness.copy, batches, None),
        ("transformers fp32, 1 thread", "transformers", harness.copy, batches, 1),
        ("transformers bf16", "transformers-bf16", lambda: harness.copy(torch.bfloat16), batches, None),
        ("llama.cpp F16 copy", "llamacpp-f16", lambda: llama(gguf, "f16"), batches, None),
        ("llama.cpp F16 copy, 1 thread", "llamacpp-f16", lambda: llama(gguf, "f16"), batches, 1),
        ("llama.cpp Q4_1 native (the registered file)", "llamacpp-native", lambda: llama(gguf, "native"), batches,
         None),
        ("int8 weights (transformers)", None, lambda: quantize_int8(harness.copy()), cheat, None),
        ("Q8_0 requantisation (llama.cpp)", None, lambda: llama(requantise(gguf, "Q8_0", work / "q8.gguf")), cheat,
         None),
        ("Q4_K_M requantisation (llama.cpp)", None, lambda: llama(requantise(gguf, "Q4_K_M", work / "q4km.gguf")),
         cheat, None),
    ]  # fmt: skip
    for spread in SPREADS:
        out = work / f"moved-{spread}.gguf"
        rows.append((f"every weight moved {spread:.1%}", None, lambda s=spread, o=out: llama(sibling(gguf, s, 11, o)),
                     cheat, None))  # fmt: skip
    f16_id = "0x" + gguf_manifest(expanded_f16(load_binding(), gguf, model_id)).model_id.hex()
    registrations = {
        "0x" + model_id.hex(): ["transformers", "transformers-bf16", "llamacpp-f16", "llamacpp-native"],
        f16_id: ["transformers", "transformers-bf16", "llamacpp-f16"],
    }
    return rows, {"model": MODEL, "model_id": "0x" + model_id.hex(), "f16_model_id": f16_id,
                  "registrations": registrations}  # fmt: skip


def tiny_rows(harness: Harness, batches: list[int]) -> tuple[list[Row], dict[str, Any]]:
    """The test model's rows (transformers only: it has no GGUF): fp32 and bf16 honest, the cheats."""
    from allmende.testing.harness import load
    from allmende.testing.weights import move_weights

    cheat = [max(batches)]
    rows: list[Row] = [
        ("transformers fp32", "transformers", lambda: load(harness.path), batches, None),
        ("transformers fp32, 1 thread", "transformers", lambda: load(harness.path), batches, 1),
        ("transformers bf16", "transformers-bf16", lambda: load(harness.path, torch.bfloat16), batches, None),
        ("int8 weights (transformers)", None, lambda: quantize_int8(load(harness.path)), cheat, None),
    ]
    for spread in SPREADS:
        rows.append((f"every weight moved {spread:.1%}", None,
                     lambda s=spread: move_weights(load(harness.path), s, 11), cheat, None))  # fmt: skip
    model_id = "0x" + harness.reference.model_id.hex()
    registrations = {model_id: ["transformers", "transformers-bf16"]}
    return rows, {"model": "allmende:tiny", "model_id": model_id, "registrations": registrations}


def main() -> None:
    parser = argparse.ArgumentParser(description="divergence statistics of honest and cheating servings")
    parser.add_argument("--model", default=MODEL, choices=(MODEL, "allmende:tiny"))
    parser.add_argument("--audits", type=int, default=48, help="audits per row")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per audit")
    parser.add_argument("--batches", default="1,48", help="batch shapes of the honest rows")
    parser.add_argument("--write-profiles", action="store_true", help="add the calibrated honest profiles")
    parser.add_argument("--out", type=Path, help="raw statistics (default bench/results/evidence_<model>_cpu.json)")
    parser.add_argument("--refit", action="store_true", help="fit the profiles from the raw file again, run nothing")
    parser.add_argument("--only", help="comma-separated parts of row names: measure those rows only, and keep the "
                        "raw file's other rows (rows no longer defined are dropped)")  # fmt: skip
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
    results: list[dict[str, Any]] = []
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        kept = {r[0] for r in rows}
        rows = [r for r in rows if any(w in r[0] for w in wanted)]
        measuring = {r[0] for r in rows}
        if out.exists():
            results = [r for r in json.loads(out.read_text())["rows"] if r["row"] in kept - measuring]
    for name, profile, make, shapes, threads in rows:
        engine = make()
        for batch in shapes:
            started = time.perf_counter()
            before = with_threads(engine, threads)
            try:
                served = serve(engine, requests, batch)
            finally:
                torch.set_num_threads(before)
            stats = []
            for (prompt, params), (tokens, proof) in zip(requests, served, strict=True):
                prefill = ref.prefill(prompt + tokens)
                producing = prefill[0][len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
                measured = audit_stats(prefill, len(prompt), tokens, proof, params).to_json()
                stats.append({**measured, "chunk_detail": chunk_detail(proof, producing)})
            count = sum(len(s["gaps"]) for s in stats)
            mismatch = sum(1 for s in stats for g in s["gaps"] if g > 0) / max(count, 1)
            took = time.perf_counter() - started
            print(f"{name}, batch {batch}: {count} tokens, mismatch {mismatch:.4f}, {took:.0f}s", flush=True)
            results.append({"row": name, "profile": profile, "honest": profile is not None, "batch": batch,
                            "threads": threads, "audits": stats})  # fmt: skip
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

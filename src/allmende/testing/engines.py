"""Cross-engine rows of the calibration harness: llama.cpp and transformers on the same GGUF.

Honest: a llama.cpp provider checked by a transformers validator (the network's reference),
the same with the weights held as their F16 copy (the default for small models), and the
reverse, a transformers provider checked by a validator that runs llama.cpp, each greedy and
with seeded sampling, both engines on the same GGUF file (the same model id).
Cheats, all served under the GGUF's id by a llama.cpp provider and checked by transformers:
the same model requantised to a cheaper type with llama.cpp's own quantizer (Q4_0, Q2_K),
or rewritten without one transformer block, or another model of the same architecture and
tokenizer (every weight moved, `sibling`), served with its own proof; and a cheap generator
(the Q2_K copy) whose proof is then recomputed honestly by one llama.cpp prefill of the
claimed model over its output.

Imported only when asked for (`Harness(..., engines=True)`), so the harness needs no
llama-cpp-python otherwise.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allmende.engine import resolve_model
from allmende.engine.base import EngineError, SamplingParams
from allmende.engine.llamacpp import LlamaCppEngine, load_binding
from allmende.engine.proofs import commit
from allmende.testing.claims import GREEDY, SAMPLED, Claim, generate

CHEAPER = ("Q4_0", "Q2_K")  # llama.cpp file types cheaper than the default model's Q4_1
SKIPPED_LAYER = 15  # the block a cheating GGUF leaves out (of SmolLM2's 30)
# "another model": every weight moved by this share of its tensor's standard deviation, about
# what 4-bit quantization moves it; at 0.05 every check still failed (median proof error
# 0.025-0.072), at 0.02 (a light fine-tune) half passed: the README's known limit
SIBLING_SPREAD = 0.1


def requantise(gguf: Path, file_type: str, out: Path) -> Path:
    """`gguf` requantised to `file_type` (a LLAMA_FTYPE_MOSTLY_* name) by llama.cpp's quantizer."""
    lib = load_binding()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.allow_requantize = True
    if lib.llama_model_quantize(str(gguf).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise EngineError(f"llama.cpp could not requantise {gguf} to {file_type}")
    return out


def _writer_like(reader: Any, out: Path, changed: dict[str, Any]) -> Any:
    """A GGUFWriter to `out` holding every metadata field of `reader` (a GGUFReader), with the
    values in `changed` instead; the caller adds the tensors and writes the file."""
    from gguf import GGUFValueType, GGUFWriter

    arch = str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(str(out), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # written by the writer itself
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, changed.get(key, field.contents()), kind, sub_type=sub)
    return writer


def without_layer(gguf: Path, layer: int, out: Path) -> Path:
    """`gguf` with transformer block `layer` left out (later blocks renumbered, the block count
    one less): a cheaper model that looks like the claimed one to llama.cpp. Written with the
    `gguf` package: every metadata field and every other tensor byte for byte."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    arch = str(reader.fields["general.architecture"].contents())
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    writer = _writer_like(reader, out, {f"{arch}.block_count": blocks - 1})
    for tensor in reader.tensors:
        name = tensor.name
        if name.startswith("blk."):
            _, index, rest = name.split(".", 2)
            if int(index) == layer:
                continue
            if int(index) > layer:
                name = f"blk.{int(index) - 1}.{rest}"
        writer.add_tensor(name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def sibling(gguf: Path, spread: float, seed: int, out: Path) -> Path:
    """Another model with `gguf`'s architecture and tokenizer: every weight moved by Gaussian
    noise of `spread` times its tensor's standard deviation (a fine-tune of the same base, say),
    the matrices written in F16, the rest in F32. Served under `gguf`'s id, it is the cheat
    "another model": the token stream and the proof's shape look right, the weights are not
    the ones claimed."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf))
    writer = _writer_like(reader, out, {"general.file_type": 1})  # mostly F16
    rng = np.random.default_rng(seed)
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        moved = weights + rng.standard_normal(weights.shape, dtype=np.float32) * spread * float(weights.std())
        if moved.ndim >= 2:
            writer.add_tensor(tensor.name, moved.astype(np.float16), raw_dtype=GGMLQuantizationType.F16)
        else:
            writer.add_tensor(tensor.name, moved, raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def engine_variants(harness: Any, workdir: Path) -> list[tuple[str, bool, Callable[[str], Claim], int]]:
    """The cross-engine rows for `harness` (an `allmende.testing.harness.Harness` that runs a
    GGUF model: `Harness(model=...)`)."""
    assert harness.model is not None
    resolved = resolve_model(harness.model)
    if resolved.gguf is None or resolved.gguf_id is None:
        raise EngineError(f"the cross-engine rows need a GGUF model, not {harness.model}")
    gguf, tokenizer, model_id = resolved.gguf, resolved.path, resolved.gguf_id

    def served(path: Path, weights: str = "native") -> LlamaCppEngine:
        return LlamaCppEngine(str(harness.model), path, tokenizer, model_id, max_concurrency=4, weights=weights)

    llama = served(gguf)
    llama_f16 = served(gguf, "f16")  # the same weights held in F16 (what a provider runs by default)
    cheap = {q: served(requantise(gguf, q, workdir / f"model-{q}.gguf")) for q in CHEAPER}
    skipping = served(without_layer(gguf, SKIPPED_LAYER, workdir / "model-skip.gguf"))
    other = served(sibling(gguf, SIBLING_SPREAD, 7, workdir / "model-sibling.gguf"))
    ref = harness.reference

    def params_of(base: SamplingParams) -> SamplingParams:
        return dataclasses.replace(base, max_tokens=harness.tokens)

    def provided(engine: LlamaCppEngine | None, base: SamplingParams, validator: Any = None) -> Callable[[str], Claim]:
        """`engine` (None: the transformers reference) answers; `validator` (None: the
        transformers reference) checks."""

        def make(question: str) -> Claim:
            prompt = harness.prompt(question)
            params = params_of(base)
            out, proof, seconds = generate(engine or ref, prompt, params)
            return Claim(prompt, out, proof, params, seconds, validator=validator)

        return make

    def recomputed(engine: LlamaCppEngine, base: SamplingParams) -> Callable[[str], Claim]:
        """Output of a cheap generator; proof by one honest llama.cpp prefill of the claimed model."""

        def make(question: str) -> Claim:
            prompt = harness.prompt(question)
            params = params_of(base)
            out, _, seconds = generate(engine, prompt, params)
            hidden, _ = llama.prefill(prompt + out)
            proof = commit(hidden[len(prompt) - 1 : len(prompt) - 1 + len(out)]) if out else b""
            return Claim(prompt, out, proof, params, seconds)

        return make

    rows: list[tuple[str, bool, Callable[[str], Claim], int]] = []
    for label, base in (("greedy", GREEDY), ("seeded sampling", SAMPLED)):
        rows += [
            (f"llama.cpp provider, transformers validator, {label}", True, provided(llama, base), 1),
            (f"transformers provider, llama.cpp validator, {label}", True, provided(None, base, llama), 1),
            (f"llama.cpp provider, F16 copy of the weights, transformers validator, {label}", True,
             provided(llama_f16, base), 1),
        ]  # fmt: skip
        rows += [
            (f"llama.cpp, requantised to {q} under the Q4_1 id, {label}", False, provided(engine, base), 1)
            for q, engine in cheap.items()
        ]
        rows += [
            (f"llama.cpp, block {SKIPPED_LAYER} left out, {label}", False, provided(skipping, base), 1),
            (
                f"llama.cpp, another model (weights moved by {SIBLING_SPREAD:.0%} of their spread), {label}",
                False,
                provided(other, base),
                1,
            ),
            (f"llama.cpp Q2_K + recomputed llama.cpp proof, {label}", False, recomputed(cheap["Q2_K"], base), 1),
        ]
    return rows

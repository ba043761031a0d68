"""Choosing the engine: what `--engine` accepts and the clear errors it gives (no llama.cpp needed)."""

from __future__ import annotations

import sys

import pytest

from allmende.engine import DEFAULT_CHAT_MODEL, EngineError, load_engine
from allmende.engine.tiny import TINY_NAME


def test_an_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(EngineError, match="unknown engine 'vllm'; choose one of transformers, llamacpp"):
        load_engine(DEFAULT_CHAT_MODEL, engine="vllm")


def test_the_llamacpp_engine_refuses_a_model_that_is_not_gguf() -> None:
    with pytest.raises(EngineError, match="GGUF models only"):
        load_engine(TINY_NAME, engine="llamacpp")


def test_the_llamacpp_engine_without_its_binding_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    with pytest.raises(EngineError, match=r"pip install 'allmende\[llamacpp\]'"):
        load_engine(DEFAULT_CHAT_MODEL, engine="llamacpp")

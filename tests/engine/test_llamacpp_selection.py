"""Choosing the engine: what `--engine` accepts and the clear errors it gives (no llama.cpp needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from allmende.engine import DEFAULT_CHAT_MODEL, EngineError, engine_for, llamacpp, load_engine, resolve_model
from allmende.engine.llamacpp import chosen_weights
from allmende.engine.tiny import TINY_NAME


def test_an_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(EngineError, match="unknown engine 'vllm'; choose one of auto, transformers, llamacpp"):
        load_engine(DEFAULT_CHAT_MODEL, engine="vllm")


def test_auto_serves_gguf_models_with_llamacpp_when_it_is_installed_and_the_rest_with_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import allmende.engine as engines

    assert engine_for(DEFAULT_CHAT_MODEL, "auto") == "llamacpp"  # `make install` builds llama-cpp-python
    assert engine_for(TINY_NAME, "auto") == "transformers"  # not a GGUF model
    assert engine_for("minilm", "auto") == "transformers"
    assert engine_for(DEFAULT_CHAT_MODEL, "transformers") == "transformers"  # asked for explicitly
    monkeypatch.setattr(engines, "llamacpp_installed", lambda: False)
    assert engine_for(DEFAULT_CHAT_MODEL, "auto") == "transformers"  # without llama.cpp: the reference


def test_the_llamacpp_engine_refuses_a_model_that_is_not_gguf() -> None:
    with pytest.raises(EngineError, match="GGUF models only"):
        load_engine(TINY_NAME, engine="llamacpp")


def test_the_llamacpp_engine_without_its_binding_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    with pytest.raises(EngineError, match=r"pip install 'allmende\[llamacpp\]'"):
        load_engine(DEFAULT_CHAT_MODEL, engine="llamacpp")


def _gguf(path: Path, file_type: int) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_file_type(file_type)
    writer.add_tensor("w", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_llamacpp_weights_f16_for_small_quantized_files_native_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALLMENDE_LLAMACPP_WEIGHTS", raising=False)
    default = resolve_model(DEFAULT_CHAT_MODEL).gguf
    assert default is not None
    assert chosen_weights(default) == "f16"  # Q4_1, 135M weights: a 270 MB copy
    assert chosen_weights(_gguf(tmp_path / "f16.gguf", 1)) == "native"  # nothing to expand
    assert chosen_weights(_gguf(tmp_path / "q4.gguf", 3)) == "f16"
    monkeypatch.setattr(llamacpp, "F16_LIMIT_BYTES", 32)  # a big model: its copy would not fit
    assert chosen_weights(_gguf(tmp_path / "q4.gguf", 3)) == "native"
    monkeypatch.setenv("ALLMENDE_LLAMACPP_WEIGHTS", "native")
    assert chosen_weights(default) == "native"
    assert chosen_weights(default, "f16") == "f16"  # asked for explicitly
    monkeypatch.setenv("ALLMENDE_LLAMACPP_WEIGHTS", "q8")
    with pytest.raises(EngineError, match="must be one of native, f16, mixed, not 'q8'"):
        chosen_weights(default)


def test_up_shares_the_cores_between_its_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from allmende.node.devnet import shared_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    both = ["--torch-threads", "2", "--llamacpp-threads", "2"]
    assert shared_threads([DEFAULT_CHAT_MODEL, "minilm"], 2, []) == both
    assert shared_threads([DEFAULT_CHAT_MODEL], 8, []) == ["--torch-threads", "1", "--llamacpp-threads", "1"]
    assert shared_threads([TINY_NAME, "minilm"], 2, []) == ["--torch-threads", "2"]  # nothing on llama.cpp
    assert shared_threads([DEFAULT_CHAT_MODEL], 2, ["--engine=transformers"]) == ["--torch-threads", "2"]
    assert shared_threads([DEFAULT_CHAT_MODEL], 2, ["--engine", "transformers"]) == ["--torch-threads", "2"]
    assert shared_threads([DEFAULT_CHAT_MODEL], 2, ["--engine=llamacpp"]) == both
    assert shared_threads([DEFAULT_CHAT_MODEL], 2, ["--llamacpp-threads=3"]) == ["--torch-threads", "2"]
    assert shared_threads([DEFAULT_CHAT_MODEL], 2, ["--torch-threads=1"]) == ["--llamacpp-threads", "2"]

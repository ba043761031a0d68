"""Model folders are served as what their config.json says they are."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model

from allmende.api.canonical import prompt_of
from allmende.core.errors import UnknownModel
from allmende.engine import SamplingParams, collect, load_engine, resolve_model_path
from allmende.engine.base import EmbeddingInput
from allmende.engine.embeddings import EmbeddingEngine
from allmende.engine.kinds import model_kind
from allmende.engine.tiny import ensure_tiny_model
from allmende.engine.transformers_lm import CausalLMEngine


def tokenizer_into(folder: Path, pad: bool) -> int:
    """The tiny model's tokenizer, optionally without a pad token; returns its vocab size."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    if not pad:
        tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    vocab = tokenizer_into(folder, pad=True)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_a_gpt2_folder_is_served_as_a_generative_model(gpt2_folder: Path) -> None:
    _, is_embedding = resolve_model_path(str(gpt2_folder))
    engine = load_engine(str(gpt2_folder))
    prompt = engine.prompt_ids(prompt_of("completion", {"prompt": "Es war einmal"}))  # type: ignore[attr-defined]
    generation = asyncio.run(collect(engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0)), len(prompt)))

    assert json.loads((gpt2_folder / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert model_kind(gpt2_folder) == "generate" and not is_embedding
    assert isinstance(engine, CausalLMEngine)
    assert generation.completion_tokens == 6


def test_an_embedding_model_without_a_pad_token_embeds_a_batch(tmp_path: Path) -> None:
    vocab = tokenizer_into(tmp_path, pad=False)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    engine = load_engine(str(tmp_path))
    vectors, tokens = asyncio.run(engine.embed(EmbeddingInput(("a", "a much longer input to pad the short one"))))

    assert isinstance(engine, EmbeddingEngine)
    assert len(vectors) == 2 and len(vectors[0]) == 32 and tokens > 2
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-5


def test_a_bert_encoder_is_an_embedding_model(tmp_path: Path) -> None:
    BertModel(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    assert model_kind(tmp_path) == "embed"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"architectures": ["WhisperForConditionalGeneration"]}, "cannot serve architecture"),
        ({"model_type": "llama"}, "names no architectures"),
        (None, "no config.json"),
        ("{broken", "not valid JSON"),
    ],
    ids=["speech-model", "no-architectures", "no-config", "broken-json"],
)
def test_a_folder_that_cannot_be_served_gets_a_clear_error(tmp_path: Path, config: object, words: str) -> None:
    if isinstance(config, dict):
        (tmp_path / "config.json").write_text(json.dumps(config))
    elif isinstance(config, str):
        (tmp_path / "config.json").write_text(config)
    with pytest.raises(UnknownModel, match=words):
        resolve_model_path(str(tmp_path))


def test_the_tiny_and_minilm_models_keep_their_kinds() -> None:
    assert resolve_model_path("allmende:tiny")[1] is False
    assert resolve_model_path("minilm")[1] is True

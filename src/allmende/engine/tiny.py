"""`allmende:tiny` — a built-in tiny Llama-architecture model for tests and demos.

Generated, not downloaded: weights from numpy's PCG64 stream with a fixed seed (stable
across machines and numpy versions), a real byte-level BPE tokenizer built with the
`tokenizers` library, all written as plain files (safetensors, config.json,
tokenizer.json) and then loaded through the same `from_pretrained` path as any hub
model. The files are byte-identical everywhere, so its model id is a constant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from allmende.config import from_environment

TINY_NAME = "allmende:tiny"
SEED = 20_251_125
VERSION = 1

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 259,
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 256,
    "eos_token_id": 257,
    "pad_token_id": 258,
    "torch_dtype": "float32",
}
SPECIAL = ["<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def tiny_dir() -> Path:
    """Where the tiny model lives (created on first use)."""
    return from_environment().cache_dir / f"tiny-v{VERSION}"


def ensure_tiny_model() -> Path:
    """Write the tiny model's files if they are not there yet; return the folder."""
    folder = tiny_dir()
    if (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    write_tiny_model(tmp, SEED)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its files are identical
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return folder


def write_tiny_model(folder: Path, seed: int) -> Path:
    """Write a tiny model with weights from `seed` (another seed = another model, same shape)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=1, sort_keys=True))
    save_file(_weights(seed), str(folder / "model.safetensors"))
    _write_tokenizer(folder)
    return folder


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    c = CONFIG
    h, inter, v = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["vocab_size"])  # type: ignore[call-overload]
    heads, kv = int(c["num_attention_heads"]), int(c["num_key_value_heads"])  # type: ignore[call-overload]
    head_dim = h // heads

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": mat(v, h)}
    for i in range(int(c["num_hidden_layers"])):  # type: ignore[call-overload]
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(heads * head_dim, h)
        w[p + "self_attn.k_proj.weight"] = mat(kv * head_dim, h)
        w[p + "self_attn.v_proj.weight"] = mat(kv * head_dim, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, heads * head_dim)
        w[p + "mlp.gate_proj.weight"] = mat(inter, h)
        w[p + "mlp.up_proj.weight"] = mat(inter, h)
        w[p + "mlp.down_proj.weight"] = mat(h, inter)
        w[p + "input_layernorm.weight"] = np.ones(h, dtype=np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, dtype=np.float32)
    w["model.norm.weight"] = np.ones(h, dtype=np.float32)
    w["lm_head.weight"] = mat(v, h)
    return w


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL)
    (folder / "tokenizer.json").write_text(tokenizer.to_str())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "model_max_length": CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))

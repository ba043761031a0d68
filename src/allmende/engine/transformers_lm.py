"""Causal language models through Hugging Face transformers (CPU here; CUDA when present).

All generations of one model run in one batch (`allmende.engine.scheduler`): a request
joins at the next step boundary and streams its tokens as the batch produces them. Each
sequence samples by its own parameters and seed (`allmende.engine.sampling`) and builds
its proof from its own final hidden states. The asyncio side only moves events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, TypeGuard

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from allmende.core import build_manifest
from allmende.engine.base import Engine, EngineError, Kind, PromptTooLong, SamplingParams, TokenEvent, choice_params
from allmende.engine.grammar import Constraint, grammar_masks, ll_tokenizer
from allmende.engine.scheduler import BatchScheduler
from allmende.engine.sequence import Sequence
from allmende.tools import ToolSpecError, render_messages, template_renders_tools

MAX_CHOICES = 16  # most completions one request may ask for (n)


def token_ids(raw: object) -> TypeGuard[list[int]]:
    """A non-empty list of ints (not bools): token ids as OpenAI's APIs accept them."""
    return isinstance(raw, list) and bool(raw) and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)


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


class CausalLMEngine(Engine):
    kind = "generate"

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

    # ----------------------------------------------------------- prompts

    def prompt_ids(self, kind: Kind, body: dict[str, object]) -> list[int]:
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise EngineError("messages must be a non-empty list")
            try:  # tools and tool-call history: natively where the template renders tools (allmende.tools)
                clean, tools = render_messages(body, template_renders_tools(self.tokenizer.chat_template))
            except ToolSpecError as exc:
                raise EngineError(str(exc)) from None
            ids = self.tokenizer.apply_chat_template(clean, tools=tools, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        if kind == "completion":
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
                prompt = prompt[0]
            if token_ids(prompt):
                return list(prompt)  # the model's own token ids (check_length checks the vocabulary)
            if not isinstance(prompt, str):
                raise EngineError("prompt must be a string or an array of token ids")
            return [int(i) for i in self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        raise EngineError(f"{self.name} is a generative model; it does not do {kind}")

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        vocab = int(self.model.config.vocab_size)
        if not all(isinstance(i, int) and 0 <= i < vocab for i in prompt_ids):
            raise EngineError(f"prompt token ids must be integers in [0, {vocab})")
        if len(prompt_ids) + max_tokens > self.context_length:
            raise PromptTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the context length "
                f"of {self.name} ({self.context_length})"
            )

    # -------------------------------------------------------- generation

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        self.check_length(prompt_ids, params.max_tokens)
        return self._one_choice(prompt_ids, params)

    async def _one_choice(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        async with contextlib.aclosing(self._stream(prompt_ids, [params])) as stream:  # a client's close reaches it
            async for _, event in stream:
                yield event

    def generate_choices(
        self, prompt_ids: list[int], params: SamplingParams, n: int
    ) -> AsyncIterator[tuple[int, TokenEvent]]:
        """`n` completions of one prompt, served by the same batch (the prompt is prefilled
        once); yields (choice index, event) as the choices produce them. Choice i samples
        with `choice_params(params, i)`."""
        self.check_length(prompt_ids, params.max_tokens)
        if not 1 <= n <= MAX_CHOICES:
            raise EngineError(f"n must be between 1 and {MAX_CHOICES}")
        return self._stream(prompt_ids, [choice_params(params, i) for i in range(n)])

    async def _stream(
        self, prompt_ids: list[int], choices: list[SamplingParams]
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        def emitter(index: int) -> Any:
            def emit(item: TokenEvent | BaseException | None) -> None:
                with contextlib.suppress(RuntimeError):  # the consumer's event loop is gone: nobody listens
                    loop.call_soon_threadsafe(queue.put_nowait, (index, item))

            return emit

        sequences = [
            Sequence(list(prompt_ids), p, emitter(i), self.decode, self.eos_ids, self.device, self.constraint(p))
            for i, p in enumerate(choices)
        ]
        self.scheduler.submit(sequences)
        running = len(sequences)
        try:
            while running:
                index, item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield index, item
        finally:
            for sequence in sequences:  # the client went away (or failed): free the slots now
                if not sequence.finished:
                    self.scheduler.cancel(sequence)

    def constraint(self, params: SamplingParams) -> Constraint | None:
        """The grammar state of a structured-output sequence (None without a grammar)."""
        if params.grammar is None:
            return None
        return Constraint(self.grammar_tokenizer, params.grammar, int(self.model.config.vocab_size), self.eos_ids)

    def grammar_masks(self, grammar: str, output_ids: list[int]) -> torch.Tensor:
        """The masks `output_ids` were drawn under (for the checker; see engine/grammar.py)."""
        return grammar_masks(
            self.grammar_tokenizer, grammar, int(self.model.config.vocab_size), self.eos_ids, output_ids
        )

    @functools.cached_property
    def grammar_tokenizer(self) -> Any:
        return ll_tokenizer(self.tokenizer)

    async def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
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

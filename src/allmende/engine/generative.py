"""What every batching generative engine shares, whatever runs its forward passes.

Prompts (chat template, plain text or token ids, by the model's own tokenizer), length
and vocabulary checks, streaming of one or `n` choices through the model's `StepScheduler`,
cancellation when a client goes away, grammar constraints (llguidance masks from the
request's grammar) and the detokenizing the checker repeats. Each `Sequence` draws its
tokens with the protocol's seeded rule from the logits its backend hands it, reports
log-probabilities from that same row, and builds its proof from the final hidden states,
so the transformers and the llama.cpp engine differ only in their scheduler's step and in
`prefill` (the validator's one pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeGuard

import torch

from allmende.engine.base import (
    ChatPrompt,
    EmbeddingInput,
    Engine,
    EngineError,
    Prompt,
    SamplingParams,
    TokenEvent,
    choice_params,
)
from allmende.engine.batching import StepScheduler
from allmende.engine.chat import render_chat, template_renders_tools
from allmende.engine.grammar import Constraint, grammar_masks, ll_tokenizer
from allmende.engine.handoff import handoff_for
from allmende.engine.sequence import Sequence

MAX_CHOICES = 16  # most completions one request may ask for (n)


def token_ids(raw: object) -> TypeGuard[list[int]]:
    """A non-empty list of ints (not bools): token ids as OpenAI's APIs accept them."""
    return isinstance(raw, list) and bool(raw) and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)


class GenerativeEngine(Engine):
    """A chat/completion model served through a `StepScheduler`. Subclasses set `tokenizer`,
    `eos_ids`, `context_length`, `scheduler` and `device`, and implement `vocab_size` and `prefill`."""

    kind = "generate"
    tokenizer: Any
    eos_ids: set[int]
    scheduler: StepScheduler
    device: str

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Length of a row of logits (the ids a token may have)."""

    @abstractmethod
    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over `token_ids`: (final hidden states, logits), one row per position."""

    def final_hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        return self.prefill(token_ids)[0]

    # ----------------------------------------------------------- prompts

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, ChatPrompt):
            if not prompt.messages:
                raise EngineError("messages must be a non-empty list")
            # tools and tool-call history: natively where the template renders tools (engine.chat)
            clean, tools = render_chat(prompt, template_renders_tools(self.tokenizer.chat_template))
            rendered = self.tokenizer.apply_chat_template(clean, tools=tools, add_generation_prompt=True, tokenize=True)
            if isinstance(rendered, dict) or hasattr(rendered, "keys"):
                rendered = rendered["input_ids"]
            ids: list[int] = [int(i) for i in rendered]
        elif isinstance(prompt.text, str):
            ids = self.encode_text(prompt.text)
        else:
            ids = list(prompt.text)  # the model's own token ids (check_length checks the vocabulary)
        if prompt.continuation:  # text a failed provider already streamed: carry on after it
            ids += self.encode_text(prompt.continuation)
        return ids

    def continued(self, prompt: Prompt, params: SamplingParams) -> SamplingParams:
        if not prompt.continuation:
            return params
        # tokenized as `prompt_ids` appends it: `carried` is the prompt's last ids
        return dataclasses.replace(params, carried=tuple(self.encode_text(prompt.continuation)))

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        super().check_length(prompt_ids, max_tokens)
        vocab = self.vocab_size
        if not all(isinstance(i, int) and 0 <= i < vocab for i in prompt_ids):
            raise EngineError(f"prompt token ids must be integers in [0, {vocab})")

    def check_sampling(self, params: SamplingParams) -> None:
        """EngineError (param `logit_bias`) for a bias on a token id this model does not have."""
        if params.logit_bias and params.logit_bias[-1][0] >= self.vocab_size:
            raise EngineError(f"logit_bias token ids must be below the vocabulary size {self.vocab_size}", "logit_bias")

    # -------------------------------------------------------- generation

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        self.check_length(prompt_ids, params.max_tokens)
        self.check_sampling(params)
        return self._one_choice(prompt_ids, self.fitted(prompt_ids, params))

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
        self.check_sampling(params)
        if not 1 <= n <= MAX_CHOICES:
            raise EngineError(f"n must be between 1 and {MAX_CHOICES}")
        params = self.fitted(prompt_ids, params)
        return self._stream(prompt_ids, [choice_params(params, i) for i in range(n)])

    async def _stream(
        self, prompt_ids: list[int], choices: list[SamplingParams]
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        handoff = handoff_for(asyncio.get_running_loop())  # the scheduler wakes this loop once per step
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        def emitter(index: int) -> Any:
            def emit(item: TokenEvent | BaseException | None) -> None:
                handoff.put(queue, (index, item))

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

    # ----------------------------------------------------------- grammar

    def constraint(self, params: SamplingParams) -> Constraint | None:
        """The grammar state of a structured-output sequence (None without a grammar)."""
        if params.grammar is None:
            return None
        return Constraint(self.grammar_tokenizer, params.grammar, self.vocab_size, self.eos_ids)

    def grammar_masks(self, grammar: str, output_ids: list[int]) -> torch.Tensor:
        """The masks `output_ids` were drawn under (for the checker; see engine/grammar.py)."""
        return grammar_masks(self.grammar_tokenizer, grammar, self.vocab_size, self.eos_ids, output_ids)

    @functools.cached_property
    def grammar_tokenizer(self) -> Any:
        return ll_tokenizer(self.tokenizer)

    # ------------------------------------------------------------- text

    async def embed(self, request: EmbeddingInput) -> tuple[list[list[float]], int]:
        raise EngineError(f"{self.name} is a generative model; it does not do embeddings")

    def decode(self, token_ids: list[int]) -> str:
        """Text of token ids, exactly as streamed (no special tokens, no space clean-up)."""
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text, no special tokens."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

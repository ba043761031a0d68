"""The one engine interface every inference backend implements.

An engine serves one model: streaming generation (chat or plain completion) or
embeddings, and exposes the final hidden states that proofs are built from.
Generation runs in worker threads so the event loop never blocks; a semaphore
bounds how many generations run at once.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from allmende.core.errors import InvalidInput

Kind = Literal["chat", "completion", "embedding"]


class EngineError(InvalidInput):
    """A request the engine cannot serve (too long, bad parameters)."""

    code = "engine_error"


class PromptTooLong(EngineError):
    code = "context_length_exceeded"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    # log-probabilities to report with each token: None = none, k = the drawn token's and the
    # k most likely ones (they never change which token is drawn)
    logprobs: int | None = None
    # an llguidance grammar (from the request's response_format) every token must satisfy:
    # it decides which tokens may be drawn, so the checker applies it too
    grammar: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 1 << 20:
            raise EngineError("max_tokens must be between 1 and 1048576")
        if not 0.0 <= self.temperature <= 2.0:
            raise EngineError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise EngineError("top_p must be in (0, 1]")
        if len(self.stop) > 4:
            raise EngineError("at most 4 stop sequences")


SEED_MASK = (1 << 63) - 1


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sampling parameters of choice `index` of an `n > 1` request: choice 0 is the request
    itself, choice i draws from seed + i (unseeded choices each draw fresh randomness)."""
    if index == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=(params.seed + index) & SEED_MASK)


@dataclass
class TokenEvent:
    """One step of a generation stream."""

    text: str  # new text since the previous event (may be empty mid-character)
    token_id: int | None
    finish_reason: Literal["stop", "length"] | None = None
    proof: bytes | None = None  # TOPLOC-style commitment, on the final event of a generation
    # with `SamplingParams.logprobs`: {"token", "bytes", "logprob", "top_logprobs": [...]} of
    # `token_id`, from the row of logits it was drawn from (see `token_logprob`)
    logprob: dict[str, object] | None = None


@dataclass
class Generation:
    """What a finished generation produced (collected by `collect`)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    token_ids: list[int] = field(default_factory=list)
    proof: bytes = b""
    logprobs: list[dict[str, object]] | None = None  # one per output token, when asked for


class Engine(ABC):
    """One model behind one interface."""

    name: str  # what users call it ("allmende:tiny", a hub id, a path)
    model_id: bytes  # content address of the files
    kind: Literal["generate", "embed"]
    context_length: int

    @abstractmethod
    def prompt_ids(self, kind: Kind, body: dict[str, object]) -> list[int]:
        """Token ids of the prompt an OpenAI-style body asks for (chat template applied)."""

    @abstractmethod
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """Stream the completion of `prompt_ids`."""

    def generate_choices(
        self, prompt_ids: list[int], params: SamplingParams, n: int
    ) -> AsyncIterator[tuple[int, TokenEvent]]:
        """`n` completions of one prompt as (choice index, event); choice i samples with
        `choice_params(params, i)`. This default runs them one after another; a batching
        engine serves them together."""
        return self._one_by_one(prompt_ids, params, n)

    async def _one_by_one(
        self, prompt_ids: list[int], params: SamplingParams, n: int
    ) -> AsyncIterator[tuple[int, TokenEvent]]:
        for index in range(n):
            async for event in self.generate(prompt_ids, choice_params(params, index)):
                yield index, event

    @abstractmethod
    async def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """Embeddings of `texts` and the number of tokens they used."""

    @abstractmethod
    def final_hidden_states(self, token_ids: list[int]) -> object:
        """Last-layer hidden states (one row per position) of one forward pass over `token_ids`."""


async def collect_choices(
    stream: AsyncIterator[tuple[int, TokenEvent]], prompt_tokens: int, n: int
) -> list[Generation]:
    """Drain a `generate_choices` stream into one Generation per choice."""
    queues: list[list[TokenEvent]] = [[] for _ in range(n)]
    async for index, event in stream:
        queues[index].append(event)

    async def replay(events: list[TokenEvent]) -> AsyncIterator[TokenEvent]:
        for event in events:
            yield event

    return [await collect(replay(events), prompt_tokens) for events in queues]


async def collect(stream: AsyncIterator[TokenEvent], prompt_tokens: int) -> Generation:
    """Drain a stream into one Generation."""
    parts: list[str] = []
    ids: list[int] = []
    finish = "length"
    proof = b""
    logprobs: list[dict[str, object]] = []
    async for event in stream:
        if event.proof is not None:
            proof = event.proof
        if event.logprob is not None:
            logprobs.append(event.logprob)
        parts.append(event.text)
        if event.token_id is not None:
            ids.append(event.token_id)
        if event.finish_reason:
            finish = event.finish_reason
    return Generation("".join(parts), prompt_tokens, len(ids), finish, ids, proof, logprobs or None)

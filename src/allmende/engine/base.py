"""The one engine interface every inference backend implements.

An engine serves one model: streaming generation (chat or plain completion) or
embeddings, and exposes the final hidden states that proofs are built from.
Generation runs in worker threads so the event loop never blocks; a semaphore
bounds how many generations run at once.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from allmende.core.credit import UNTIL_CONTEXT
from allmende.core.endpoints import RequestKind
from allmende.core.errors import InvalidInput

Kind = RequestKind  # core.endpoints: the kinds of request the network serves
MAX_LOGIT_BIAS = 300  # token ids one request may bias (OpenAI's limit)


class EngineError(InvalidInput):
    """A request the engine cannot serve (too long, bad parameters); `param` names the
    request parameter at fault, where one is (it reaches the client as OpenAI's `param`)."""

    code = "engine_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLong(EngineError):
    code = "context_length_exceeded"


@dataclass(frozen=True)
class SamplingParams:
    # UNTIL_CONTEXT (a request without max_tokens): until the end of the answer or of the
    # model's context, whichever comes first (Engine.fitted turns it into a number)
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
    # OpenAI's penalties, subtracted from the logit of every token already drawn in this
    # completion (not the prompt, but `carried`): presence once, frequency per occurrence
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # (token id, bias) pairs, sorted by token id, added to those tokens' logits (OpenAI's logit_bias)
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_k: int = 0  # draw among the k most likely tokens only; 0 = all
    min_p: float = 0.0  # draw among tokens at least min_p times as likely as the most likely one
    # token ids of this completion that a provider which failed mid-stream had drawn (the
    # failover continuation, the prompt's last tokens: Engine.continued): the penalties count
    # them as drawn before this request's first token, as they would have without the failover
    carried: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 1 << 20:
            raise EngineError("max_tokens must be between 1 and 1048576", "max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise EngineError("temperature must be between 0 and 2", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise EngineError("top_p must be in (0, 1]", "top_p")
        if len(self.stop) > 4:
            raise EngineError("at most 4 stop sequences", "stop")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise EngineError(f"{name} must be between -2 and 2", name)
        tokens = [token for token, _ in self.logit_bias]
        if (
            len(self.logit_bias) > MAX_LOGIT_BIAS
            or tokens != sorted(set(tokens))  # one bias per token, in order: one canonical form
            or any(not (token >= 0 and -100.0 <= bias <= 100.0) for token, bias in self.logit_bias)
        ):
            raise EngineError(
                f"logit_bias maps at most {MAX_LOGIT_BIAS} distinct token ids (in order) to biases from -100 to 100",
                "logit_bias",
            )
        if self.top_k < 0:
            raise EngineError("top_k must be 0 (all tokens) or more", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            raise EngineError("min_p must be between 0 and 1", "min_p")

    @property
    def reshapes_logits(self) -> bool:
        """Whether penalties or a logit bias change the logits the draw starts from."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


SEED_MASK = (1 << 63) - 1


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sampling parameters of choice `index` of an `n > 1` request: choice 0 is the request
    itself, choice i draws from seed + i (unseeded choices each draw fresh randomness)."""
    if index == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=(params.seed + index) & SEED_MASK)


# --- what an engine is asked: typed inputs, never OpenAI bodies (allmende.api builds them) ---


@dataclass(frozen=True)
class ToolCall:
    """A call an assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: object  # the parsed JSON arguments


@dataclass(frozen=True)
class Message:
    """One chat message, checked: a role the templates know and text content."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # on an assistant message
    tool_call_id: str | None = None  # on a tool message


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: its name, description and JSON Schema of arguments."""

    name: str
    description: str
    parameters: dict[str, object]


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation to continue with the chat template. `continuation` is text a provider
    that failed had already streamed: generation carries on after it (failover)."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()  # the tools shown to the model (none with tool_choice "none")
    continuation: str = ""

    @classmethod
    def of(cls, messages: Iterable[Mapping[str, str]]) -> ChatPrompt:
        """A conversation of plain text messages: `[{"role": …, "content": …}, …]`."""
        return cls(tuple(Message(m["role"], m["content"]) for m in messages))


@dataclass(frozen=True)
class TextPrompt:
    """A plain completion prompt: text, or the model's own token ids."""

    text: str | tuple[int, ...]
    continuation: str = ""


Prompt = ChatPrompt | TextPrompt


@dataclass(frozen=True)
class EmbeddingInput:
    """The inputs of one embedding request (texts or token ids) and the size asked for."""

    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None


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
    # on the final event: prompt tokens served from the cache of earlier requests (llama.cpp)
    cached_tokens: int = 0


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
    cached_tokens: int = 0  # prompt tokens not prefilled: their cache cells were an earlier request's


class Engine(ABC):
    """One model behind one interface."""

    name: str  # what users call it ("allmende:tiny", a hub id, a path)
    model_id: bytes  # content address of the files
    kind: Literal["generate", "embed"]
    context_length: int

    @abstractmethod
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (the chat template applied to a conversation), its
        continuation included."""

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        """EngineError unless `prompt_ids` and `max_tokens` new tokens fit this model (with
        UNTIL_CONTEXT: unless the prompt leaves room for one)."""
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        if max_tokens == UNTIL_CONTEXT:
            max_tokens = 1
        if len(prompt_ids) + max_tokens > self.context_length:
            raise PromptTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the context length "
                f"of {self.name} ({self.context_length})"
            )

    def check_sampling(self, params: SamplingParams) -> None:
        """EngineError, naming the parameter, for sampling this model cannot apply (a biased
        token id outside its vocabulary); engines without a vocabulary accept any."""
        return None

    def continued(self, prompt: Prompt, params: SamplingParams) -> SamplingParams:
        """`params` with the token ids of `prompt`'s failover continuation as `carried`: the
        text a failed provider streamed is part of this completion, so the penalties count
        its tokens. What a provider serves with and a checker re-checks with (both from the
        canonical request). Engines without a tokenizer (embeddings) carry none."""
        return params

    def fitted(self, prompt_ids: list[int], params: SamplingParams) -> SamplingParams:
        """`params` with UNTIL_CONTEXT replaced by the tokens the context leaves after the
        prompt: what a completion without `max_tokens` may use (OpenAI's default)."""
        if params.max_tokens != UNTIL_CONTEXT:
            return params
        return dataclasses.replace(params, max_tokens=max(1, self.context_length - len(prompt_ids)))

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
    async def embed(self, request: EmbeddingInput) -> tuple[list[list[float]], int]:
        """Embeddings of the request's inputs and the number of tokens they used."""

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
    cached = 0
    async for event in stream:
        cached = max(cached, event.cached_tokens)
        if event.proof is not None:
            proof = event.proof
        if event.logprob is not None:
            logprobs.append(event.logprob)
        parts.append(event.text)
        if event.token_id is not None:
            ids.append(event.token_id)
        if event.finish_reason:
            finish = event.finish_reason
    return Generation("".join(parts), prompt_tokens, len(ids), finish, ids, proof, logprobs or None, cached)

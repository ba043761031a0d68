"""The request protocol every role shares, as pydantic models: what a valid OpenAI-style
request is, the sampling parameters it asks for, its canonical form (what a receipt's
`inputHash` commits to) and the response shapes the gateway renders. The gateway parses
requests with it, the provider derives what it runs from it, and a validator re-derives the
same from the evidence, so the three cannot drift.

    parse_request(kind, body)     ChatRequest | CompletionRequest | EmbeddingRequest, or
                                  InvalidParameter naming the bad parameter
    check_request(kind, body)     parse, and normalise the body in place (the gateway)
    sampling_params(body, rid)    max_tokens, temperature, top_p, seed, stop (the seed from the
                                  request id when the request has none: draw_seed)
    canonical_request(body)       the bytes `inputHash` is the keccak of
    input_hash(body)

    ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, EmbeddingList, Usage
                                  the response bodies, exactly as OpenAI shapes them
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from allmende.core.credit import DEFAULT_MAX_TOKENS
from allmende.core.errors import InvalidInput
from allmende.engine.base import SamplingParams

MAX_EMBEDDING_INPUTS = 256
ROLES = ("system", "user", "assistant", "developer", "tool")


class InvalidParameter(InvalidInput):
    """A request parameter OpenAI would refuse; `param` names it."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --- requests ---------------------------------------------------------------------------


class _Request(BaseModel):
    # strict: no "1" for 1, no true for 1; extra keys are kept (they are part of the
    # canonical request a receipt commits to)
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ChatMessage(_Request):
    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError("must be system, user, assistant, developer or tool")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, content: Any) -> Any:
        if isinstance(content, list):  # OpenAI's content parts: these models read text only
            if not content or not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise ValueError("only text parts are supported by these models")
            return "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValueError("must be a string")
        return content


class StreamOptions(_Request):
    include_usage: bool = False


class _Common(_Request):
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class _Generation(_Common):
    """The fields that decide what the provider generates."""

    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=2**20)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=2**20)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Literal[1] | None = None
    stop: tuple[str, ...] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, stop: Any) -> Any:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list | tuple) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise ValueError("must be a string or up to 4 strings")
        return tuple(stop)

    def sampling(self) -> SamplingParams:
        """What the provider runs and a validator re-checks."""
        max_tokens = self.max_tokens or self.max_completion_tokens or DEFAULT_MAX_TOKENS
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        return SamplingParams(max_tokens, temperature, top_p, self.seed, self.stop or ())


class ChatRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class CompletionRequest(_Generation):
    prompt: str

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ValueError("must be a string")
        return prompt


class EmbeddingRequest(_Common):
    input: tuple[str, ...]
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t for t in raw):
            raise ValueError("must be a non-empty string or array of non-empty strings")
        if len(raw) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"may hold at most {MAX_EMBEDDING_INPUTS} strings")
        return tuple(raw)


Request = ChatRequest | CompletionRequest | EmbeddingRequest
REQUESTS: dict[str, type[ChatRequest] | type[CompletionRequest] | type[EmbeddingRequest]] = {
    "chat": ChatRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}


def _param(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') → 'messages[0].role'"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _message(error: Any) -> str:
    kind, msg = error["type"], str(error["msg"])
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "too_short" and error["loc"] == ("messages",):
        return "must be a non-empty array"
    if kind == "missing":
        return "is required"
    if kind == "literal_error" and error["loc"] == ("n",):
        return "only n=1 is supported"
    return msg.removeprefix("Input ")


def parse_request(kind: str, body: dict[str, Any]) -> Request:
    """The typed request, or InvalidParameter naming the first bad parameter the way OpenAI
    names it (`messages[0].role`)."""
    try:
        model = REQUESTS[kind]
    except KeyError:
        raise InvalidParameter(f"unknown request kind {kind!r}") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        raise InvalidParameter(f"'{param}' {_message(first)}", param) from None


def check_request(kind: str, body: dict[str, Any]) -> Request:
    """Parse `body` (InvalidParameter if OpenAI would refuse it) and normalise in place what
    OpenAI accepts in several forms: text content parts → a string, a one-element prompt
    list → the string. The normalised body is what the provider runs and the receipt binds."""
    request = parse_request(kind, body)
    if isinstance(request, ChatRequest):
        for message, parsed in zip(body["messages"], request.messages, strict=True):
            message["content"] = parsed.content
    elif isinstance(request, CompletionRequest):
        body["prompt"] = request.prompt
    return request


def draw_seed(request_id: bytes) -> int:
    """The seed of a request that set none: a function of its request id, which the receipt
    signs, so every sampled token of every receipt is a verifiable draw."""
    return int.from_bytes(keccak(b"allmende/seed/v1" + request_id)[:8], "big") & ((1 << 63) - 1)


def sampling_params(body: dict[str, Any], request_id: bytes | None = None) -> SamplingParams:
    """The sampling parameters a generation request asks for: the provider runs exactly these
    and a validator re-checks with exactly these (InvalidInput if they are not valid). With
    `request_id`, a request without a seed gets `draw_seed(request_id)`."""
    try:
        fields = _Generation.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{_param(first['loc'][:1])} {_message(first)}") from None
    params = fields.sampling()
    if params.seed is None and request_id is not None:
        params = dataclasses.replace(params, seed=draw_seed(request_id))
    return params


def canonical_request(body: dict[str, Any]) -> bytes:
    """The request as the provider ran it, in one byte form: sorted keys, no spaces, ASCII."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def input_hash(body: dict[str, Any]) -> bytes:
    """What a receipt's `inputHash` is: keccak256 of the canonical request."""
    return keccak(canonical_request(body))


# --- responses --------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def render(self) -> dict[str, Any]:
        """The JSON body; `None` extension fields are left out, OpenAI's own `null`s kept."""
        return self.model_dump(mode="json")


def _absent(value: Any) -> bool:
    return value is None


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class Delta(_Response):
    role: Annotated[Literal["assistant"] | None, Field(exclude_if=_absent)] = None
    content: Annotated[str | None, Field(exclude_if=_absent)] = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


Extension = Annotated[dict[str, Any] | None, Field(exclude_if=_absent)]  # the receipt, for the playground


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    allmende: Extension = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Annotated[Usage | None, Field(exclude_if=_absent)] = None
    allmende: Extension = None


class Completion(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Annotated[Usage | None, Field(exclude_if=_absent)] = None
    allmende: Extension = None


CompletionChunk = Completion  # OpenAI streams legacy completions in the same shape


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    allmende: Extension = None

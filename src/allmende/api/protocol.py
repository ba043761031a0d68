"""The request protocol every role shares, as pydantic models: what a valid OpenAI-style
request is, the sampling parameters it asks for, its canonical form (what a receipt's
`inputHash` commits to) and the response shapes the gateway renders. The gateway parses
requests with it, the provider derives what it runs from it, and a validator re-derives the
same from the evidence, so the three cannot drift.

    PARAMETERS                    every parameter of the three APIs: supported, accepted (no
                                  effect on the output) or refused, and why (the README's table)
    parse_request(kind, body)     ChatRequest | CompletionRequest | EmbeddingRequest, or
                                  InvalidParameter naming the bad parameter; a parameter that
                                  is refused or unknown is never silently ignored
    check_request(kind, body)     parse, and normalise the body in place (normalise)
    sampling_params(body, rid)    max_tokens, temperature, top_p, seed, stop, the penalties,
                                  logit_bias, top_k, min_p (the seed from the request id when
                                  the request has none: draw_seed)
    grammar_of(body)              the llguidance grammar a chat request decodes under: its tool
                                  choice's (allmende.api.tools) or its `response_format`'s
    canonical_request(kind, body) the bytes `inputHash` is the keccak of: the kind and the body
    input_hash(kind, body)

    ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, EmbeddingList, Usage
                                  the response bodies, exactly as OpenAI shapes them
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from allmende.api.schemas import any_json, decodable
from allmende.api.tools import MAX_PARALLEL_CALLS, ToolSpecError, choice_of, history_calls, parallel_of, tool_grammar
from allmende.core.credit import MAX_CHOICES, UNTIL_CONTEXT
from allmende.core.eip712 import keccak256 as keccak  # eth-utils' keccak, without its type dispatch
from allmende.core.errors import InvalidInput
from allmende.engine.base import MAX_LOGIT_BIAS, SamplingParams

MAX_EMBEDDING_INPUTS = 2048  # as OpenAI allows; the engine runs them in batches
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as OpenAI caps it
MAX_COMPLETION_LOGPROBS = 5  # legacy completions' logprobs, as OpenAI caps it
ROLES = ("system", "user", "assistant", "developer", "tool")


class InvalidParameter(InvalidInput):
    """A request parameter OpenAI would refuse; `param` names it."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --- what each API does with each parameter -----------------------------------------------

SUPPORTED, ACCEPTED, REFUSED = "supported", "accepted", "refused"


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One request parameter of one API. A refused parameter is still accepted with a value
    that asks for nothing (`neutral`: `presence_penalty: 0`, `tool_choice: "none"`), so
    clients that always send their defaults keep working."""

    status: str  # SUPPORTED (honoured), ACCEPTED (taken, no effect on the output) or REFUSED (400)
    why: str  # what it does here, or why it is refused
    neutral: tuple[Any, ...] = (None,)

    def allows(self, value: Any) -> bool:
        if self.status != REFUSED:
            return True
        return any(type(value) is type(n) and value == n for n in self.neutral)


_CHECKED = "applied inside the verifiable draw, which the checker recomputes"
# prompt caching as OpenAI's clients ask for it (the OpenAI Agents SDK forwards both from its
# ModelSettings): what the caches here do is taken, what they cannot do is refused by name
_CACHE_OPTIONS: dict[str, Parameter] = {
    "prompt_cache_retention": Parameter(
        REFUSED,
        'unless "in_memory": a provider keeps recent prompts\' caches in memory while they are recent, not for 24 h',
        (None, "in_memory"),
    ),
    "prompt_cache_options": Parameter(
        REFUSED,
        'unless `{"mode": "implicit"}`: the cache is found by the prompt\'s tokens; explicit breakpoints, '
        "lifetimes and cache diagnostics are not offered",
        (None, {}, {"mode": "implicit"}),
    ),
}
_TOOLS = "see **Tools** above this table"
_SHARED: dict[str, Parameter] = {
    "model": Parameter(SUPPORTED, "a name from `GET /v1/models`"),
    "max_tokens": Parameter(
        SUPPORTED,
        "default: until the answer or the model's context ends, as OpenAI's (the payment channel reserves "
        "a whole context for such a request while it runs)",
    ),
    "temperature": Parameter(SUPPORTED, "0–2; 0 is greedy"),
    "top_p": Parameter(SUPPORTED, "nucleus sampling, above 0 and at most 1"),
    "seed": Parameter(SUPPORTED, "the draw is a public function of the seed (one bound to the request id if unset)"),
    "stop": Parameter(SUPPORTED, "up to 4 strings"),
    "stream": Parameter(SUPPORTED, "server-sent events; `null` is false"),
    "stream_options": Parameter(SUPPORTED, "`include_usage`; only with `stream: true`, as OpenAI"),
    "user": Parameter(ACCEPTED, "sent to the provider inside the encrypted request; does not change the output"),
    "presence_penalty": Parameter(
        SUPPORTED, f"−2 to 2, subtracted once from the logit of every token this completion drew before; {_CHECKED}"
    ),
    "frequency_penalty": Parameter(
        SUPPORTED, f"−2 to 2, subtracted per earlier occurrence in this completion; {_CHECKED}"
    ),
    "logit_bias": Parameter(
        SUPPORTED,
        f'{{"token id": bias}}, up to {MAX_LOGIT_BIAS} of the model\'s token ids, bias −100 to 100 added to the '
        f"logit (−100 bans a token); {_CHECKED}",
    ),
    "top_k": Parameter(
        SUPPORTED,
        f"not OpenAI's (vLLM's and llama.cpp's): draw among the k most likely tokens, 0 or −1 for all; {_CHECKED}",
    ),
    "min_p": Parameter(
        SUPPORTED,
        f"not OpenAI's (vLLM's and llama.cpp's): 0–1, draw among tokens at least min_p times as likely as the "
        f"most likely one; {_CHECKED}",
    ),
    "n": Parameter(
        SUPPORTED,
        f"1–{MAX_CHOICES} choices drawn in one batch from one prefill, choice i with seed + i; not with `stream`",
    ),
}
CHAT_PARAMETERS: dict[str, Parameter] = {
    "messages": Parameter(
        SUPPORTED,
        "roles system, developer, user, assistant, tool; text content or text parts, "
        "rendered by the model's chat template",
    ),
    **_SHARED,
    "max_completion_tokens": Parameter(SUPPORTED, "same as `max_tokens`"),
    "logprobs": Parameter(SUPPORTED, "log-probabilities of the model's distribution at each drawn token"),
    "top_logprobs": Parameter(SUPPORTED, f"0–{MAX_TOP_LOGPROBS} most likely alternatives (needs `logprobs`)"),
    "safety_identifier": Parameter(ACCEPTED, "as `user`"),
    "prompt_cache_key": Parameter(
        ACCEPTED,
        "as `user`: the llama.cpp engine reuses a recent prompt's cache by its tokens, whatever the key; "
        "`usage.prompt_tokens_details.cached_tokens` says how many",
    ),
    **_CACHE_OPTIONS,
    "tools": Parameter(
        SUPPORTED,
        "functions with a JSON Schema of their arguments, rendered by the model's chat template (natively where "
        f"it renders tools, else described in the system message); {_TOOLS}",
    ),
    "tool_choice": Parameter(
        SUPPORTED,
        '`auto` (default with tools), `none`, `required`, `{"type": "function", "function": {"name": …}}`; '
        "`required` and a named function are valid calls by grammar-constrained decoding (llguidance), which "
        "the checker applies too; with `auto` the grammar allows a call array or text",
    ),
    "parallel_tool_calls": Parameter(SUPPORTED, f"default true: up to {MAX_PARALLEL_CALLS} calls in one answer"),
    "functions": Parameter(REFUSED, "unless empty: deprecated; use `tools`", (None, [])),
    "function_call": Parameter(REFUSED, 'unless "none": deprecated; use `tool_choice`', (None, "none")),
    "response_format": Parameter(
        SUPPORTED,
        "`text`, `json_object`, `json_schema` (strict or not): grammar-constrained decoding (llguidance); "
        "the grammar comes from the request, which the receipt binds, and the checker applies it too",
    ),
    "modalities": Parameter(REFUSED, 'unless ["text"]: the served models write text only', (None, ["text"])),
    "audio": Parameter(REFUSED, "the served models write text only"),
    "prediction": Parameter(REFUSED, "predicted outputs are not implemented"),
    "reasoning_effort": Parameter(REFUSED, "the served models are not reasoning models"),
    "verbosity": Parameter(REFUSED, "the served models have no verbosity control"),
    "web_search_options": Parameter(REFUSED, "the network does not search the web"),
    "store": Parameter(REFUSED, "unless false: completions are never stored", (None, False)),
    "metadata": Parameter(REFUSED, "unless empty: kept only with `store`, which is not offered", (None, {})),
    "service_tier": Parameter(REFUSED, 'unless "auto" or "default": one tier of service', (None, "auto", "default")),
}
COMPLETION_PARAMETERS: dict[str, Parameter] = {
    "prompt": Parameter(
        SUPPORTED, "a string or an array of the model's token ids (or a one-element array of either); one prompt"
    ),
    **_SHARED,
    "logprobs": Parameter(
        SUPPORTED, f"0–{MAX_COMPLETION_LOGPROBS}: the drawn token's log-probability and alternatives"
    ),
    "echo": Parameter(
        SUPPORTED,
        "the prompt is prepended to the text (a text prompt); with `logprobs` a 400: the prompt's "
        "log-probabilities are not computed by the provider nor covered by its proof",
    ),
    "best_of": Parameter(
        SUPPORTED, "only equal to `n` (every completion drawn is returned): ranking hidden ones is not offered"
    ),
    "suffix": Parameter(REFUSED, "the served models have no fill-in-the-middle training", (None, "")),
}
EMBEDDING_PARAMETERS: dict[str, Parameter] = {
    "model": _SHARED["model"],
    "input": Parameter(
        SUPPORTED,
        f"a string, an array of token ids, or up to {MAX_EMBEDDING_INPUTS} of either; token ids are the "
        "model's own (its tokenizer's), as with OpenAI",
    ),
    "encoding_format": Parameter(SUPPORTED, "`float` or `base64` (little-endian float32)"),
    "dimensions": Parameter(
        SUPPORTED, "only the model's own size: the served models were not trained for shortened embeddings"
    ),
    "user": _SHARED["user"],
}
MESSAGE_PARAMETERS: dict[str, Parameter] = {  # the fields of each of chat's `messages`
    "role": Parameter(SUPPORTED, "system, developer, user, assistant or tool"),
    "content": Parameter(SUPPORTED, "a string or text parts (the served models read text only)"),
    "tool_call_id": Parameter(SUPPORTED, "required on a tool message, whose content is the tool's result"),
    "name": Parameter(REFUSED, "the served models' chat templates do not render participant names"),
    "tool_calls": Parameter(
        SUPPORTED, "on an assistant message (content may then be null): the calls it made, rendered to the model"
    ),
    "function_call": Parameter(REFUSED, "deprecated; use `tool_calls`"),
    "refusal": Parameter(REFUSED, "unless null: an assistant refusal is not rendered by the chat templates"),
    "audio": Parameter(REFUSED, "the served models read text only"),
    "annotations": Parameter(REFUSED, "unless empty: annotations are not rendered", (None, [])),
}
_AS_CHAT = "served as a chat completion through the same routing, payment and receipt check"
RESPONSES_PARAMETERS: dict[str, Parameter] = {  # OpenAI's Responses API (allmende.api.responses)
    "model": _SHARED["model"],
    "input": Parameter(
        SUPPORTED,
        "a string, or items: messages (roles system, developer, user, assistant; a string or "
        "`input_text`/`output_text` parts), `function_call` and `function_call_output`; " + _AS_CHAT,
    ),
    "instructions": Parameter(SUPPORTED, "a system message before the input"),
    "tools": Parameter(
        SUPPORTED, "function tools (`type`, `name`, `description`, `parameters`, `strict`), as chat's `tools`"
    ),
    "tool_choice": Parameter(SUPPORTED, '`auto`, `none`, `required` or `{"type": "function", "name": …}`, as chat\'s'),
    "parallel_tool_calls": Parameter(SUPPORTED, f"default true: up to {MAX_PARALLEL_CALLS} calls in one answer"),
    "text": Parameter(
        SUPPORTED,
        "`format`: `text`, `json_object` or `json_schema` (`name`, `schema`, `strict`), as chat's `response_format`",
    ),
    "max_output_tokens": Parameter(SUPPORTED, "as chat's `max_tokens`"),
    "temperature": _SHARED["temperature"],
    "top_p": _SHARED["top_p"],
    "stream": Parameter(SUPPORTED, "the typed server-sent events (`event:` lines, `sequence_number` on each)"),
    "stream_options": Parameter(ACCEPTED, "`include_obfuscation`: no obfuscation is sent"),
    "metadata": Parameter(ACCEPTED, "returned in the response; does not change the output"),
    "user": _SHARED["user"],
    "safety_identifier": Parameter(ACCEPTED, "as `user`"),
    "prompt_cache_key": Parameter(ACCEPTED, "as `user`"),
    **_CACHE_OPTIONS,
    "store": Parameter(REFUSED, "unless false: responses are not stored (the endpoint is stateless)", (None, False)),
    "previous_response_id": Parameter(REFUSED, "responses are not stored: send the whole conversation as `input`"),
    "conversation": Parameter(REFUSED, "conversations are not stored: send the whole conversation as `input`"),
    "background": Parameter(REFUSED, "unless false: responses are not stored", (None, False)),
    "context_management": Parameter(
        REFUSED, "unless empty: no server-side compaction (the endpoint is stateless)", (None, [])
    ),
    "include": Parameter(REFUSED, "unless empty: no extra output is offered", (None, [])),
    "truncation": Parameter(REFUSED, 'unless "disabled": input is never truncated', (None, "disabled")),
    "reasoning": Parameter(REFUSED, "the served models are not reasoning models", (None, {})),
    "top_logprobs": Parameter(REFUSED, "unless 0: log-probabilities are offered on chat completions", (None, 0)),
    "max_tool_calls": Parameter(REFUSED, "unlimited only: the answer holds the calls the model makes"),
    "prompt": Parameter(REFUSED, "stored prompt templates are not offered"),
    "service_tier": CHAT_PARAMETERS["service_tier"],
}
MESSAGES_PARAMETERS: dict[str, Parameter] = {  # Anthropic's Messages API (allmende.api.messages)
    "model": _SHARED["model"],
    "messages": Parameter(
        SUPPORTED,
        "roles user and assistant; a string or content blocks `text`, `tool_use` (assistant) and "
        "`tool_result` (user); " + _AS_CHAT,
    ),
    "system": Parameter(SUPPORTED, "a string or text blocks: a system message before the messages"),
    "max_tokens": Parameter(SUPPORTED, "required, as Anthropic requires it"),
    "stop_sequences": Parameter(SUPPORTED, "up to 4 strings; `stop_reason: stop_sequence` names the one reached"),
    "temperature": Parameter(SUPPORTED, "0–1, as Anthropic's; 0 is greedy"),
    "top_p": _SHARED["top_p"],
    "stream": Parameter(
        SUPPORTED, "Anthropic's events: message_start, content_block_start/delta/stop, message_delta, message_stop"
    ),
    "tools": Parameter(
        SUPPORTED, "`name`, `description`, `input_schema` (`cache_control` accepted), as chat's `tools`"
    ),
    "tool_choice": Parameter(
        SUPPORTED,
        "`auto`, `any`, `tool` (with `name`), `none`; `disable_parallel_tool_use` as chat's `parallel_tool_calls`",
    ),
    "metadata": Parameter(ACCEPTED, "`user_id`, as chat's `user`"),
    "service_tier": Parameter(ACCEPTED, "one tier of service"),
    "top_k": Parameter(SUPPORTED, f"draw among the k most likely tokens, as chat's `top_k`; {_CHECKED}"),
    "thinking": Parameter(
        REFUSED,
        'unless `{"type": "disabled"}`: the served models are not reasoning models',
        (None, {"type": "disabled"}),
    ),
    "container": Parameter(REFUSED, "no code execution"),
    "mcp_servers": Parameter(REFUSED, "unless empty: the gateway calls no MCP servers", (None, [])),
}
PARAMETERS: dict[str, dict[str, Parameter]] = {
    "chat": CHAT_PARAMETERS,
    "completion": COMPLETION_PARAMETERS,
    "embedding": EMBEDDING_PARAMETERS,
    "responses": RESPONSES_PARAMETERS,
    "messages": MESSAGES_PARAMETERS,
}
# the APIs whose `messages` are screened field by field (the translated APIs check their own)
MESSAGE_TABLES: dict[str, dict[str, Parameter]] = {"chat": MESSAGE_PARAMETERS}
API_NAMES = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
}


def parameter_table() -> str:
    """The README's table of every parameter: one row per (API, parameter)."""
    rows = ["| API | parameter | status | notes |", "| --- | --- | --- | --- |"]
    for kind, params in PARAMETERS.items():
        for name, p in params.items():
            rows.append(f"| `{API_NAMES[kind]}` | `{name}` | {p.status} | {p.why} |")
            if name == "messages" and kind in MESSAGE_TABLES:
                for field, q in MESSAGE_TABLES[kind].items():
                    rows.append(f"| `{API_NAMES[kind]}` | `messages[].{field}` | {q.status} | {q.why} |")
    return "\n".join(rows) + "\n"


def screen_parameters(kind: str, body: dict[str, Any]) -> None:
    """InvalidParameter for a parameter this API does not know or refuses with this value."""
    table = PARAMETERS[kind]
    for name, value in body.items():
        parameter = table.get(name)
        if parameter is None:
            raise InvalidParameter(f"Unrecognized request argument supplied: {name}", name)
        if not parameter.allows(value):
            raise InvalidParameter(f"'{name}' is not supported: {parameter.why}", name)
    fields = MESSAGE_TABLES.get(kind)
    messages = body.get("messages") if fields is not None else None
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        for field, value in message.items() if isinstance(message, dict) else ():
            where = f"messages[{i}].{field}"
            parameter = fields.get(field) if fields is not None else None
            if parameter is None:
                raise InvalidParameter(f"'{where}' is not a field of a chat message", where)
            if not parameter.allows(value):
                raise InvalidParameter(f"'{where}' is not supported: {parameter.why}", where)


# --- requests ---------------------------------------------------------------------------


class _Request(BaseModel):
    # strict: no "1" for 1, no true for 1; extra keys are kept (they are part of the
    # canonical request a receipt commits to)
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ChatMessage(_Request):
    role: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

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
        if not isinstance(content, str | None):
            raise ValueError("must be a string")
        return content

    @model_validator(mode="after")
    def _tool_turns(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("needs a string content (null only on an assistant message with tool_calls)")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("needs a tool_call_id: it is a tool message")
        return self


class StreamOptions(_Request):
    include_usage: bool = False


class _Common(_Request):
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _null_stream(cls, stream: Any) -> Any:
        return False if stream is None else stream  # null as false, as OpenAI takes it

    @model_validator(mode="after")
    def _options_need_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return self


class _Generation(_Common):
    """The fields that decide what the provider generates."""

    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=2**20)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=2**20)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None  # 0 would leave no token to draw
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    stop: tuple[str, ...] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: tuple[tuple[int, float], ...] | None = None  # {"token id": bias} as sorted pairs
    top_k: Annotated[int, Field(ge=-1)] | None = None  # 0 and -1: all tokens (vLLM takes -1, llama.cpp 0)
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, bias: Any) -> Any:
        if bias is None:
            return None
        if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"must be an object of at most {MAX_LOGIT_BIAS} token ids and their biases")
        pairs = []
        for key, value in bias.items():
            token = key if isinstance(key, int) and not isinstance(key, bool) else None
            if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10:
                token = int(key)
            if token is None or not 0 <= token < 2**32:
                raise ValueError(f"keys must be token ids (non-negative integers as strings), not {key!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
                raise ValueError(f"the bias of token {key} must be a number from -100 to 100")
            pairs.append((token, float(value)))
        if len({token for token, _ in pairs}) < len(pairs):
            raise ValueError("names a token id twice")
        return tuple(sorted(pairs))

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, stop: Any) -> Any:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list | tuple) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise ValueError("must be a string or up to 4 strings")
        return tuple(stop)

    @model_validator(mode="after")
    def _one_streamed_choice(self) -> _Generation:
        if self.stream and (self.n or 1) > 1:
            raise ValueError("'n' above 1 is not offered with stream (failover continues one text)")
        return self

    def sampling(
        self, grammar: str | None = None, logprobs: int | None = None, default_seed: int | None = None
    ) -> SamplingParams:
        """What the provider runs and a validator re-checks (with the grammar and logprobs the
        caller derived, and `default_seed` where the request sets none). Its `max_tokens` is
        the one rule every role reads (api.canonical carries it to the credit rule and the
        receipt check): `max_tokens`, else `max_completion_tokens`, else UNTIL_CONTEXT."""
        max_tokens = self.max_tokens or self.max_completion_tokens or UNTIL_CONTEXT
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        return SamplingParams(
            max_tokens,
            temperature,
            top_p,
            default_seed if self.seed is None else self.seed,
            self.stop or (),
            logprobs=logprobs,
            grammar=grammar,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=tuple((t, b) for t, b in self.logit_bias or () if b),  # a bias of 0 asks for nothing
            top_k=max(self.top_k or 0, 0),
            min_p=self.min_p or 0.0,
        )


class ChatRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        return self

    def logprobs_wanted(self) -> int | None:
        """Alternatives per token to report (0: the drawn token's only), None for no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = tuple[Annotated[int, Field(ge=0, lt=2**32)], ...]


def _token_ids(raw: Any) -> bool:
    return (
        isinstance(raw, list)
        and bool(raw)
        and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in raw)
    )


def check_tools(body: dict[str, Any]) -> None:
    """InvalidParameter naming the tool parameter or history message that cannot be served."""
    try:
        choice_of(body)
        parallel_of(body)
        for i, message in enumerate(body.get("messages") or []):
            if isinstance(message, dict):
                history_calls(message, i)
    except ToolSpecError as exc:
        raise InvalidParameter(str(exc), exc.param) from None


def grammar_of(body: dict[str, Any]) -> str | None:
    """The llguidance grammar a chat request asks for (None for free text): its tool choice's
    (allmende.api.tools) or its `response_format`'s. A pure function of the request, so provider
    and validator derive the same one. InvalidParameter if it cannot be served."""
    try:
        tools = tool_grammar(body)
    except ToolSpecError as exc:
        raise InvalidParameter(str(exc), exc.param) from None
    formatted = _format_grammar(body)
    if tools is not None and formatted is not None:
        raise InvalidParameter(
            "'response_format' other than text is not offered together with tool calls (unless tool_choice is none)",
            "response_format",
        )
    return tools if tools is not None else formatted


def _format_grammar(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    format_type = fmt.get("type") if isinstance(fmt, dict) else None
    if format_type == "text":
        return None
    if format_type == "json_object":
        schema: Any = any_json()
    elif format_type == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidParameter("'response_format' json_schema needs a 'schema' object", "response_format")
        schema = decodable(schema)  # closed unless it says otherwise, numbers bounded: it ends
    else:
        raise InvalidParameter("'response_format' type must be text, json_object or json_schema", "response_format")
    from llguidance import LLMatcher

    try:  # compact JSON: no whitespace runs a small model could wander into
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    except (ValueError, TypeError) as exc:
        raise InvalidParameter(f"'response_format' schema is not valid: {exc}", "response_format") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidParameter(f"'response_format' schema is not supported: {error}", "response_format")
    return grammar


class CompletionRequest(_Generation):
    prompt: str | TokenIds
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None

    @model_validator(mode="after")
    def _echo_without_logprobs(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("'echo' with 'logprobs' would need the prompt's log-probabilities, which are not served")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ValueError("'best_of' must equal n: every completion drawn is returned")
        if self.echo and not isinstance(self.prompt, str):
            raise ValueError("'echo' needs a text prompt, not token ids")
        return self

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and len(prompt) == 1 and not _token_ids(prompt):
            prompt = prompt[0]
        if _token_ids(prompt):
            return tuple(prompt)
        if not isinstance(prompt, str):
            raise ValueError("must be a string or an array of token ids (one prompt per request)")
        return prompt


class EmbeddingRequest(_Common):
    input: tuple[str | TokenIds, ...]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, raw: Any) -> Any:
        if isinstance(raw, str) or _token_ids(raw):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all((isinstance(t, str) and t) or _token_ids(t) for t in raw):
            raise ValueError(
                "must be a non-empty string, an array of token ids, "
                "or an array of non-empty strings or of token-id arrays"
            )
        if len(raw) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"may hold at most {MAX_EMBEDDING_INPUTS} inputs")
        return tuple(tuple(t) if isinstance(t, list) else t for t in raw)


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
    error_type, msg = error["type"], str(error["msg"])
    if error_type == "value_error":
        return msg.removeprefix("Value error, ")
    if error_type == "too_short" and error["loc"] == ("messages",):
        return "must be a non-empty array"
    if error_type == "missing":
        return "is required"
    if error_type == "extra_forbidden":
        return "is not a known field"
    return msg.removeprefix("Input ")


def invalid_parameter(exc: ValidationError) -> InvalidParameter:
    """A request model's first validation error, naming its parameter as OpenAI names it."""
    first = exc.errors()[0]
    if not first["loc"]:  # a rule across parameters: its message names them
        message = _message(first)
        return InvalidParameter(message, message.split("'")[1] if "'" in message else None)
    param = _param(first["loc"])
    return InvalidParameter(f"'{param}' {_message(first)}", param)


def parse_request(kind: str, body: dict[str, Any]) -> Request:
    """The typed request, or InvalidParameter naming the first bad parameter the way OpenAI
    names it (`messages[0].role`)."""
    try:
        model = REQUESTS[kind]
    except KeyError:
        raise InvalidParameter(f"unknown request kind {kind!r}") from None
    screen_parameters(kind, body)
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise invalid_parameter(exc) from None
    if isinstance(request, ChatRequest):
        check_tools(body)
    return request


def check_request(kind: str, body: dict[str, Any]) -> Request:
    """Parse `body` (InvalidParameter if OpenAI would refuse it, a grammar that cannot be
    served included) and normalise it in place (`normalise`). The gateway's parse builds the
    canonical request at once (api.canonical.checked)."""
    request = parse_request(kind, body)
    if isinstance(request, ChatRequest):
        grammar_of(body)  # a response_format or tool schema that cannot be served is refused here, by name
    normalise(request, body)
    return request


def normalise(request: Request, body: dict[str, Any]) -> None:
    """Rewrite in place what OpenAI accepts in several forms, as `request` parsed it: text
    content parts → a string, a one-element prompt list → the string. The normalised body is
    what the provider runs and the receipt binds."""
    if isinstance(request, ChatRequest):
        for message, parsed in zip(body["messages"], request.messages, strict=True):
            message["content"] = parsed.content
    elif isinstance(request, CompletionRequest):
        body["prompt"] = request.prompt if isinstance(request.prompt, str) else list(request.prompt)


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
    grammar = grammar_of(body)
    if grammar is not None:
        params = dataclasses.replace(params, grammar=grammar)
    if params.seed is None and request_id is not None:
        params = dataclasses.replace(params, seed=draw_seed(request_id))
    return params


def canonical_request(kind: str, body: dict[str, Any]) -> bytes:
    """The request as the provider ran it, in one byte form (sorted keys, no spaces, ASCII):
    its kind and its body. The kind is bound with the body: a body is served and re-checked
    as the kind it was sent as, never as another that would read it differently."""
    return json.dumps({"kind": kind, "request": body}, sort_keys=True, separators=(",", ":")).encode()


def input_hash(kind: str, body: dict[str, Any]) -> bytes:
    """What a receipt's `inputHash` (and the payer's request signature) commits to: keccak256
    of the canonical request."""
    return keccak(canonical_request(kind, body))


# --- responses --------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def render(self) -> dict[str, Any]:
        """The JSON body; `None` extension fields are left out, OpenAI's own `null`s kept."""
        return self.model_dump(mode="json")


def _absent(value: Any) -> bool:
    return value is None


class PromptTokensDetails(_Response):
    cached_tokens: int = 0  # prompt tokens served from an earlier request's cache (llama.cpp engine)


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Annotated[PromptTokensDetails | None, Field(exclude_if=_absent)] = None


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class FunctionCall(_Response):
    name: str
    arguments: str  # JSON text, exactly as the model wrote it


class ToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: Annotated[list[ToolCall] | None, Field(exclude_if=_absent)] = None


class FunctionCallDelta(_Response):
    name: Annotated[str | None, Field(exclude_if=_absent)] = None
    arguments: str = ""


class ToolCallDelta(_Response):
    """A streamed piece of a tool call: the first with id, type and name (and arguments ""),
    the rest with fragments of the arguments, as OpenAI streams them."""

    index: int
    id: Annotated[str | None, Field(exclude_if=_absent)] = None
    type: Annotated[Literal["function"] | None, Field(exclude_if=_absent)] = None
    function: FunctionCallDelta


class TopLogprob(_Response):
    token: str
    bytes: list[int] | None
    logprob: float


class TokenLogprob(TopLogprob):
    """One output token's log-probability and its most likely alternatives (chat's shape;
    the provider sends these with its token events)."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(_Response):
    """Legacy completions' shape: parallel lists, alternatives as {token: logprob}."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]

    @classmethod
    def of(cls, entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
        """From chat-shaped entries; `offset` is where the first token's text starts."""
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.token)
        return cls(
            tokens=[e.token for e in entries],
            token_logprobs=[e.logprob for e in entries],
            top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            text_offset=offsets,
        )


class ChatChoice(_Response):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class Delta(_Response):
    role: Annotated[Literal["assistant"] | None, Field(exclude_if=_absent)] = None
    content: Annotated[str | None, Field(exclude_if=_absent)] = None
    tool_calls: Annotated[list[ToolCallDelta] | None, Field(exclude_if=_absent)] = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class CompletionChoice(_Response):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
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

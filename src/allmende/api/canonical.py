"""The canonical request: what a provider serves and a juror re-checks, built from the body
by one function, so that the two cannot derive different things from the same request.

`canonical(kind, body, request_id)` parses the body strictly with the same parameter table
the gateway screens with (a parameter this network does not serve is refused, never
ignored), plus the one field the network itself adds: `allmende_continue`, the text a
provider that failed mid-stream had already sent, which the next provider continues after.
Everything that decides the output is derived here, once, from the typed request:

    prompt      the engine's typed input: a conversation (messages, the tools shown to the
                model, the continuation), a text or token-id prompt, or embedding inputs
    sampling    max_tokens, temperature, top_p, top_k, min_p, the presence and frequency
                penalties, logit_bias, the seed (bound to the request id when the
                request sets none), stop strings, the grammar, logprobs
    n           how many completions

The receipt's `inputHash` commits to the body this object is built from (api.protocol
.input_hash), so a juror that rebuilds it from the evidence gets the same prompt token ids
and the same sampling the provider used. A field that is not read here cannot change the
output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from allmende.api.protocol import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    InvalidParameter,
    Request,
    draw_seed,
    grammar_of,
    parse_request,
)
from allmende.api.tools import ToolSpecError, choice_of, history_calls, tools_of
from allmende.core.endpoints import endpoint
from allmende.engine.base import (
    ChatPrompt,
    EmbeddingInput,
    Kind,
    Message,
    Prompt,
    SamplingParams,
    TextPrompt,
    ToolCall,
)

CONTINUE = "allmende_continue"  # failover: the text already streamed, which the next provider continues


@dataclass(frozen=True)
class CanonicalRequest:
    """One request as it is served and re-checked (see the module doc)."""

    kind: Kind
    request: Request  # the typed OpenAI request
    prompt: Prompt | EmbeddingInput
    sampling: SamplingParams | None  # None for embeddings
    n: int = 1

    @property
    def generation(self) -> tuple[Prompt, SamplingParams]:
        """(prompt, sampling) of a generation request; InvalidParameter for an embedding."""
        if self.sampling is None or isinstance(self.prompt, EmbeddingInput):
            raise InvalidParameter(f"a {self.kind} request generates no text")
        return self.prompt, self.sampling


def canonical(kind: Kind, body: dict[str, Any], request_id: bytes | None = None) -> CanonicalRequest:
    """The canonical request of `body` (InvalidParameter, naming the parameter, if there is
    none). With `request_id`, a request without a seed draws from `draw_seed(request_id)`."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    fields = dict(body)
    continuation = fields.pop(CONTINUE, "")
    if not isinstance(continuation, str) or (continuation and not endpoint(kind).generates):
        raise InvalidParameter(f"'{CONTINUE}' must be a string, on a generation request", CONTINUE)
    request = parse_request(kind, fields)
    if isinstance(request, EmbeddingRequest):
        return CanonicalRequest(kind, request, EmbeddingInput(request.input, request.dimensions), None)
    sampling = request.sampling()
    if isinstance(request, ChatRequest):
        prompt: Prompt = _chat_prompt(request, fields, continuation)
        sampling = dataclasses.replace(sampling, grammar=grammar_of(fields))
    else:
        assert isinstance(request, CompletionRequest)
        prompt = TextPrompt(request.prompt, continuation)
    if sampling.seed is None and request_id is not None:
        sampling = dataclasses.replace(sampling, seed=draw_seed(request_id))
    sampling = dataclasses.replace(sampling, logprobs=request.logprobs_wanted())
    return CanonicalRequest(kind, request, prompt, sampling, request.n or 1)


def _chat_prompt(request: ChatRequest, body: dict[str, Any], continuation: str) -> ChatPrompt:
    """The conversation: each message checked and typed, with the tools the model is shown
    (none when `tool_choice` is "none")."""
    try:
        tools = tools_of(body)
        shown = tools if choice_of(body, tools) != "none" else []
        messages = []
        for i, (raw, parsed) in enumerate(zip(body["messages"], request.messages, strict=True)):
            calls = tuple(ToolCall(c, n, a) for c, n, a in history_calls(raw, i))
            tool_call_id = parsed.tool_call_id if parsed.role == "tool" else None
            messages.append(Message(parsed.role, parsed.content or "", calls, tool_call_id))
    except ToolSpecError as exc:
        raise InvalidParameter(str(exc), exc.param) from None
    return ChatPrompt(tuple(messages), tuple(shown), continuation)


def prompt_of(kind: Kind, body: dict[str, Any]) -> Prompt:
    """The engine input of a generation request's body (InvalidParameter if it has none)."""
    return canonical(kind, body).generation[0]

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

The gateway builds the same object from the body a client sent (`checked`: the one parse it
makes, the body normalised as it is forwarded) and carries it through routing, payment and
the receipt check: the credit rule, the receipt check and a stream's failover read
`max_tokens`, `n`, the grammar and the stop strings from it, so they cannot derive them
differently from the provider. Only the seed differs until a request id draws it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from allmende.api.protocol import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    InvalidParameter,
    Request,
    draw_seed,
    grammar_of,
    input_hash,
    normalise,
    parse_request,
)
from allmende.api.tools import ToolSpecError, choice_of, history_calls, tools_of
from allmende.core.credit import UNTIL_CONTEXT, max_embedding_cost, max_generation_cost
from allmende.core.endpoints import endpoint
from allmende.core.prompts import max_prompt_tokens
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
    body: dict[str, Any]  # as sent to the provider: what the receipt's inputHash commits to
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

    @property
    def model(self) -> str | None:
        """The model the client asked for (a name or an id)."""
        return self.request.model

    @property
    def generates(self) -> bool:
        """Whether it samples tokens (a completion to bill, max_tokens, n, stop), as its
        endpoint does (core.endpoints): an embedding does not."""
        return self.sampling is not None

    @property
    def max_tokens(self) -> int:
        """Tokens per choice at most (`max_tokens`, else `max_completion_tokens`, else
        UNTIL_CONTEXT: the one rule, protocol's `sampling`); 0 for an embedding."""
        return 0 if self.sampling is None else self.sampling.max_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        """The stop strings the completion ends before."""
        return () if self.sampling is None else self.sampling.stop

    @property
    def structured(self) -> bool:
        """Whether it decodes under a grammar (tool calls or a `response_format`)."""
        return self.sampling is not None and self.sampling.grammar is not None

    @cached_property
    def input_hash(self) -> bytes:
        """What the payer signs and the receipt's inputHash must be (protocol.input_hash)."""
        return input_hash(self.kind, self.body)

    @cached_property
    def max_prompt_tokens(self) -> int:
        """The most prompt tokens an honest receipt can state for it (core.prompts)."""
        return max_prompt_tokens(self.kind, self.body)

    def max_cost(self, context_length: int, price_in: int, price_out: int) -> int:
        """The most it can be charged at an offer (core.credit): what gateway and provider
        reserve on the channel, and what a budget or an x402 payment must cover."""
        if isinstance(self.prompt, EmbeddingInput):
            return max_embedding_cost(len(self.prompt.inputs), context_length, price_in, price_out)
        return max_generation_cost(self.max_tokens, self.n, context_length, price_in, price_out)

    def continued(self, text: str, tokens: int) -> CanonicalRequest:
        """What a streaming attempt sends after providers that failed mid-stream sent `text`
        in `tokens` tokens (none yet: the first attempt's): a stream, with what is left of
        `max_tokens` (a request that names none runs until the answer or the context ends on
        every try) and `text` as the continuation. Called on the request as the client sent
        it; the result is what `canonical` builds from its body."""
        prompt, sampling = self.generation
        body = {**self.body, "stream": True}
        update: dict[str, Any] = {"stream": True}
        max_tokens = sampling.max_tokens
        if max_tokens != UNTIL_CONTEXT:
            max_tokens = max(1, max_tokens - tokens)
            body["max_tokens"] = update["max_tokens"] = max_tokens
            body.pop("max_completion_tokens", None)
            update["max_completion_tokens"] = None
        if text:
            body[CONTINUE] = text
        elif body == self.body:
            return self  # the first try of a stream as sent
        return dataclasses.replace(
            self,
            body=body,
            request=self.request.model_copy(update=update),
            prompt=dataclasses.replace(prompt, continuation=text),
            sampling=dataclasses.replace(sampling, max_tokens=max_tokens),
        )


def canonical(kind: Kind, body: dict[str, Any], request_id: bytes | None = None) -> CanonicalRequest:
    """The canonical request of `body` (InvalidParameter, naming the parameter, if there is
    none). With `request_id`, a request without a seed draws from `draw_seed(request_id)`."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    fields = dict(body)
    continuation = fields.pop(CONTINUE, "")
    if not isinstance(continuation, str) or (continuation and not endpoint(kind).generates):
        raise InvalidParameter(f"'{CONTINUE}' must be a string, on a generation request", CONTINUE)
    return _built(kind, body, fields, parse_request(kind, fields), continuation, request_id)


def checked(kind: Kind, body: dict[str, Any]) -> CanonicalRequest:
    """The gateway's one parse of a client's body (InvalidParameter, naming the parameter,
    where OpenAI would refuse it), normalised in place as it is forwarded (protocol.normalise),
    and its canonical request: what the provider builds from the same body, but for the seed
    (drawn from the request id, which each attempt makes)."""
    request = parse_request(kind, body)
    normalise(request, body)
    return _built(kind, body, body, request, "", None)


def _built(
    kind: Kind,
    body: dict[str, Any],
    fields: dict[str, Any],
    request: Request,
    continuation: str,
    request_id: bytes | None,
) -> CanonicalRequest:
    """The canonical request of a parsed body (`fields`: the body without the continuation)."""
    if isinstance(request, EmbeddingRequest):
        return CanonicalRequest(kind, body, request, EmbeddingInput(request.input, request.dimensions), None)
    grammar = None
    if isinstance(request, ChatRequest):
        prompt: Prompt = _chat_prompt(request, fields, continuation)
        grammar = grammar_of(fields)
    else:
        assert isinstance(request, CompletionRequest)
        prompt = TextPrompt(request.prompt, continuation)
    seed = draw_seed(request_id) if request.seed is None and request_id is not None else None
    sampling = request.sampling(grammar, request.logprobs_wanted(), seed)
    return CanonicalRequest(kind, body, request, prompt, sampling, request.n or 1)


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

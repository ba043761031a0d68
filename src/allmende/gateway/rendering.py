"""The OpenAI response shapes the gateway sends, one set per endpoint: whole responses from a
provider's answer, stream chunks, and the evidence a validator's audit asks for. Every shape
is a pydantic model of `api.protocol`, so a provider's answer that does not fit OpenAI's
shapes fails here (UpstreamError) rather than in the client's parser."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import Any

from pydantic import ValidationError

from allmende.api import protocol
from allmende.api.client import Answer
from allmende.core.errors import UpstreamError
from allmende.gateway.tool_calls import message_of


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


# --- log-probabilities -----------------------------------------------------------------------


def token_logprobs(raw: object) -> list[protocol.TokenLogprob]:
    """The provider's log-probability entries, checked against OpenAI's shape (a provider
    that sends anything else fails the request rather than the client's parser)."""
    if not isinstance(raw, list):
        raise UpstreamError("the provider's logprobs are not a list")
    try:
        return [protocol.TokenLogprob.model_validate(entry) for entry in raw]
    except ValidationError:
        raise UpstreamError("the provider's logprobs are not in OpenAI's shape") from None


def chat_logprobs(raw: list[dict[str, Any]] | None) -> protocol.ChoiceLogprobs | None:
    return None if raw is None else protocol.ChoiceLogprobs(content=token_logprobs(raw))


def completion_logprobs(raw: list[dict[str, Any]] | None, offset: int) -> protocol.CompletionLogprobs | None:
    return None if raw is None else protocol.CompletionLogprobs.of(token_logprobs(raw), offset)


def choices_of(output: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The provider's output per choice: `n` of them, or UpstreamError (the answer is not
    what was asked for)."""
    outputs = output.get("choices", [output]) if n > 1 else [output]
    if not isinstance(outputs, list) or len(outputs) != n or not all(isinstance(o, dict) for o in outputs):
        raise UpstreamError(f"the provider answered with another number of choices than n={n}")
    return outputs


# --- whole responses -------------------------------------------------------------------------


def chat_response(request: protocol.ChatRequest, body: dict[str, Any], name: str, answer: Answer) -> dict[str, Any]:
    """A chat completion: each choice's text as a message, or its tool calls (`body`'s tools)."""
    wanted = request.logprobs_wanted() is not None
    plain = None if wanted or (request.n or 1) != 1 or body.get("tools") else plain_chat_response(name, answer)
    if plain is not None:
        return plain
    choices = []
    for i, out in enumerate(choices_of(answer.output, request.n or 1)):
        message, finish = message_of(body, str(out.get("text", "")), out.get("finish_reason", "stop"))
        logprobs = chat_logprobs(out.get("logprobs", []) if wanted else None)
        choices.append(protocol.ChatChoice(index=i, message=message, logprobs=logprobs, finish_reason=finish))
    return protocol.ChatCompletion(
        id=new_id("chatcmpl"),
        created=int(time.time()),
        model=name,
        choices=choices,
        usage=protocol.Usage.model_validate(answer.usage),
    ).render()


def plain_chat_response(name: str, answer: Answer) -> dict[str, Any] | None:
    """`chat_response`'s body for the common answer (one choice, its text as the message: no
    tools, no log-probabilities), built as a dict: the same JSON the pydantic models render,
    at about a fifth of the CPU. Only where every field the provider sent has exactly the
    type those models require; None otherwise, and the models check (and refuse) it."""
    out, usage = answer.output, answer.usage
    text, finish = out.get("text", ""), out.get("finish_reason", "stop")
    if type(text) is not str or type(finish) is not str or type(usage) is not dict:
        return None
    rendered_usage = plain_usage(usage)
    if rendered_usage is None:
        return None
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": rendered_usage,
    }


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def plain_usage(usage: dict[str, Any]) -> dict[str, Any] | None:
    """`protocol.Usage`'s rendering of a provider's usage made only of ints (the three counts
    and, optionally, `prompt_tokens_details.cached_tokens`); None for anything else."""
    extra = usage.keys() - set(USAGE_FIELDS)
    if extra - {"prompt_tokens_details"} or any(type(usage.get(f)) is not int for f in USAGE_FIELDS):
        return None
    rendered: dict[str, Any] = {f: usage[f] for f in USAGE_FIELDS}
    details = usage.get("prompt_tokens_details")
    if details is not None:
        if type(details) is not dict or details.keys() - {"cached_tokens"}:
            return None
        cached = details.get("cached_tokens", 0)
        if type(cached) is not int:
            return None
        rendered["prompt_tokens_details"] = {"cached_tokens": cached}
    return rendered


def completion_response(request: protocol.CompletionRequest, name: str, answer: Answer) -> dict[str, Any]:
    """A legacy completion; with `echo` the prompt comes before each text."""
    wanted = request.logprobs_wanted() is not None
    echoed = echo_of(request)
    texts = [
        protocol.CompletionChoice(
            index=i,
            text=echoed + out.get("text", ""),
            logprobs=completion_logprobs(out.get("logprobs", []) if wanted else None, len(echoed)),
            finish_reason=out.get("finish_reason", "stop"),
        )
        for i, out in enumerate(choices_of(answer.output, request.n or 1))
    ]
    return protocol.Completion(
        id=new_id("cmpl"),
        created=int(time.time()),
        model=name,
        choices=texts,
        usage=protocol.Usage.model_validate(answer.usage),
    ).render()


def embedding_response(request: protocol.EmbeddingRequest, name: str, answer: Answer) -> dict[str, Any]:
    """The embeddings, as floats or base64 (little-endian float32)."""
    data = []
    for i, vector in enumerate(answer.output["embeddings"]):
        value: list[float] | str = vector
        if request.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append(protocol.Embedding(index=i, embedding=value))
    tokens = answer.usage["prompt_tokens"]
    usage = protocol.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return protocol.EmbeddingList(data=data, model=name, usage=usage).render()


def echo_of(request: protocol.CompletionRequest) -> str:
    """The prompt, when a legacy completion asks for it back (`echo`)."""
    return request.prompt if request.echo is True and isinstance(request.prompt, str) else ""


# --- stream chunks ---------------------------------------------------------------------------


def chat_chunk(
    ident: str,
    created: int,
    model: str,
    delta: str | None,
    finish: str | None,
    *,
    role: bool = False,
    usage: dict[str, int] | None = None,
    allmende: dict[str, Any] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    calls: list[protocol.ToolCallDelta] | None = None,
) -> dict[str, Any]:
    """One chat stream chunk: a text (or tool-call) delta, the final one (`finish`), or the
    usage-only one (`usage`, no choices)."""
    if delta is not None and finish is None and not (role or usage or calls) and allmende is None and logprobs is None:
        return text_chunk(ident, created, model, delta)
    choices = (
        []
        if usage
        else [
            protocol.ChatChunkChoice(
                delta=protocol.Delta(role="assistant" if role else None, content=delta, tool_calls=calls),
                logprobs=chat_logprobs(logprobs),
                finish_reason=finish,
            )
        ]
    )
    parsed = protocol.Usage.model_validate(usage) if usage else None
    return protocol.ChatCompletionChunk(
        id=ident, created=created, model=model, choices=choices, usage=parsed, allmende=allmende
    ).render()


def text_chunk(ident: str, created: int, model: str, delta: str) -> dict[str, Any]:
    """The chunk of a plain text delta (most of a stream's chunks: one per token), built as a
    dict: it is `ChatCompletionChunk(...).render()` for such a delta (tests/gateway/
    test_protocol.py checks that they agree), at 3 µs per chunk instead of 8 through pydantic's
    models; its text is a str by construction (api.client's stream reader), so there is
    nothing to validate."""
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": str(delta)}, "logprobs": None, "finish_reason": None}],
    }


def completion_chunk(
    ident: str,
    created: int,
    model: str,
    delta: str | None,
    finish: str | None,
    *,
    usage: dict[str, int] | None = None,
    allmende: dict[str, Any] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    """One legacy completion stream chunk; `offset`: where its text starts in the completion
    (for `logprobs.text_offset`)."""
    texts = (
        []
        if usage
        else [
            protocol.CompletionChoice(
                text=delta or "", logprobs=completion_logprobs(logprobs, offset), finish_reason=finish
            )
        ]
    )
    parsed = protocol.Usage.model_validate(usage) if usage else None
    return protocol.CompletionChunk(
        id=ident, created=created, model=model, choices=texts, usage=parsed, allmende=allmende
    ).render()


# --- evidence for audits ---------------------------------------------------------------------


def evidence_of(kind: str, answer: Answer) -> dict[str, Any]:
    """What the provider committed to, for a client that checks it (a validator's audit):
    the request exactly as sent (its canonical form with the kind is the receipt's
    inputHash), the token ids, the proof and the signed receipt; for `n > 1` every choice's."""
    return {
        "kind": kind,
        "request": answer.sent,
        "text": answer.output.get("text", ""),
        "finish_reason": answer.output.get("finish_reason"),
        "token_ids": answer.output.get("token_ids", []),
        "proof": answer.output.get("proof", "0x"),
        "receipt": answer.receipt.to_json(),
        **({"choices": evidence_choices(answer.output["choices"])} if "choices" in answer.output else {}),
    }


def evidence_choices(raw: object) -> list[dict[str, Any]]:
    """Every choice of an `n > 1` answer, so that a validator checks them all."""
    keep = ("text", "finish_reason", "token_ids", "proof")
    return [{k: c.get(k) for k in keep} for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []

"""Anthropic's Messages API shapes (`POST /v1/messages`): the message from a provider's answer
to the translated chat request, the stream events, and errors in Anthropic's shape:

    message_start                        the message, empty, with its id and model
    content_block_start                  a text block, or a tool_use block (id, name, input {})
    content_block_delta                  text_delta, or input_json_delta (the arguments' text)
    content_block_stop
    message_delta                        stop_reason, stop_sequence, usage (input and output
                                         tokens: the receipt's counts); `allmende`: the receipt
    message_stop

`stop_reason`: tool_use (the text is a call array, gateway.tool_calls), max_tokens
(`finish_reason: length`), stop_sequence (a stop sequence is in the token texts the provider
reported, api.messages asks for them), end_turn otherwise. Errors:
`{"type": "error", "error": {"type", "message"}}` with the status the OpenAI endpoints use."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from allmende.api.client import Answer
from allmende.api.messages import MessagesRequest
from allmende.gateway.errors import openai_error
from allmende.gateway.rendering import new_id
from allmende.gateway.tool_calls import StreamedCalls, message_of

# Anthropic's error type for each status the gateway answers with
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_error(exc: Exception) -> JSONResponse:
    """The gateway's error for `exc` (status, message, Retry-After) in Anthropic's shape."""
    response = openai_error(exc)
    message = json.loads(bytes(response.body))["error"]["message"]
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    return JSONResponse(anthropic_error_body(response.status_code, message), response.status_code, headers=headers)


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def usage_of(usage: dict[str, Any]) -> dict[str, Any]:
    details = usage.get("prompt_tokens_details")
    cached = int((details.get("cached_tokens", 0) if isinstance(details, dict) else 0) or 0)
    return {
        "input_tokens": int(usage["prompt_tokens"]) - cached,
        "output_tokens": int(usage["completion_tokens"]),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def reached_stop(stops: tuple[str, ...], token_texts: list[Any]) -> str | None:
    """The stop sequence that ended the answer: the first one in the text of its tokens."""
    text = "".join(str(e.get("token", "")) for e in token_texts if isinstance(e, dict))
    hits = [(text.find(s), s) for s in stops if s in text]
    return min(hits)[1] if hits else None


def stop_reason(finish: str, stops: tuple[str, ...], token_texts: list[Any]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for chat's finish reason."""
    if finish == "tool_calls":
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    reached = reached_stop(stops, token_texts) if stops else None
    return ("stop_sequence", reached) if reached is not None else ("end_turn", None)


def message_object(
    ident: str,
    model: str,
    content: list[dict[str, Any]],
    reason: str | None,
    sequence: str | None,
    usage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage,
    }


def whole_message(request: MessagesRequest, body: dict[str, Any], name: str, answer: Answer) -> dict[str, Any]:
    """The message answering a request served at once."""
    text = str(answer.output.get("text", ""))
    message, finish = message_of(body, text, answer.output.get("finish_reason", "stop"))
    if message.tool_calls:
        content = [
            {
                "type": "tool_use",
                "id": tool_use_id(c.id),
                "name": c.function.name,
                "input": json.loads(c.function.arguments),
            }
            for c in message.tool_calls
        ]
    else:
        content = [{"type": "text", "text": text}]
    reason, sequence = stop_reason(finish, request.stops(), answer.output.get("logprobs") or [])
    return message_object(new_id("msg"), name, content, reason, sequence, usage_of(answer.usage))


class MessageStream:
    """One streamed message: turns text deltas into Anthropic's events."""

    def __init__(self, request: MessagesRequest, body: dict[str, Any], ident: str, model: str) -> None:
        self.request = request
        self.ident, self.model = ident, model
        self.calls = StreamedCalls(body)
        self.blocks = 0  # content blocks started
        self.open = False  # a block is open
        self.text_block = False  # the open block is text
        self.token_texts: list[Any] = []  # the token texts the provider sent (when stop sequences were asked for)

    def opening(self) -> list[dict[str, Any]]:
        usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message = message_object(self.ident, self.model, [], None, None, usage)
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _stop_block(self) -> list[dict[str, Any]]:
        if not self.open:
            return []
        self.open = False
        return [{"type": "content_block_stop", "index": self.blocks - 1}]

    def _start_block(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._stop_block()
        self.blocks += 1
        self.open, self.text_block = True, block["type"] == "text"
        return [*out, {"type": "content_block_start", "index": self.blocks - 1, "content_block": block}]

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.token_texts += getattr(piece, "logprobs", None) or []
        content, deltas = self.calls.feed(piece)
        out: list[dict[str, Any]] = []
        if content:
            if not (self.open and self.text_block):
                out += self._start_block({"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": content}
            out.append({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta})
        for d in deltas or []:
            if d.id is not None:
                block = {"type": "tool_use", "id": tool_use_id(d.id), "name": d.function.name or "", "input": {}}
                out += self._start_block(block)
            if d.function.arguments:
                delta = {"type": "input_json_delta", "partial_json": d.function.arguments}
                out.append({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta})
        return out

    def closing(self, answer: Answer, receipt: dict[str, Any]) -> list[dict[str, Any]]:
        self.token_texts += answer.output.get("logprobs") or []  # of a stop sequence's tokens, never sent as text
        finish = self.calls.finish(answer.output.get("finish_reason", "stop"))
        reason, sequence = stop_reason(finish, self.request.stops(), self.token_texts)
        out = self._start_block({"type": "text", "text": ""}) if not self.blocks else []  # an empty answer
        out += self._stop_block()
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append({"type": "message_delta", "delta": delta, "usage": usage_of(answer.usage), "allmende": receipt})
        out.append({"type": "message_stop"})
        return out

    def failed(self, status: int, message: str) -> list[dict[str, Any]]:
        return [anthropic_error_body(status, message)]

"""The Responses API's shapes (`POST /v1/responses`): the response object from a provider's
answer to the translated chat request, and the typed stream events, as OpenAI sends them:

    response.created, response.in_progress
    per output item: response.output_item.added
        message:        response.content_part.added, response.output_text.delta…,
                        response.output_text.done, response.content_part.done
        function_call:  response.function_call_arguments.delta…, …arguments.done
    response.output_item.done
    response.completed (or response.incomplete when `max_output_tokens` cut the answer)

each with a `sequence_number`, sent with an `event:` line naming its type; no `[DONE]`. A
failure mid-stream is an `error` event followed by `response.failed`. Tool calls are read
out of the text as for chat (gateway.tool_calls), the text and its receipt are chat's."""

from __future__ import annotations

import json
import time
from typing import Any

from allmende.api.client import Answer
from allmende.api.responses import ResponsesRequest
from allmende.gateway.rendering import new_id
from allmende.gateway.tool_calls import StreamedCalls, message_of


def event_frame(event: dict[str, Any]) -> bytes:
    """One server-sent event with its `event:` line."""
    data = json.dumps(event, separators=(",", ":")).encode()
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + data + b"\n\n"


def usage_of(usage: dict[str, Any]) -> dict[str, Any]:
    """Chat's usage in the Responses shape."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return {
        "input_tokens": int(usage["prompt_tokens"]),
        "input_tokens_details": {"cached_tokens": int(cached or 0)},
        "output_tokens": int(usage["completion_tokens"]),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage["total_tokens"]),
    }


def response_object(
    request: ResponsesRequest,
    ident: str,
    created: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object; `status` completed, incomplete (cut by max_output_tokens),
    in_progress (the stream's first events) or failed."""
    return {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "text": request.format_echo(),
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [],
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(ident: str, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {"id": ident, "type": "message", "status": status, "role": "assistant", "content": content}


def call_item(ident: str, status: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def whole_response(request: ResponsesRequest, body: dict[str, Any], name: str, answer: Answer) -> dict[str, Any]:
    """The response to a request served at once."""
    text = str(answer.output.get("text", ""))
    message, finish = message_of(body, text, answer.output.get("finish_reason", "stop"))
    status = "incomplete" if finish == "length" else "completed"
    if message.tool_calls:
        output = [
            call_item(new_id("fc"), status, c.id, c.function.name, c.function.arguments) for c in message.tool_calls
        ]
    else:
        output = [message_item(new_id("msg"), status, text)]
    return response_object(request, new_id("resp"), int(time.time()), name, status, output, usage_of(answer.usage))


class ResponseStream:
    """One streamed response: turns text deltas into the typed events."""

    def __init__(self, request: ResponsesRequest, body: dict[str, Any], ident: str, created: int, model: str) -> None:
        self.request = request
        self.ident, self.created, self.model = ident, created, model
        self.sequence = 0
        self.calls = StreamedCalls(body)
        self.items: list[dict[str, Any]] = []  # the output items, in order, as they grow
        self.message: int | None = None  # the index of the message item, once text arrives
        self.by_call: dict[int, int] = {}  # a call's index in the answer → its item's index

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def snapshot(
        self, status: str, usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        output = [dict(item) for item in self.items] if status != "in_progress" else []
        return response_object(self.request, self.ident, self.created, self.model, status, output, usage, error)

    def opening(self) -> list[dict[str, Any]]:
        return [
            self.event("response.created", response=self.snapshot("in_progress")),
            self.event("response.in_progress", response=self.snapshot("in_progress")),
        ]

    def _open_message(self) -> list[dict[str, Any]]:
        self.message = len(self.items)
        item = message_item(new_id("msg"), "in_progress", None)
        self.items.append(item)
        return [
            self.event("response.output_item.added", output_index=self.message, item=dict(item, content=[])),
            self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self.message,
                content_index=0,
                part=text_part(""),
            ),
        ]

    def feed(self, piece: str) -> list[dict[str, Any]]:
        content, deltas = self.calls.feed(piece)
        out: list[dict[str, Any]] = []
        if content:
            if self.message is None:
                out += self._open_message()
            assert self.message is not None
            item = self.items[self.message]
            item["content"] = [text_part((item["content"][0]["text"] if item["content"] else "") + content)]
            out.append(
                self.event(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=self.message,
                    content_index=0,
                    delta=content,
                    logprobs=[],
                )
            )
        for delta in deltas or []:
            if delta.id is not None:  # a call starts
                self.by_call[delta.index] = len(self.items)
                item = call_item(new_id("fc"), "in_progress", delta.id, delta.function.name or "", "")
                self.items.append(item)
                out.append(self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item)))
            if delta.function.arguments:
                index = self.by_call[delta.index]
                self.items[index]["arguments"] += delta.function.arguments
                out.append(
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=self.items[index]["id"],
                        output_index=index,
                        delta=delta.function.arguments,
                    )
                )
        return out

    def closing(self, answer: Answer, receipt: dict[str, Any]) -> list[dict[str, Any]]:
        finish = self.calls.finish(answer.output.get("finish_reason", "stop"))
        status = "incomplete" if finish == "length" else "completed"
        out: list[dict[str, Any]] = []
        if not self.items:  # an empty answer is an empty message
            out += self._open_message()
        for index, item in enumerate(self.items):
            item["status"] = status
            if item["type"] == "message":
                text = item["content"][0]["text"] if item["content"] else ""
                item["content"] = [text_part(text)]
                place = {"item_id": item["id"], "output_index": index, "content_index": 0}
                out.append(self.event("response.output_text.done", **place, text=text, logprobs=[]))
                out.append(self.event("response.content_part.done", **place, part=text_part(text)))
            else:
                out.append(
                    self.event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
            out.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        response = self.snapshot(status, usage_of(answer.usage))
        response["allmende"] = receipt
        out.append(
            self.event("response.incomplete" if status == "incomplete" else "response.completed", response=response)
        )
        return out

    def failed(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """An `error` event and `response.failed`, from OpenAI's error body."""
        code, message = error.get("code"), str(error.get("message", "error"))
        return [
            self.event("error", code=code, message=message, param=error.get("param")),
            self.event("response.failed", response=self.snapshot("failed", error={"code": code, "message": message})),
        ]

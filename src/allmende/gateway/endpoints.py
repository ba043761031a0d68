"""The gateway's endpoints, one serving class each (the machinery they share is serving.py):
chat completions, legacy completions and embeddings in OpenAI's shapes (rendering.py), and
the two that are translated into a chat request and served as chat is: OpenAI's Responses
API (api.responses, gateway.responses) and Anthropic's Messages API (api.messages,
gateway.messages)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from allmende.api import messages as messages_api
from allmende.api import protocol
from allmende.api import responses as responses_api
from allmende.api.canonical import CanonicalRequest, checked
from allmende.api.client import Answer, Delta
from allmende.api.messages import MessagesRequest, parse_messages
from allmende.api.protocol import InvalidParameter
from allmende.api.responses import ResponsesRequest, parse_responses
from allmende.gateway.messages import MessageStream, anthropic_error, whole_message
from allmende.gateway.rendering import (
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    echo_of,
    embedding_response,
)
from allmende.gateway.responses import ResponseStream, event_frame, whole_response
from allmende.gateway.serving import Call, Events, Serving, StreamState
from allmende.gateway.tool_calls import StreamedCalls


class ChatServing(Serving):
    kind, endpoint, id_prefix = "chat", "chat", "chatcmpl"

    def logprobs_wanted(self, request: protocol.Request) -> int | None:
        assert isinstance(request, protocol.ChatRequest)
        return request.logprobs_wanted()

    def render(self, call: Call, name: str, answer: Answer) -> dict[str, Any]:
        assert isinstance(call.request, protocol.ChatRequest)
        return chat_response(call.request, call.body, name, answer)

    def opening(self, call: Call, state: StreamState) -> list[dict[str, Any]]:
        state.calls = StreamedCalls(call.body)
        return [chat_chunk(state.ident, state.created, state.model, "", None, role=True)]

    def delta(self, call: Call, state: StreamState, item: str | Delta) -> dict[str, Any] | None:
        assert state.calls is not None
        logprobs = state.logprobs_of(item)
        content, deltas = state.calls.feed(item)
        if content is None and not deltas and not logprobs:
            return None
        return chat_chunk(state.ident, state.created, state.model, content, None, logprobs=logprobs, calls=deltas)

    def closing(self, call: Call, state: StreamState, answer: Answer, receipt: dict[str, Any]) -> dict[str, Any]:
        assert state.calls is not None
        finish = state.calls.finish(answer.output.get("finish_reason", "stop"))
        rest = (answer.output.get("logprobs") or None) if state.logprobs else None
        return chat_chunk(state.ident, state.created, state.model, None, finish, allmende=receipt, logprobs=rest)

    def usage_chunk(self, state: StreamState, usage: dict[str, int]) -> dict[str, Any]:
        return chat_chunk(state.ident, state.created, state.model, None, None, usage=usage)


class CompletionServing(Serving):
    kind, endpoint, id_prefix = "completion", "completions", "cmpl"

    def logprobs_wanted(self, request: protocol.Request) -> int | None:
        assert isinstance(request, protocol.CompletionRequest)
        return request.logprobs_wanted()

    def render(self, call: Call, name: str, answer: Answer) -> dict[str, Any]:
        assert isinstance(call.request, protocol.CompletionRequest)
        return completion_response(call.request, name, answer)

    def opening(self, call: Call, state: StreamState) -> list[dict[str, Any]]:
        assert isinstance(call.request, protocol.CompletionRequest)
        echoed = echo_of(call.request)
        if not echoed:
            return []
        state.offset = len(echoed)
        return [completion_chunk(state.ident, state.created, state.model, echoed, None)]

    def delta(self, call: Call, state: StreamState, item: str | Delta) -> dict[str, Any] | None:
        logprobs = state.logprobs_of(item)
        return completion_chunk(
            state.ident, state.created, state.model, str(item), None, logprobs=logprobs, offset=state.offset
        )

    def closing(self, call: Call, state: StreamState, answer: Answer, receipt: dict[str, Any]) -> dict[str, Any]:
        finish = answer.output.get("finish_reason", "stop")
        rest = (answer.output.get("logprobs") or None) if state.logprobs else None
        return completion_chunk(
            state.ident, state.created, state.model, None, finish, allmende=receipt, logprobs=rest, offset=state.offset
        )

    def usage_chunk(self, state: StreamState, usage: dict[str, int]) -> dict[str, Any]:
        return completion_chunk(state.ident, state.created, state.model, None, None, usage=usage)


class EmbeddingServing(Serving):
    kind, endpoint, id_prefix = "embedding", "embeddings", "emb"

    def streams(self, request: protocol.Request) -> bool:
        return False  # embeddings have no stream

    def render(self, call: Call, name: str, answer: Answer) -> dict[str, Any]:
        assert isinstance(call.request, protocol.EmbeddingRequest)
        return embedding_response(call.request, name, answer)


class ResponsesServing(Serving):
    """`POST /v1/responses` (OpenAI's Responses API, stateless): translated into a chat
    request (api.responses), served as chat is, rendered as a response (gateway.responses)."""

    kind, endpoint, id_prefix = "chat", "responses", "resp"
    end_of_stream = b""

    def parse(self, body: dict[str, Any]) -> tuple[CanonicalRequest, ResponsesRequest]:
        asked = parse_responses(body)
        chat = responses_api.chat_body(asked)
        try:
            return checked("chat", chat), asked
        except InvalidParameter as exc:
            raise responses_api.renamed(exc) from None

    def render(self, call: Call, name: str, answer: Answer) -> dict[str, Any]:
        assert isinstance(call.asked, ResponsesRequest)
        return whole_response(call.asked, call.body, name, answer)

    def frame(self, event: dict[str, Any]) -> bytes:
        return event_frame(event)

    def opening(self, call: Call, state: StreamState) -> list[dict[str, Any]]:
        assert isinstance(call.asked, ResponsesRequest)
        state.events = ResponseStream(call.asked, call.body, state.ident, state.created, state.model)
        return state.events.opening()

    def delta(self, call: Call, state: StreamState, item: str | Delta) -> Events:
        assert isinstance(state.events, ResponseStream)
        return state.events.feed(item)

    def closing(self, call: Call, state: StreamState, answer: Answer, receipt: dict[str, Any]) -> Events:
        assert isinstance(state.events, ResponseStream)
        return state.events.closing(answer, receipt)

    def stream_error(self, state: StreamState, status: int, error: dict[str, Any]) -> list[dict[str, Any]]:
        assert isinstance(state.events, ResponseStream)
        return state.events.failed(error)


class MessagesServing(Serving):
    """`POST /v1/messages` (Anthropic's Messages API): translated into a chat request
    (api.messages), served as chat is, rendered and failed in Anthropic's shapes
    (gateway.messages); the API key may come as `x-api-key`."""

    kind, endpoint, id_prefix = "chat", "messages", "msg"
    end_of_stream = b""

    def api_key(self, request: Request) -> str | None:
        return self.admission.api_key(request, x_api_key=True)

    def parse(self, body: dict[str, Any]) -> tuple[CanonicalRequest, MessagesRequest]:
        asked = parse_messages(body)
        chat = messages_api.chat_body(asked)
        try:
            return checked("chat", chat), asked
        except InvalidParameter as exc:
            raise messages_api.renamed(exc) from None

    def error_response(self, exc: Exception) -> JSONResponse:
        return anthropic_error(exc)

    def render(self, call: Call, name: str, answer: Answer) -> dict[str, Any]:
        assert isinstance(call.asked, MessagesRequest)
        return whole_message(call.asked, call.body, name, answer)

    def frame(self, event: dict[str, Any]) -> bytes:
        return event_frame(event)

    def opening(self, call: Call, state: StreamState) -> list[dict[str, Any]]:
        assert isinstance(call.asked, MessagesRequest)
        state.events = MessageStream(call.asked, call.body, state.ident, state.model)
        return state.events.opening()

    def delta(self, call: Call, state: StreamState, item: str | Delta) -> Events:
        assert isinstance(state.events, MessageStream)
        return state.events.feed(item)

    def closing(self, call: Call, state: StreamState, answer: Answer, receipt: dict[str, Any]) -> Events:
        assert isinstance(state.events, MessageStream)
        return state.events.closing(answer, receipt)

    def stream_error(self, state: StreamState, status: int, error: dict[str, Any]) -> list[dict[str, Any]]:
        assert isinstance(state.events, MessageStream)
        return state.events.failed(status, str(error.get("message", "error")))

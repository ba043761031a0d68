"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions,
/v1/embeddings (+ /healthz, /metrics). A thin router: parsing and the OpenAI response
shapes here, the logic in service.py, errors out through `openai_error`. Before any of it,
`allmende.api.guard` refuses foreign Host names, foreign web pages and non-JSON bodies."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from allmende import __version__
from allmende.api import protocol
from allmende.api.body import read_limited
from allmende.api.client import Answer
from allmende.api.guard import GuardConfig, protect
from allmende.api.headers import EVIDENCE_HEADER, PIN_HEADER
from allmende.api.protocol import check_request
from allmende.core.codec import address_field
from allmende.core.errors import BodyTooLarge as CoreBodyTooLarge
from allmende.core.errors import InvalidInput, UpstreamError
from allmende.core.ratelimit import RateLimiter
from allmende.gateway.errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NoProvider,
    RateLimited,
    RouteNotFound,
    Unauthorized,
    error_body,
    openai_error,
)
from allmende.gateway.explorer import mount_explorer
from allmende.gateway.service import GatewayService, budget_check
from allmende.gateway.tool_calls import StreamedCalls, message_of


@dataclass(frozen=True)
class GatewayLimits:
    # accepted API keys (Bearer tokens); empty = no authentication
    api_keys: frozenset[str] = frozenset()
    # optional per-key budget in payment-token units
    budgets: dict[str, int] = field(default_factory=dict)
    max_body: int = 4 * 1024 * 1024
    body_timeout: float = 10.0
    # requests in flight before answering 429
    max_in_flight: int = 256
    # per API key (or per peer address without keys): requests per second and burst; 0 = off
    rate_limit: float = 50.0
    rate_burst: float = 100.0


async def read_body(request: Request, limits: GatewayLimits) -> dict[str, Any]:
    try:
        raw = await read_limited(request, limits.max_body, limits.body_timeout)
    except CoreBodyTooLarge as exc:
        raise BodyTooLarge(str(exc)) from None  # OpenAI's code for it: request_too_large
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def create_app(
    service: GatewayService, limits: GatewayLimits | None = None, guard: GuardConfig | None = None
) -> FastAPI:
    """The gateway's app; `guard`: who may call it (the node passes its own; None = unguarded, for tests)."""
    limits = limits or GatewayLimits()
    app = FastAPI(title="Allmende gateway", version=__version__, docs_url=None, redoc_url=None)
    protect(app, guard, openai_error)  # Host, Origin and Content-Type, before any work
    registry = service.registry
    requests_total = Counter("allmende_gateway_requests", "requests", ["endpoint", "status"], registry=registry)
    in_flight_gauge = Gauge("allmende_gateway_in_flight", "requests in flight", registry=registry)
    state = {"in_flight": 0}
    limiter = RateLimiter(limits.rate_limit, limits.rate_burst)
    explorer = mount_explorer(app, service.directory, service.payments, limits.api_keys)  # the page at /, /explorer/api

    def throttle(request: Request, key: str | None) -> None:
        who = f"key:{key}" if key else f"peer:{request.client.host if request.client else '?'}"
        wait = limiter.allow(who, time.monotonic())
        if wait:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                f"Rate limit reached for this {'API key' if key else 'client'} "
                f"({limits.rate_limit:g} requests per second, bursts of {limits.rate_burst:g}); "
                f"retry after {seconds} s.",
                retry_after=seconds,
            )

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return openai_error(exc)

    @app.exception_handler(GatewayError)  # ours: answered as an ordinary response, not a server error
    async def _ours(_: Request, exc: GatewayError) -> JSONResponse:
        return openai_error(exc)

    def api_key(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        if limits.api_keys and key not in limits.api_keys:
            raise Unauthorized("Incorrect API key provided.")
        return key

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "providers": len(service.directory.entries()), "in_flight": state["in_flight"]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(m: Any) -> dict[str, Any]:
        return {
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": m.owner or "unregistered",  # the owner's address in Models; nobody's until registered
            "allmende": {
                "model_id": "0x" + m.model_id.hex(),
                "kind": m.kind,
                "providers": m.providers,
                "price_in_per_1m": str(m.min_price_in),
                "price_out_per_1m": str(m.min_price_out),
            },
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        api_key(request)
        return {"object": "list", "data": [model_card(m) for m in service.directory.listings()]}

    @app.get("/v1/models/{name:path}")
    async def model(request: Request, name: str) -> dict[str, Any]:
        """One model, as the SDK's `models.retrieve` asks for it."""
        api_key(request)
        for m in service.directory.listings():
            if m.name == name:
                return model_card(m)
        raise ModelNotFound(f"The model '{name}' does not exist or no provider serves it", "model")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes and wrong methods, in OpenAI's error shape."""
        if exc.status_code == 404:
            error: GatewayError = RouteNotFound(f"Invalid URL ({request.method} {request.url.path})")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"Method {request.method} is not allowed for {request.url.path}")
        else:
            error = GatewayError(str(exc.detail))
            error.status = exc.status_code
        return JSONResponse(error_body(error), status_code=error.status, headers=exc.headers)

    async def handle(request: Request, endpoint: str, kind: str) -> Response:
        try:
            key = api_key(request)
            throttle(request, key)
            if state["in_flight"] >= limits.max_in_flight:
                raise RateLimited(
                    f"The gateway is serving its maximum of {limits.max_in_flight} requests at once; retry after 1 s.",
                    retry_after=1,
                )
            body = await read_body(request, limits)
            check_request(kind, body)
            budget_check(service.payments, limits.budgets, key)
            pin = pinned_provider(request)
        except Exception as exc:
            response = openai_error(exc)
            requests_total.labels(endpoint, str(response.status_code)).inc()
            return response
        if body.get("stream") and kind != "embedding":
            return StreamingResponse(
                stream(endpoint, kind, body, key, pin, wants_evidence(request)), media_type="text/event-stream"
            )
        state["in_flight"] += 1
        in_flight_gauge.inc()
        started = time.monotonic()
        try:
            result = await service.complete(kind, body, key, pin)
        except Exception as exc:
            explorer.failed(started)
            response = openai_error(exc)
            requests_total.labels(endpoint, str(response.status_code)).inc()
            rejected = exc.rejected if isinstance(exc, NoProvider) else None
            if rejected is not None and wants_evidence(request):  # an audit: the refused answer is evidence
                failed = json.loads(bytes(response.body))
                failed["allmende"] = {"evidence": evidence_of(kind, rejected)}
                return JSONResponse(failed, status_code=response.status_code)
            return response
        finally:
            state["in_flight"] -= 1
            in_flight_gauge.dec()
        try:
            rendered = render(kind, body, result.offer.name, result.answer)
        except Exception as exc:  # a provider's answer that does not fit OpenAI's shapes
            explorer.failed(started)
            response = openai_error(exc)
            requests_total.labels(endpoint, str(response.status_code)).inc()
            return response
        requests_total.labels(endpoint, "200").inc()
        rendered["allmende"] = explorer.answered(rendered.get("id", new_id(kind)), result.answer, started, key)
        if wants_evidence(request):
            rendered["allmende"]["evidence"] = evidence_of(kind, result.answer)
        return JSONResponse(rendered)

    async def stream(
        endpoint: str, kind: str, body: dict[str, Any], key: str | None, pin: str | None, evidence: bool
    ) -> AsyncIterator[bytes]:
        state["in_flight"] += 1
        in_flight_gauge.inc()
        ident, created, name = new_id(kind), int(time.time()), str(body.get("model"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        status = "200"
        started = time.monotonic()
        wanted = protocol.logprobs_wanted(kind, body) is not None
        offset = 0  # characters of the completion sent so far (legacy completions' text_offset)
        calls = StreamedCalls(body) if kind == "chat" else None  # text or tool-call deltas
        try:
            if kind == "chat":
                yield sse(chunk(kind, ident, created, name, "", None, role=True))
            elif echo_of(body):
                offset = len(echo_of(body))
                yield sse(chunk(kind, ident, created, name, echo_of(body), None))
            async for item in service.stream(kind, body, key, pin):
                if isinstance(item, Answer):
                    finish = item.output.get("finish_reason", "stop")
                    finish = calls.finish(finish) if calls else finish
                    receipt = explorer.answered(ident, item, started, key)  # the receipt, for the playground
                    if evidence:
                        receipt["evidence"] = evidence_of(kind, item)
                    rest = item.output.get("logprobs") or None if wanted else None
                    yield sse(
                        chunk(kind, ident, created, name, None, finish, allmende=receipt, logprobs=rest, offset=offset)
                    )
                    if include_usage:
                        yield sse(chunk(kind, ident, created, name, None, None, usage=item.usage))
                    break
                logprobs = (getattr(item, "logprobs", None) or []) if wanted else None
                content, deltas = calls.feed(item) if calls else (str(item), None)
                if content is not None or deltas or logprobs:
                    yield sse(
                        chunk(kind, ident, created, name, content, None, logprobs=logprobs, offset=offset, calls=deltas)
                    )
                offset += len(item)
            yield b"data: [DONE]\n\n"
        except Exception as exc:
            explorer.failed(started)
            response = openai_error(exc)
            status = str(response.status_code)
            err = error_body(exc) if isinstance(exc, GatewayError) else json.loads(bytes(response.body))
            yield sse(err)
        finally:
            state["in_flight"] -= 1
            in_flight_gauge.dec()
            requests_total.labels(endpoint, status).inc()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await handle(request, "chat", "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, "completions", "completion")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await handle(request, "embeddings", "embedding")

    return app


def pinned_provider(request: Request) -> str | None:
    """The provider the client asked for, checksummed; InvalidRequest if it is no address."""
    raw = request.headers.get(PIN_HEADER)
    if raw is None:
        return None
    try:
        return address_field(raw.strip(), PIN_HEADER)
    except InvalidInput:
        raise InvalidRequest(f"the {PIN_HEADER} header must be a provider's address") from None


def wants_evidence(request: Request) -> bool:
    return request.headers.get(EVIDENCE_HEADER, "").lower() in ("1", "true", "yes")


def evidence_of(kind: str, answer: Answer) -> dict[str, Any]:
    """What the provider committed to, for a client that checks it (a validator's audit):
    the request exactly as sent (its canonical form is the receipt's inputHash), the token
    ids, the proof and the signed receipt; for `n > 1` every choice's as well."""
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


def new_id(kind: str) -> str:
    prefix = {"chat": "chatcmpl", "completion": "cmpl", "embedding": "emb"}[kind]
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def chunk(
    kind: str,
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
    offset: int = 0,
    calls: list[protocol.ToolCallDelta] | None = None,
) -> dict[str, Any]:
    """One stream chunk: a text delta, the final one (`finish`), or the usage-only one
    (`usage`, no choices). `logprobs`: the provider's entries for the tokens of this chunk
    (`offset`: where its text starts in the completion, for legacy completions); `calls`:
    tool-call deltas instead of text (chat)."""
    parsed = protocol.Usage(**usage) if usage else None
    if kind == "chat":
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
        out: protocol.ChatCompletionChunk | protocol.CompletionChunk = protocol.ChatCompletionChunk(
            id=ident, created=created, model=model, choices=choices, usage=parsed, allmende=allmende
        )
    else:
        texts = (
            []
            if usage
            else [
                protocol.CompletionChoice(
                    text=delta or "", logprobs=completion_logprobs(logprobs, offset), finish_reason=finish
                )
            ]
        )
        out = protocol.CompletionChunk(
            id=ident, created=created, model=model, choices=texts, usage=parsed, allmende=allmende
        )
    return out.render()


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


def render(kind: str, body: dict[str, Any], name: str, answer: Answer) -> dict[str, Any]:
    created = int(time.time())
    if kind == "embedding":
        fmt = body.get("encoding_format", "float")
        data = []
        for i, vector in enumerate(answer.output["embeddings"]):
            value: list[float] | str = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append(protocol.Embedding(index=i, embedding=value))
        tokens = answer.usage["prompt_tokens"]
        usage = protocol.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        return protocol.EmbeddingList(data=data, model=name, usage=usage).render()
    wanted = protocol.logprobs_wanted(kind, body) is not None
    outputs = choices_of(answer.output, protocol.choices_wanted(body))
    counts = protocol.Usage(**answer.usage)
    if kind == "chat":
        chats = []
        for i, out in enumerate(outputs):
            message, finish = message_of(body, str(out.get("text", "")), out.get("finish_reason", "stop"))
            chats.append(
                protocol.ChatChoice(
                    index=i,
                    message=message,
                    logprobs=chat_logprobs(out.get("logprobs", []) if wanted else None),
                    finish_reason=finish,
                )
            )
        return protocol.ChatCompletion(
            id=new_id(kind), created=created, model=name, choices=chats, usage=counts
        ).render()
    echoed = echo_of(body)
    texts = [
        protocol.CompletionChoice(
            index=i,
            text=echoed + out.get("text", ""),
            logprobs=completion_logprobs(out.get("logprobs", []) if wanted else None, len(echoed)),
            finish_reason=out.get("finish_reason", "stop"),
        )
        for i, out in enumerate(outputs)
    ]
    return protocol.Completion(id=new_id(kind), created=created, model=name, choices=texts, usage=counts).render()


def choices_of(output: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The provider's output per choice: `n` of them, or UpstreamError (the answer is not
    what was asked for)."""
    outputs = output.get("choices", [output]) if n > 1 else [output]
    if not isinstance(outputs, list) or len(outputs) != n or not all(isinstance(o, dict) for o in outputs):
        raise UpstreamError(f"the provider answered with another number of choices than n={n}")
    return outputs


def echo_of(body: dict[str, Any]) -> str:
    """The prompt, when a legacy completion asks for it back (`echo`)."""
    prompt = body.get("prompt")
    return prompt if body.get("echo") is True and isinstance(prompt, str) else ""

"""Serving one OpenAI endpoint, one class per endpoint (as vLLM's OpenAI server does): the
request is admitted (API key, rate limit, in-flight cap, body limits), parsed once into its
typed model, which then decides everything derived from it (`n`, logprobs, echo, the usage
chunk, the encoding), served once or streamed through `GatewayService`, and rendered in the
endpoint's own shapes. The endpoints themselves are in endpoints.py; the app (app.py) only
routes to them."""

from __future__ import annotations

import asyncio
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge

from allmende.api import protocol
from allmende.api.body import read_limited
from allmende.api.canonical import CanonicalRequest, checked
from allmende.api.client import Answer, Delta
from allmende.api.headers import EVIDENCE_HEADER, PIN_HEADER
from allmende.api.messages import MessagesRequest
from allmende.api.responses import ResponsesRequest
from allmende.core.codec import address_field
from allmende.core.errors import BodyTooLarge as CoreBodyTooLarge
from allmende.core.errors import InvalidInput
from allmende.core.ratelimit import RateLimiter
from allmende.engine.base import Kind
from allmende.gateway.budgets import Budgets, Reservation
from allmende.gateway.errors import (
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    NoProvider,
    RateLimited,
    Unauthorized,
    error_body,
    openai_error,
)
from allmende.gateway.explorer import Explorer
from allmende.gateway.messages import MessageStream
from allmende.gateway.rendering import (
    evidence_of,
    new_id,
    sse,
)
from allmende.gateway.responses import ResponseStream
from allmende.gateway.service import GatewayService
from allmende.gateway.shapes import ShapeCounts
from allmende.gateway.tool_calls import StreamedCalls
from allmende.gateway.x402_payments import Paid, X402Gate, X402Policy


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
    # requests without an API key pay for themselves with x402 (gateway/x402_payments.py); None = off
    x402: X402Policy | None = None
    # count the shapes of the requests served (GET /v1/shapes, for validators' audits): a public
    # gateway does; an agent's in-process gateway (allmende.agent) publishes them to no one
    count_shapes: bool = True


class Admission:
    """What every endpoint shares: who may call (API keys), how often (rate limits), how
    many at once, the request metrics, and the request shapes users send (`shapes`)."""

    def __init__(
        self,
        limits: GatewayLimits,
        requests_total: Counter,
        in_flight_gauge: Gauge,
        shapes: ShapeCounts | None = None,
    ) -> None:
        self.limits = limits
        self.shapes = shapes or ShapeCounts()
        self.budgets = Budgets(limits.budgets)  # reserved at admission, released when the request ends
        self.limiter = RateLimiter(limits.rate_limit, limits.rate_burst)
        self.requests_total = requests_total
        self.in_flight_gauge = in_flight_gauge
        self.in_flight = 0
        self._x402: X402Gate | None = None

    def api_key(self, request: Request, x_api_key: bool = False) -> str | None:
        """The caller's API key (a Bearer token, or with `x_api_key` also the `x-api-key`
        header Anthropic's clients send); Unauthorized where keys are required and this is
        none of them."""
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        if key is None and x_api_key:
            key = request.headers.get("x-api-key")
        if self.limits.x402 is not None and key not in self.limits.api_keys:
            return None  # not one of our keys (or none): the request pays for itself with x402
        if self.limits.api_keys and key not in self.limits.api_keys:
            raise Unauthorized("Incorrect API key provided.")
        return key

    def throttle(self, request: Request, key: str | None) -> None:
        limits = self.limits
        who = f"key:{key}" if key else f"peer:{request.client.host if request.client else '?'}"
        wait = self.limiter.allow(who, time.monotonic())
        if wait:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                f"Rate limit reached for this {'API key' if key else 'client'} "
                f"({limits.rate_limit:g} requests per second, bursts of {limits.rate_burst:g}); "
                f"retry after {seconds} s.",
                retry_after=seconds,
            )
        if self.in_flight >= limits.max_in_flight:
            raise RateLimited(
                f"The gateway is serving its maximum of {limits.max_in_flight} requests at once; retry after 1 s.",
                retry_after=1,
            )

    async def x402(self, service: GatewayService) -> X402Gate:
        """The x402 resource server and facilitator (built on first use: it reads the chain)."""
        if self._x402 is None:
            policy = self.limits.x402 or X402Policy()
            self._x402 = await asyncio.to_thread(X402Gate, service, service.directory.contracts, policy)
        return self._x402

    def begin(self) -> None:
        self.in_flight += 1
        self.in_flight_gauge.inc()

    def end(self) -> None:
        self.in_flight -= 1
        self.in_flight_gauge.dec()


async def read_body(request: Request, limits: GatewayLimits) -> dict[str, Any]:
    try:
        raw = await read_limited(request, limits.max_body, limits.body_timeout)
    except CoreBodyTooLarge as exc:
        raise BodyTooLarge(str(exc)) from None  # OpenAI's code for it: request_too_large
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than allmende.MAX_RECURSION
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


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


@dataclass
class Call:
    """One admitted request: its canonical form (the typed request, the body as forwarded and
    what is derived from them, built once), who asked, how."""

    served: CanonicalRequest
    key: str | None
    pin: str | None
    evidence: bool
    # the request in the endpoint's own shape, where it is translated into a chat request
    # (/v1/responses, /v1/messages); `served` is then the chat request served
    asked: ResponsesRequest | MessagesRequest | None = None
    reservation: Reservation | None = None  # what it holds of its API key's budget until it ends
    paid: Paid | None = None  # its x402 payment, settled before it is served

    @property
    def request(self) -> protocol.Request:
        """The typed OpenAI request served."""
        return self.served.request

    @property
    def body(self) -> dict[str, Any]:
        """The body as forwarded (what the receipt's inputHash commits to)."""
        return self.served.body

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers of the answer: the x402 settlement (PAYMENT-RESPONSE), if it paid so."""
        return self.paid.headers if self.paid is not None else None


@dataclass
class StreamState:
    """One stream: its id and what it has sent so far."""

    ident: str
    created: int
    model: str
    logprobs: bool  # the request asked for log-probabilities
    offset: int = 0  # characters of the completion sent (legacy completions' text_offset)
    calls: StreamedCalls | None = None  # chat: turns text deltas into content or tool-call deltas
    events: ResponseStream | MessageStream | None = None  # the translated endpoints' event streams

    def logprobs_of(self, item: str | Delta) -> list[dict[str, Any]] | None:
        if not self.logprobs:
            return None
        return (item.logprobs if isinstance(item, Delta) else None) or []


Events = dict[str, Any] | list[dict[str, Any]] | None  # what a stream hook sends: one chunk, several, none


def listed(events: Events) -> list[dict[str, Any]]:
    return [] if events is None else events if isinstance(events, list) else [events]


class Serving(ABC):
    """One endpoint: admission, the one-shot path and the SSE loop; the endpoint's shapes
    come from the subclass."""

    kind: ClassVar[Kind]
    endpoint: ClassVar[str]  # the metrics label
    id_prefix: ClassVar[str]

    def __init__(self, service: GatewayService, admission: Admission, explorer: Explorer) -> None:
        self.service = service
        self.admission = admission
        self.explorer = explorer

    async def __call__(self, request: Request) -> Response:
        admission = self.admission
        call: Call | None = None
        try:
            key = self.api_key(request)
            admission.throttle(request, key)
            body = await read_body(request, admission.limits)
            served, asked = self.parse(body)  # parsed once; body normalised as forwarded
            call = Call(served, key, pinned_provider(request), wants_evidence(request), asked)
            call.reservation = admission.budgets.reserve(self.service, key, served)  # its most, held
            if key is None and admission.limits.x402 is not None:
                paid = await (await admission.x402(self.service)).admit(request, served)
                if not isinstance(paid, Paid):  # 402: the requirements, or why the payment was refused
                    admission.requests_total.labels(self.endpoint, str(paid.status_code)).inc()
                    return paid
                call.paid = paid
        except Exception as exc:
            if call is not None:
                admission.budgets.release(call.reservation)
            return self._failed(exc)
        if admission.limits.count_shapes and not call.evidence:  # users' shapes, as the provider gets
            admission.shapes.count(self.kind, call.body, self.endpoint)  # them; audits ask for evidence
        if self.streams(call.request):
            return StreamingResponse(self._stream(call), media_type="text/event-stream", headers=call.headers)
        return await self._once(call)

    def api_key(self, request: Request) -> str | None:
        return self.admission.api_key(request)

    def parse(self, body: dict[str, Any]) -> tuple[CanonicalRequest, ResponsesRequest | MessagesRequest | None]:
        """The request served (its canonical form, its body normalised as forwarded) and the
        request in the endpoint's own shape (None where the body is forwarded as it came)."""
        return checked(self.kind, body), None

    def streams(self, request: protocol.Request) -> bool:
        return request.stream

    def error_response(self, exc: Exception) -> JSONResponse:
        """`exc` in the endpoint's error shape."""
        return openai_error(exc)

    def _failed(self, exc: Exception) -> JSONResponse:
        response = self.error_response(exc)
        self.admission.requests_total.labels(self.endpoint, str(response.status_code)).inc()
        return response

    # ---------------------------------------------------------- one shot

    async def _once(self, call: Call) -> Response:
        self.admission.begin()
        started = time.monotonic()
        try:
            result = await self.service.complete(call.served, call.key, call.pin)
        except Exception as exc:
            self.explorer.failed(started)
            response = await self._refunded(call, self._failed(exc))
            if isinstance(exc, NoProvider) and exc.rejected is not None and call.evidence:
                failed = json.loads(bytes(response.body))  # an audit: the refused answer is evidence
                failed["allmende"] = {"evidence": evidence_of(self.kind, exc.rejected)}
                return JSONResponse(failed, status_code=response.status_code)
            return response
        finally:
            self.admission.end()
            self.admission.budgets.release(call.reservation)  # its receipts are in the store: settled
        try:
            rendered = self.render(call, result.offer.name, result.answer)
        except Exception as exc:  # a provider's answer that does not fit OpenAI's shapes
            self.explorer.failed(started)
            return await self._refunded(call, self._failed(exc))
        self.admission.requests_total.labels(self.endpoint, "200").inc()
        rendered["allmende"] = self.explorer.answered(
            rendered.get("id", new_id(self.id_prefix)), result.answer, started, call.key
        )
        if call.evidence:
            rendered["allmende"]["evidence"] = evidence_of(self.kind, result.answer)
        if call.paid is not None:
            gate = await self.admission.x402(self.service)
            rendered["allmende"]["x402"] = await gate.refund(call.paid, result.answer.receipt)
        return JSONResponse(rendered, headers=call.headers)

    async def _refunded(self, call: Call, response: JSONResponse) -> JSONResponse:
        """A failed request's error; one paid with x402 gets its whole payment back (nothing
        was served to it) and says so in `allmende.x402`."""
        if call.paid is None:
            return response
        view = await (await self.admission.x402(self.service)).refund(call.paid, None)
        failed = json.loads(bytes(response.body))
        failed["allmende"] = {"x402": view}
        return JSONResponse(failed, status_code=response.status_code, headers=call.headers)

    @abstractmethod
    def render(self, call: Call, name: str, answer: Answer) -> dict[str, Any]:
        """The whole response to `call`, from the provider's answer."""

    # ------------------------------------------------------------ stream

    async def _stream(self, call: Call) -> AsyncIterator[bytes]:
        self.admission.begin()
        wanted = self.logprobs_wanted(call.request) is not None
        state = StreamState(new_id(self.id_prefix), int(time.time()), str(call.body.get("model")), wanted)
        options = call.request.stream_options
        status = "200"
        started = time.monotonic()
        try:
            for opening in self.opening(call, state):
                yield self.frame(opening)
            async for item in self.service.stream(call.served, call.key, call.pin):
                if isinstance(item, Answer):
                    receipt = self.explorer.answered(state.ident, item, started, call.key)  # for the playground
                    if call.evidence:
                        receipt["evidence"] = evidence_of(self.kind, item)
                    if call.paid is not None:
                        gate = await self.admission.x402(self.service)
                        receipt["x402"] = await gate.refund(call.paid, item.receipt)
                        call.paid = None  # refunded once
                    for closing in listed(self.closing(call, state, item, receipt)):
                        yield self.frame(closing)
                    if options is not None and options.include_usage:
                        yield self.frame(self.usage_chunk(state, item.usage))
                    break
                for piece in listed(self.delta(call, state, item)):
                    yield self.frame(piece)
                state.offset += len(item)
            yield self.end_of_stream
        except Exception as exc:
            self.explorer.failed(started)
            response = openai_error(exc)
            status = str(response.status_code)
            error = error_body(exc) if isinstance(exc, GatewayError) else json.loads(bytes(response.body))
            if call.paid is not None:  # no answer, so no receipt: the whole payment goes back
                error["error"]["x402"] = await (await self.admission.x402(self.service)).refund(call.paid, None)
                call.paid = None
            for event in self.stream_error(state, response.status_code, error["error"]):
                yield self.frame(event)
        finally:
            self.admission.end()
            self.admission.budgets.release(call.reservation)
            self.admission.requests_total.labels(self.endpoint, status).inc()

    end_of_stream: ClassVar[bytes] = b"data: [DONE]\n\n"

    def frame(self, event: dict[str, Any]) -> bytes:
        """One event on the wire."""
        return sse(event)

    def stream_error(self, state: StreamState, status: int, error: dict[str, Any]) -> list[dict[str, Any]]:
        """The events that end a failed stream; `error`: OpenAI's error object."""
        return [{"error": error}]

    def logprobs_wanted(self, request: protocol.Request) -> int | None:
        """Alternatives per token the request wants log-probabilities of (None: none)."""
        return None

    def opening(self, call: Call, state: StreamState) -> list[dict[str, Any]]:
        """Chunks sent before the first token."""
        return []

    def delta(self, call: Call, state: StreamState, item: str | Delta) -> Events:
        """The chunk (or events) of one text delta (None: nothing to send for it)."""
        raise NotImplementedError(f"{self.endpoint} does not stream")

    def closing(self, call: Call, state: StreamState, answer: Answer, receipt: dict[str, Any]) -> Events:
        """The final chunk (or events): the finish reason and the receipt."""
        raise NotImplementedError(f"{self.endpoint} does not stream")

    def usage_chunk(self, state: StreamState, usage: dict[str, int]) -> dict[str, Any]:
        raise NotImplementedError(f"{self.endpoint} does not stream")

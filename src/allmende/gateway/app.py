"""The OpenAI-compatible HTTP API: the routes. /v1/models, /v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/responses (OpenAI's Responses API) and /v1/messages
(Anthropic's Messages API), both served as chat (+ /healthz, /metrics, the explorer). Each completion route
is one serving class (serving.py: admission, typed request, one shot or stream), its shapes
are in rendering.py, the routing and payments in service.py, errors out through
`openai_error`. Before any of it, `allmende.api.guard` refuses foreign Host names, foreign
web pages and non-JSON bodies."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from allmende import __version__
from allmende.api.guard import GuardConfig, protect
from allmende.api.hot_routes import hot_routes
from allmende.gateway.endpoints import (
    ChatServing,
    CompletionServing,
    EmbeddingServing,
    MessagesServing,
    ResponsesServing,
)
from allmende.gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    RouteNotFound,
    error_body,
    openai_error,
)
from allmende.gateway.explorer import mount_explorer
from allmende.gateway.service import GatewayService
from allmende.gateway.serving import Admission, GatewayLimits
from allmende.gateway.x402_sessions import SessionGate, mount_sessions

__all__ = ["GatewayLimits", "create_app"]


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
    admission = Admission(limits, requests_total, in_flight_gauge)
    app.state.admission = admission  # the relay's route is admitted by the same keys and limits
    explorer = mount_explorer(app, service.directory, service.payments, limits.api_keys)  # the page at /, /explorer/api

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return openai_error(exc)

    @app.exception_handler(GatewayError)  # ours: answered as an ordinary response, not a server error
    async def _ours(_: Request, exc: GatewayError) -> JSONResponse:
        return openai_error(exc)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "providers": len(service.directory.entries()), "in_flight": admission.in_flight}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        admission.api_key(request)  # where keys are required, the metrics need one too
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(m: Any) -> dict[str, Any]:
        return {
            "id": m.name,
            "object": "model",
            "created": m.registered_at,  # its registration's block time in Models (0: not registered)
            "owned_by": m.owner or "unregistered",  # the owner's address in Models; nobody's until registered
            "allmende": {
                "model_id": "0x" + m.model_id.hex(),
                "kind": m.kind,
                "providers": m.providers,
                "price_in_per_1m": str(m.min_price_in),
                "price_out_per_1m": str(m.min_price_out),
            },
        }

    @app.get("/v1/shapes")
    async def shapes(request: Request) -> dict[str, Any]:
        """How often users send each request shape (no content, no identities): what
        validators draw their audits' shapes from (gateway.shapes)."""
        admission.api_key(request)
        return admission.shapes.published()

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        admission.api_key(request)
        listed = service.directory.listings()
        if service.staged is not None:  # models served through stage chains, unless served whole too
            whole = {m.model_id for m in listed}
            listed += [m for m in await asyncio.to_thread(service.staged.listings) if m.model_id not in whole]
        return {"object": "list", "data": [model_card(m) for m in listed]}

    @app.get("/v1/models/{name:path}")
    async def model(request: Request, name: str) -> dict[str, Any]:
        """One model, as the SDK's `models.retrieve` asks for it: found by name (any case) or
        by id exactly as a chat request's `model` is (GatewayService.resolve)."""
        admission.api_key(request)
        try:
            offer = service.resolve(name, "chat")
        except InvalidRequest:  # an embedding model, resolved by the same rules
            offer = service.resolve(name, "embedding")
        for m in service.directory.listings():
            if m.model_id == offer.model_id:
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

    chat = ChatServing(service, admission, explorer)
    completion = CompletionServing(service, admission, explorer)
    embedding = EmbeddingServing(service, admission, explorer)
    responses = ResponsesServing(service, admission, explorer)
    messages = MessagesServing(service, admission, explorer)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await completion(request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await embedding(request)

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await responses(request)

    @app.post("/v1/messages")
    async def create_message(request: Request) -> Response:
        return await messages(request)

    # the paid endpoints, answered before the router walks the explorer's routes (api.hot_routes)
    hot_routes(
        app,
        {
            ("POST", "/v1/chat/completions"): chat_completions,
            ("POST", "/v1/completions"): completions,
            ("POST", "/v1/embeddings"): embeddings,
            ("POST", "/v1/responses"): create_response,
            ("POST", "/v1/messages"): create_message,
        },
    )
    if limits.x402 is not None:

        async def sessions() -> SessionGate:
            return (await admission.x402(service)).sessions

        mount_sessions(app, sessions)
    return app

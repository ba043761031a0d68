"""The provider's HTTP API: /v1/info, /v1/infer, /healthz, /metrics.

Errors always leave as `{"error": {"code", "message"}}` with a 4xx status; a body
larger than `max_body` or slower than `body_timeout` is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_account.messages import encode_defunct
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from allmende import __version__
from allmende.api import wire
from allmende.api.body import read_limited
from allmende.api.guard import GuardConfig, protect
from allmende.api.hot_routes import hot_routes
from allmende.core import InvalidInput, SignedVoucher
from allmende.core.envelope import public_key_bytes
from allmende.core.ratelimit import RateLimiter
from allmende.provider.errors import BadRequest, Overloaded
from allmende.provider.service import ProviderService
from allmende.provider.stage_app import StageGate, StageSigner, add_stage_routes, stage_listing

if TYPE_CHECKING:
    from allmende.engine.stages import StageBackend


@dataclass(frozen=True)
class Limits:
    # largest request body accepted, bytes
    max_body: int = 2 * 1024 * 1024
    # seconds a client may take to send its body
    body_timeout: float = 10.0
    # requests served at once before answering 429
    max_in_flight: int = 64
    # per peer address: requests per second and burst; 0 = off
    rate_limit: float = 200.0
    rate_burst: float = 400.0


log = logging.getLogger("allmende.provider")
MAX_VOUCHERS = 64  # per POST /v1/vouchers


def error_response(exc: Exception) -> JSONResponse:
    """The one place errors go out (allmende.api.wire), logged under the provider's logger."""
    return wire.error_response(exc, log)


async def read_json(request: Request, limits: Limits) -> Any:
    raw = await read_limited(request, limits.max_body, limits.body_timeout)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than allmende.MAX_RECURSION
        raise BadRequest("request body is not valid JSON") from None


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body generator as soon as the response ends. When
    the client goes away while a chunk is being sent, Starlette leaves the generator suspended
    and Python would close it only when it is garbage collected; the stream's `finally` (which
    bills a cut stream and releases its reservation) must not wait for that."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if hasattr(body, "aclose"):
                await body.aclose()


def create_app(
    service: ProviderService,
    chain_id: int,
    limits: Limits | None = None,
    guard: GuardConfig | None = None,
    stage: tuple[StageBackend, StageSigner] | None = None,  # a pipeline stage served beside the models
) -> FastAPI:
    limits = limits or Limits()
    app = FastAPI(title="Allmende provider", version=__version__, docs_url=None, redoc_url=None)
    protect(app, guard, error_response)  # Host, Origin and Content-Type (allmende.api.guard), before any work
    registry = CollectorRegistry()
    requests_total = Counter(
        "allmende_provider_requests", "requests by kind and status", ["kind", "status"], registry=registry
    )
    latency = Histogram("allmende_provider_latency_seconds", "time to the full answer", ["kind"], registry=registry)
    in_flight = Gauge("allmende_provider_in_flight", "requests being served", registry=registry)
    max_concurrency = limits.max_in_flight
    limiter = RateLimiter(limits.rate_limit, limits.rate_burst)

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # chain_block: the last block whose channel closes this node has applied (provider/watch.py)
        watcher = service.gate.watcher
        chain_block = watcher.synced_block if watcher is not None else None
        return {"ok": True, "address": service.address, "in_flight": service.in_flight, "chain_block": chain_block}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        payload = {
            "address": service.address,
            "x25519_key": "0x" + public_key_bytes(service.x25519).hex(),
            "chain_id": chain_id,
            "version": __version__,
            "models": [
                {
                    "model_id": "0x" + m.engine.model_id.hex(),
                    "name": m.engine.name,
                    "kind": m.engine.kind,
                    "price_in": str(m.price_in),
                    "price_out": str(m.price_out),
                    "context_length": m.engine.context_length,
                }
                for m in service.models.values()
            ]
            + ([stage_listing(*stage)] if stage else []),
            "load": {"in_flight": service.in_flight, "max_in_flight": max_concurrency},
            "credit_limit": str(service.gate.policy.credit_limit),
            "timestamp": int(time.time()),
        }
        message = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        signature = service.account.sign_message(encode_defunct(text=message)).signature
        return {"info": payload, "signed": message, "signature": "0x" + bytes(signature).hex()}

    @app.post("/v1/vouchers")
    async def vouchers(request: Request) -> Response:
        """Vouchers delivered on their own (a payer settling up for work already answered, as it
        stops using a channel): `{"vouchers": [signed voucher, …]}` → the cumulative now held
        for each (channel, model). Each is checked as a request's voucher is."""
        try:
            peer = request.client.host if request.client else "?"
            wait = limiter.allow(peer, time.monotonic())
            if wait:
                raise Overloaded(f"rate limit for this peer reached: retry in {wait:.2f}s")
            raw = await read_json(request, limits)
            items = raw.get("vouchers") if isinstance(raw, dict) else None
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_VOUCHERS:
                raise BadRequest(f"expected {{'vouchers': [1 to {MAX_VOUCHERS} signed vouchers]}}")
            try:
                signed = [SignedVoucher.from_json(item) for item in items]
            except (InvalidInput, KeyError, TypeError, ValueError) as exc:
                raise BadRequest(f"not a signed voucher: {exc}") from None
            held = [await asyncio.to_thread(service.gate.accept, voucher) for voucher in signed]
        except Exception as exc:
            return error_response(exc)
        return JSONResponse(
            {
                "held": [
                    {"channel_id": "0x" + v.voucher.channel_id.hex(), "model_id": "0x" + v.voucher.model_id.hex(),
                     "cumulative": str(amount)}
                    for v, amount in zip(signed, held, strict=True)
                ]
            }
        )  # fmt: skip

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        kind = "unknown"
        started = time.perf_counter()
        try:
            peer = request.client.host if request.client else "?"
            wait = limiter.allow(peer, time.monotonic())
            if wait:
                raise Overloaded(f"rate limit for this peer reached: retry in {wait:.2f}s")
            if service.in_flight >= max_concurrency:
                raise Overloaded("provider at capacity: retry elsewhere")
            envelope = await read_json(request, limits)
            req = service.open(envelope)
            kind = req.kind
            if service.gate.is_cached(req.channel_id):
                service.admit(req)  # SQLite only: cheaper than a thread hop
            else:
                await asyncio.to_thread(service.admit, req)
        except Exception as exc:
            response = error_response(exc)
            requests_total.labels(kind, str(response.status_code)).inc()
            return response

        if req.stream:
            return ClosingStreamingResponse(
                _stream(req, kind, started), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        service.in_flight += 1
        in_flight.inc()
        try:
            sealed = await service.run(req)
        except Exception as exc:
            response = error_response(exc)
            requests_total.labels(kind, str(response.status_code)).inc()
            return response
        finally:
            service.release(req)
            service.in_flight -= 1
            in_flight.dec()
        requests_total.labels(kind, "200").inc()
        latency.labels(kind).observe(time.perf_counter() - started)
        return JSONResponse(sealed)

    async def _stream(req: Any, kind: str, started: float) -> AsyncIterator[bytes]:
        service.in_flight += 1
        in_flight.inc()
        status = "200"
        try:
            async for sealed in service.stream(req):
                yield b"data: " + json.dumps(sealed).encode() + b"\n\n"
        except Exception as exc:
            response = error_response(exc)
            status = str(response.status_code)
            cut = service.end_stream(req, failed=True)  # what was sent is billed; its receipt goes out first
            if cut is not None:
                yield b"data: " + json.dumps(cut).encode() + b"\n\n"
            yield b"event: error\ndata: " + bytes(response.body) + b"\n\n"
        finally:
            service.end_stream(req)  # a client gone mid-stream: bill what was sent, then release
            service.in_flight -= 1
            in_flight.dec()
            requests_total.labels(kind, status).inc()
            latency.labels(kind).observe(time.perf_counter() - started)

    hot_routes(app, {("POST", "/v1/infer"): infer})  # every paid request: no route walk (api.hot_routes)
    if stage is not None:  # sealed to this node's key, paid through its gate (provider.stage_app)
        add_stage_routes(app, *stage, paid=StageGate(service.x25519, service.gate, service.store))
    return app

"""The vault's HTTP API: /v1/info, /v1/jobs, /v1/flower, /healthz.

Errors leave as `{"error": {"code", "message"}}` with the error catalog's status
(core/errors.py). Requests are
signed by the grantee (see `allmende.vault.auth`); bodies are size- and time-limited.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf.message import DecodeError

from allmende import __version__, wire
from allmende.httpbody import read_limited
from allmende.vault.auth import HEADER, signer_of
from allmende.vault.errors import BadJob, VaultError
from allmende.vault.flower import VaultFlower
from allmende.vault.service import VaultService, parse_bytes32

log = logging.getLogger("allmende.vault")


def error_response(exc: Exception) -> JSONResponse:
    """The one place errors go out (allmende.wire: the catalog's status and code)."""
    return wire.error_response(exc, log)


def create_app(service: VaultService, max_body: int = 16 * 1024 * 1024, body_timeout: float = 30.0) -> FastAPI:
    app = FastAPI(title="Allmende vault", version=__version__, docs_url=None, redoc_url=None)
    flower = VaultFlower(service)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "datasets": len(service.tables)}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post("/v1/jobs")
    async def jobs(request: Request) -> Response:
        try:
            body = await read_limited(request, max_body, body_timeout)
            signer = signer_of(body, request.headers.get(HEADER))
            try:
                parsed = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise BadJob("the body is not JSON") from None
            if not isinstance(parsed, dict):
                raise BadJob("the body must be a JSON object")
            result = await asyncio.to_thread(service.run_job, parsed, signer)
            return JSONResponse(result)
        except Exception as exc:
            return error_response(exc)

    @app.post("/v1/flower")
    async def flower_message(request: Request) -> Response:
        try:
            body = await read_limited(request, max_body, body_timeout)
            signer = signer_of(body, request.headers.get(HEADER))
            grant = request.headers.get("x-allmende-grant", "")
            if not grant.isdigit():
                raise BadJob("x-allmende-grant must name the grant")
            dataset_id = parse_bytes32(request.headers.get("x-allmende-dataset"), "x-allmende-dataset")
            service.table(dataset_id)
            try:
                reply = await asyncio.to_thread(flower.handle, body, signer, int(grant), dataset_id)
            except VaultError:
                raise
            except (ValueError, KeyError, TypeError, AttributeError, DecodeError) as exc:
                raise BadJob(f"not a Flower message this vault can run: {exc.__class__.__name__}: {exc}") from None
            return Response(reply, media_type="application/x-protobuf")
        except Exception as exc:
            return error_response(exc)

    return app

"""The validator's HTTP API: /healthz, /v1/evidence/<keccak hash> (the evidence of the
cases it reported, for the other validators to re-check), /status (JSON: stake, audits,
open cases with votes, deadlines and bonds, rewards) and /metrics (prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from allmende.api import wire
from allmende.api.guard import GuardConfig, protect
from allmende.core.errors import AllmendeError
from allmende.validator.service import Validator


class EvidenceNotFound(AllmendeError):
    code = "not_found"
    status = 404


def create_app(validator: Validator, guard: GuardConfig | None = None) -> FastAPI:
    app = FastAPI(title="Allmende validator", docs_url=None, redoc_url=None)
    protect(app, guard)  # Host, Origin and Content-Type (allmende.api.guard), before any work

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return wire.error_response(exc)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "address": validator.address, "audits": validator.store.audit_count()}

    @app.get("/status")
    def status() -> dict[str, Any]:
        return validator.status()

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(validator.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/evidence/{digest}")
    def evidence(digest: str) -> Response:
        blob = validator.evidence.get(digest)
        if blob is None:
            return wire.error_response(EvidenceNotFound("no such evidence"))
        return Response(blob, media_type="application/json")

    return app

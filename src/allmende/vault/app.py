"""The vault's HTTP API: /v1/info, /v1/jobs, /v1/flower, /v1/rounds/check|abort, /metrics, /healthz.

Errors leave as `{"error": {"code", "message"}}` with the error catalog's status
(core/errors.py). Requests are
signed by the grantee (see `allmende.vault.auth`); bodies are size- and time-limited.
Every refused request is logged, counted (`/metrics`) and kept in the vault's database
(`allmende data refusals`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf.message import DecodeError

from allmende import __version__
from allmende.api import wire
from allmende.api.body import read_limited
from allmende.vault.auth import HEADER, signer_of
from allmende.vault.errors import BadJob, VaultError
from allmende.vault.flower import VaultFlower
from allmende.vault.model import ModelSpec
from allmende.vault.service import VaultService, parse_bytes32, parse_model

log = logging.getLogger("allmende.vault")


def error_response(exc: Exception) -> JSONResponse:
    """The one place errors go out (allmende.api.wire: the catalog's status and code)."""
    return wire.error_response(exc, log)


def _grant_header(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _dataset_of(value: object) -> bytes | None:
    try:
        return parse_bytes32(value, "dataset_id")
    except BadJob:
        return None


def create_app(service: VaultService, max_body: int = 16 * 1024 * 1024, body_timeout: float = 30.0) -> FastAPI:
    app = FastAPI(title="Allmende vault", version=__version__, docs_url=None, redoc_url=None)
    flower = VaultFlower(service)

    def refuse(path: str, exc: Exception, asked: dict[str, Any]) -> Response:
        """Every refusal is counted, logged and kept (who, which grant, why) before it goes out."""
        if isinstance(exc, VaultError):
            try:
                service.refused(path, exc, asked.get("signer"), asked.get("grant"), asked.get("dataset"))
            except Exception:  # keeping the record must never turn a refusal into a 500
                log.exception("could not record a refusal")
        return error_response(exc)

    async def signed_json(request: Request, asked: dict[str, Any]) -> tuple[dict[str, Any], str]:
        body = await read_limited(request, max_body, body_timeout)
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict):
            grant = parsed.get("grant_id")
            asked["grant"] = grant if isinstance(grant, int) and not isinstance(grant, bool) else None
            asked["dataset"] = _dataset_of(parsed.get("dataset_id"))
        asked["signer"] = signer = signer_of(body, request.headers.get(HEADER))
        if parsed is None:
            raise BadJob("the body is not JSON")
        if not isinstance(parsed, dict):
            raise BadJob("the body must be a JSON object")
        return parsed, signer

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "datasets": len(service.tables)}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text: refused requests by code, jobs logged by template (from the vault's books)."""
        lines = [
            "# HELP allmende_vault_refusals_total Requests the vault refused, by error code.",
            "# TYPE allmende_vault_refusals_total counter",
        ]
        counts = await asyncio.to_thread(service.store.refusal_counts)
        lines += [f'allmende_vault_refusals_total{{code="{code}"}} {n}' for code, n in sorted(counts.items())]
        lines += [
            "# HELP allmende_vault_jobs_total Jobs the vault ran and logged on chain, by template.",
            "# TYPE allmende_vault_jobs_total counter",
        ]
        jobs: dict[str, int] = {}
        for job in await asyncio.to_thread(service.store.jobs):
            if job.tx_hash is not None:
                jobs[job.template] = jobs.get(job.template, 0) + 1
        lines += [f'allmende_vault_jobs_total{{template="{t}"}} {n}' for t, n in sorted(jobs.items())]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.post("/v1/jobs")
    async def jobs(request: Request) -> Response:
        asked: dict[str, Any] = {}
        try:
            parsed, signer = await signed_json(request, asked)
            result = await asyncio.to_thread(service.run_job, parsed, signer)
            return JSONResponse(result)
        except Exception as exc:
            return refuse("/v1/jobs", exc, asked)

    @app.post("/v1/rounds/check")
    async def check_round(request: Request) -> Response:
        """Would this vault run the next federated round? Nothing runs, nothing is charged."""
        asked: dict[str, Any] = {}
        try:
            parsed, signer = await signed_json(request, asked)
            args = parse_round(parsed)
            result = await asyncio.to_thread(service.check_round, args[0], signer, *args[1:])
            return JSONResponse(result)
        except Exception as exc:
            return refuse("/v1/rounds/check", exc, asked)

    @app.post("/v1/rounds/abort")
    async def abort_round(request: Request) -> Response:
        """The round failed elsewhere: undo this vault's reserved charge for it."""
        asked: dict[str, Any] = {}
        try:
            parsed, signer = await signed_json(request, asked)
            grant, run = parsed.get("grant_id"), parsed.get("run_id")
            if not isinstance(grant, int) or not isinstance(run, int):
                raise BadJob("'grant_id' and 'run_id' must be integers")
            undone = await asyncio.to_thread(service.abort_round, grant, run, signer)
            return JSONResponse({"undone": undone})
        except Exception as exc:
            return refuse("/v1/rounds/abort", exc, asked)

    @app.post("/v1/flower")
    async def flower_message(request: Request) -> Response:
        asked: dict[str, Any] = {
            "grant": _grant_header(request.headers.get("x-allmende-grant")),
            "dataset": _dataset_of(request.headers.get("x-allmende-dataset")),
        }
        try:
            body = await read_limited(request, max_body, body_timeout)
            asked["signer"] = signer = signer_of(body, request.headers.get(HEADER))
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
            return refuse("/v1/flower", exc, asked)

    return app


def parse_round(body: dict[str, Any]) -> tuple[int, bytes, int, ModelSpec, list[Any], int, float, float]:
    """A round check's fields: grant, dataset, run, model (spec and weights), steps, noise, clipping norm."""
    grant, run, steps = body.get("grant_id"), body.get("run_id"), body.get("steps")
    for name, value in (("grant_id", grant), ("run_id", run), ("steps", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadJob(f"'{name}' must be a non-negative integer")
    noise, clip = body.get("noise"), body.get("clipping_norm")
    for name, value in (("noise", noise), ("clipping_norm", clip)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadJob(f"'{name}' must be a number")
    spec, params = parse_model(body.get("model"))
    dataset_id = parse_bytes32(body.get("dataset_id"), "dataset_id")
    return int(grant), dataset_id, int(run), spec, params, int(steps), float(noise), float(clip)  # type: ignore[arg-type]

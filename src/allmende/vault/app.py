"""The vault's HTTP API: /v1/info, /v1/jobs, /v1/flower, /v1/rounds/check|prepare|abort, /metrics, /healthz.

Errors leave as `{"error": {"code", "message"}}` with the error catalog's status
(core/errors.py). Every request is a signed `VaultRequest` for this vault, its operation, grant,
dataset, run and round, with a nonce and an expiry (see `allmende.vault.auth`), admitted once;
bodies are size- and time-limited, JSON bodies strict (no unknown fields, no duplicate keys, only
finite numbers). Every refused request is logged, counted (`/metrics`) and kept in the vault's
database (`allmende data refusals`); those not admitted (unsigned, not the grantee's,
replayed, expired) only up to a rate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf.message import DecodeError

from allmende import __version__
from allmende.api import wire
from allmende.api.body import read_limited
from allmende.api.guard import GuardConfig, protect
from allmende.core.eip712 import Domain
from allmende.core.ratelimit import RateLimiter
from allmende.core.vault_requests import (
    HEADER,
    JOB,
    ROUND_ABORT,
    ROUND_CHECK,
    ROUND_FIT,
    ROUND_PREPARE,
    SECURE_STAGES,
)
from allmende.vault.auth import Admitted, RequestGate
from allmende.vault.errors import BadJob, VaultError
from allmende.vault.flower import KEY_SIGNATURES, VaultFlower
from allmende.vault.jobs import only_fields
from allmende.vault.service import ROUND_ABORT_FIELDS, VaultService

log = logging.getLogger("allmende.vault")
UNSIGNED_REFUSALS_PER_S = 5.0  # refusals of requests not admitted kept per second (the rest only counted)
UNSIGNED_REFUSALS_BURST = 20.0
MAX_NESTING = 1000  # arrays and objects a JSON body may hold (a vault request holds a handful)


def error_response(exc: Exception) -> JSONResponse:
    """The one place errors go out (allmende.api.wire: the catalog's status and code)."""
    return wire.error_response(exc, log)


def _reject_constant(name: str) -> float:
    raise BadJob(f"the body holds {name}: numbers must be finite")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJob(f"the body holds {text[:20]}: numbers must be finite")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadJob(f"the body names {key[:40]!r} twice")
        out[key] = value
    return out


def strict_json(body: bytes) -> dict[str, Any]:
    """A JSON object with no duplicate keys and only finite numbers (else BadJob, 400).

    At most `MAX_NESTING` arrays and objects: py_ecc raises the interpreter's recursion limit to
    100,000 on import, so a body of 100,000 `[` would overflow the C stack in `json.loads` and
    kill the vault (no RecursionError is raised in time)."""
    if body.count(b"[") + body.count(b"{") > MAX_NESTING:
        raise BadJob(f"the body holds more than {MAX_NESTING} arrays and objects")
    try:
        parsed = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
                            parse_float=_finite)  # fmt: skip
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BadJob("the body is not JSON") from None
    if not isinstance(parsed, dict):
        raise BadJob("the body must be a JSON object")
    return parsed


def create_app(
    service: VaultService,
    max_body: int = 16 * 1024 * 1024,
    body_timeout: float = 30.0,
    guard: GuardConfig | None = None,
) -> FastAPI:
    app = FastAPI(title="Allmende vault", version=__version__, docs_url=None, redoc_url=None)
    protect(app, guard, error_response)  # Host, Origin and Content-Type (allmende.api.guard), before any work
    flower = VaultFlower(service)
    domain = Domain(service.contracts.client.chain_id, service.data.address)
    gate = RequestGate(service.address, domain, service.store, grantee_of=service.grantee_of)
    unsigned = RateLimiter(rate=UNSIGNED_REFUSALS_PER_S, burst=UNSIGNED_REFUSALS_BURST)
    dropped: dict[str, int] = {}  # unsigned refusals over the rate: counted here, not kept one by one

    def refuse(path: str, exc: Exception, asked: dict[str, Any]) -> Response:
        """Every refusal is counted, logged and kept (who, which grant, why) before it goes out;
        refusals of requests that were not admitted (unsigned, not the grantee's, replayed, expired)
        only up to a rate (beyond it they are only counted), so a flood from anyone but a grantee
        cannot grow the vault's database or log."""
        signer = asked.get("signer")
        if not asked.get("admitted") and unsigned.allow("not admitted", time.monotonic()) > 0:
            code = getattr(exc, "code", "internal_error")
            dropped[code] = dropped.get(code, 0) + 1
            return error_response(exc)
        try:
            service.refused(path, exc, signer, asked.get("grant"), asked.get("dataset"))
        except Exception:  # keeping the record must never turn a refusal into a 500
            log.exception("could not record a refusal")
        return error_response(exc)

    async def signed(request: Request, asked: dict[str, Any], operations: tuple[str, ...]) -> tuple[bytes, Admitted]:
        """The body of a request signed for this vault and one of `operations`, admitted once."""
        body = await read_limited(request, max_body, body_timeout)
        vault_request, signer = gate.signer_of(request.headers.get(HEADER), body)
        asked.update(signer=signer, grant=vault_request.grant_id, dataset=vault_request.dataset_id)
        admitted = await asyncio.to_thread(gate.admit, vault_request, signer, operations)
        asked["admitted"] = True
        return body, admitted

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
        for code, n in dropped.items():
            counts[code] = counts.get(code, 0) + n
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
            body, admitted = await signed(request, asked, (JOB,))
            result = await asyncio.to_thread(service.run_job, strict_json(body), admitted.signer, admitted.request)
            return JSONResponse(result)
        except Exception as exc:
            return refuse("/v1/jobs", exc, asked)

    @app.post("/v1/rounds/check")
    async def check_round(request: Request) -> Response:
        """Would this vault run the next federated round? Nothing runs, nothing is charged."""
        asked: dict[str, Any] = {}
        try:
            body, admitted = await signed(request, asked, (ROUND_CHECK,))
            parsed = strict_json(body)
            check = (
                service.lora.check if "lora" in parsed else service.check_round_request
            )  # a LoRA run's, or a tabular one's
            result = await asyncio.to_thread(check, parsed, admitted.signer, admitted.request)
            return JSONResponse(result)
        except Exception as exc:
            return refuse("/v1/rounds/check", exc, asked)

    def names_its_round(parsed: dict[str, Any], admitted: Admitted, what: str) -> None:
        only_fields(parsed, ROUND_ABORT_FIELDS, what)
        r = admitted.request
        named = (parsed.get("dataset_id"), parsed.get("grant_id"), parsed.get("run_id"), parsed.get("round"))
        if named != ("0x" + r.dataset_id.hex(), r.grant_id, r.run_id, r.round):
            raise BadJob(f"{what} names the dataset, grant, run and round it was signed for")

    @app.post("/v1/rounds/prepare")
    async def prepare_round(request: Request) -> Response:
        """Would this vault log its reserved round now (grant not revoked, not expiring, within its
        budget)? Asked of every vault before any unmask; nothing is logged or changed."""
        asked: dict[str, Any] = {}
        try:
            body, admitted = await signed(request, asked, (ROUND_PREPARE,))
            names_its_round(strict_json(body), admitted, "a prepare")
            r = admitted.request
            result = await asyncio.to_thread(service.prepare_round, r.grant_id, r.dataset_id, r.run_id, r.round,
                                             admitted.signer)  # fmt: skip
            return JSONResponse(result)
        except Exception as exc:
            return refuse("/v1/rounds/prepare", exc, asked)

    @app.post("/v1/rounds/abort")
    async def abort_round(request: Request) -> Response:
        """The grantee's signed abort of one round: undo this vault's reserved charge for it."""
        asked: dict[str, Any] = {}
        try:
            body, admitted = await signed(request, asked, (ROUND_ABORT,))
            names_its_round(strict_json(body), admitted, "an abort")
            # the gate checked the signer is the grant's grantee; a revoked or expired grant may
            # still undo its own reservation
            return JSONResponse(await asyncio.to_thread(flower.abort, admitted))
        except Exception as exc:
            return refuse("/v1/rounds/abort", exc, asked)

    @app.post("/v1/flower")
    async def flower_message(request: Request) -> Response:
        asked: dict[str, Any] = {}
        try:
            body, admitted = await signed(request, asked, (*SECURE_STAGES, ROUND_FIT))
            r = admitted.request
            service.holds(r.dataset_id)
            # the grant before the message is decoded: nobody else's bytes are parsed
            await asyncio.to_thread(service.grant_for, r.grant_id, admitted.signer, "federated_round", r.dataset_id)
            try:
                reply, headers = await asyncio.to_thread(
                    flower.handle, body, admitted, request.headers.get(KEY_SIGNATURES)
                )
            except VaultError:
                raise
            except (ValueError, KeyError, TypeError, AttributeError, DecodeError) as exc:
                raise BadJob(f"not a Flower message this vault can run: {exc.__class__.__name__}: {exc}") from None
            return Response(reply, media_type="application/x-protobuf", headers=headers)
        except Exception as exc:
            return refuse("/v1/flower", exc, asked)

    return app

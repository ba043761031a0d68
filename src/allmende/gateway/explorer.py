"""The network explorer and playground: the web page at `/` (static files shipped in the
package, plain JavaScript, no build step) and the JSON endpoints it reads, under
`/explorer/api/`, which scripts can use as well:

    GET /explorer/api                 this list
    GET /explorer/api/network         providers, validators, totals (chain + the gateway's health checks)
    GET /explorer/api/activity        requests, tokens and latency per 10 s from this gateway; recent receipts
    GET /explorer/api/models          registered models, lineage edges, attestations
    GET /explorer/api/money           channels (deposit, redeemed, pending), royalties, fees, treasury
    GET /explorer/api/trust           fraud cases with votes and verdicts, governance proposals
    GET /explorer/api/data            datasets, grants with their epsilon budget, the access log
    GET /explorer/api/address/{addr}  one address: role, stake, balances, earnings over time, channels, cases
    GET /explorer/api/receipts/{id}   the receipt of one answer of this gateway, by its response id

Amounts are decimal strings of integer base units (`units` says the decimals); every view
carries `chain_head` (block height, its time, the chain id). The
receipt of every answer also travels with the answer itself, in an `allmende` field of
the response body (the last chunk of a stream), which OpenAI clients ignore."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from allmende.api.client import Answer
from allmende.api.directory import Directory
from allmende.chain.errors import ChainError
from allmende.core import request_cost
from allmende.core.errors import InvalidInput
from allmende.gateway.explorer_chain import ChainView, hx
from allmende.gateway.explorer_stats import Throughput, Uptime
from allmende.payer.payments import Payments

STATIC = Path(__file__).parent / "static"  # shipped as package data
ENDPOINTS = {
    "/explorer/api/network": "chain height; providers (address, endpoint, offers, stake, reputation, health, "
    "version, capacity, throughput, uptime history), validators, totals",
    "/explorer/api/activity": "requests, tokens and latency of this gateway per 10-second bucket; recent receipts",
    "/explorer/api/models": "registered models: owner, license, royalty, lineage edges, attestations",
    "/explorer/api/money": "payment channels, redeemed and pending amounts, royalties, protocol fees, treasury, "
    "each provider's earnings over time",
    "/explorer/api/address/{address}": "one address: role, stake, balances, earnings over time, channels, cases",
    "/explorer/api/trust": "fraud cases (state, votes, verdict) and governance proposals (votes, timelock)",
    "/explorer/api/data": "datasets, grants (epsilon budget and spent), the access log",
    "/explorer/api/receipts/{id}": "the receipt of one answer of this gateway, by the response's id",
}


@dataclass
class Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    latencies: list[float] | None = None


class Activity:
    """What this gateway served, in 10-second buckets over the last `keep` buckets, plus
    the receipts of the last answers. In memory only: it describes this process.

    With `private` (a gateway that requires API keys) a receipt is shown only to the API key
    that paid for it; the series are aggregates and shown to anyone."""

    def __init__(self, bucket_s: int = 10, keep: int = 180, receipts: int = 256, private: bool = False) -> None:
        self.bucket_s = bucket_s
        self.keep = keep
        self._buckets: deque[Bucket] = deque(maxlen=keep)
        self._receipts: OrderedDict[str, tuple[str | None, dict[str, Any]]] = OrderedDict()
        self.private = private
        self._max_receipts = receipts
        self._lock = threading.Lock()
        self.totals = {"requests": 0, "errors": 0, "tokens": 0}
        self._bucket(time.time())  # the series starts when the gateway does

    def _bucket(self, now: float) -> Bucket:
        start = int(now) // self.bucket_s * self.bucket_s
        if not self._buckets or self._buckets[-1].start != start:
            self._buckets.append(Bucket(start, latencies=[]))
        return self._buckets[-1]

    def record(
        self, latency_s: float, tokens: int, ok: bool, receipt: dict[str, Any] | None = None, payer: str | None = None
    ) -> None:
        with self._lock:
            bucket = self._bucket(time.time())
            bucket.requests += 1
            self.totals["requests"] += 1
            if not ok:
                bucket.errors += 1
                self.totals["errors"] += 1
                return
            bucket.tokens += tokens
            self.totals["tokens"] += tokens
            assert bucket.latencies is not None
            bucket.latencies.append(latency_s)
            if receipt is not None:
                self._receipts[receipt["id"]] = (payer, receipt)
                while len(self._receipts) > self._max_receipts:
                    self._receipts.popitem(last=False)

    def _visible(self, payer: str | None, viewer: str | None) -> bool:
        return not self.private or (viewer is not None and payer == viewer)

    def receipt(self, response_id: str, viewer: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            found = self._receipts.get(response_id)
        return found[1] if found is not None and self._visible(found[0], viewer) else None

    def view(self, viewer: str | None = None) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            self._bucket(now)
            by_start = {b.start: b for b in self._buckets}
            first = int(now) // self.bucket_s * self.bucket_s - (self.keep - 1) * self.bucket_s
            series = []
            for start in range(max(first, self._buckets[0].start), int(now) + 1, self.bucket_s):
                b = by_start.get(start) or Bucket(start, latencies=[])
                lat = sorted(b.latencies or [])
                series.append(
                    {
                        "t": start,
                        "requests": b.requests,
                        "errors": b.errors,
                        "tokens": b.tokens,
                        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                        "p95_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))] * 1000, 1) if lat else None,
                    }
                )
            recent = [r for payer, r in reversed(self._receipts.values()) if self._visible(payer, viewer)][:20]
            return {"bucket_s": self.bucket_s, "series": series, "totals": dict(self.totals), "receipts": recent}


def receipt_view(response_id: str, answer: Answer, directory: Directory, latency_s: float) -> dict[str, Any]:
    """What the playground shows under an answer: who served it, the tokens, the price on
    chain, what the gateway pays for it, and what was checked."""
    r = answer.receipt.receipt
    entry = directory.entry(r.provider)
    offer = entry.offers.get(r.model_id) if entry else None
    stats = entry.stats.get(r.model_id) if entry else None
    price_in, price_out = (offer.price_in, offer.price_out) if offer else (0, 0)
    fair = request_cost(r.tokens_in, r.tokens_out, price_in, price_out) if offer else r.amount
    return {
        "id": response_id,
        "request_id": hx(r.request_id),
        "provider": r.provider,
        "model": offer.name if offer else None,
        "model_id": hx(r.model_id),
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "price_in_per_1m": str(price_in),
        "price_out_per_1m": str(price_out),
        "amount": str(min(r.amount, fair)),  # what the gateway pays: never more than usage × the price on chain
        "asked": str(r.amount),
        "input_hash": hx(r.input_hash),
        "output_hash": hx(r.output_hash),
        "proof_hash": hx(r.proof_hash),
        "signature": hx(answer.receipt.signature),
        "timestamp": r.timestamp,
        "latency_ms": round(latency_s * 1000, 1),
        "checks": {
            "signature": "verified: signed by the provider's registered key",
            "price": "checked: at most usage × the offer on chain",
            "proof": "committed in the receipt (proofHash)" if any(r.proof_hash) else "none (embeddings have none)",
        },
        # validators audit providers with their own requests, which look like users' requests;
        # this answer itself was not re-run, but its signed receipt and proof are the evidence a
        # validator would need to open a fraud case
        "audited": False,
        # None until a validator published a score (the neutral 0.5 is "not audited yet")
        "provider_reputation": round(stats.reputation, 4) if stats and directory.audited(r.provider) else None,
    }


def chain_unavailable(exc: ChainError) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": f"the chain could not be read: {exc}", "type": "chain_unavailable"}}, status_code=503
    )


class Explorer:
    def __init__(self, directory: Directory, view: ChainView, api_keys: frozenset[str] = frozenset()) -> None:
        self.directory = directory
        self.view = view
        self.api_keys = api_keys
        self.activity = Activity(private=bool(api_keys))
        self.throughput: Throughput = view.throughput
        self.uptime: Uptime = view.uptime
        self._sampling = threading.Event()  # set once the uptime sampler runs
        # its own threads: pages polled while the chain hangs must not take the threads the
        # gateway's own chain work (channel opens, directory refreshes) runs in
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="explorer")

    async def _read(self, key: str, build: Callable[[], dict[str, Any]]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(self._pool, self.view.cached, key, build)
            units = await loop.run_in_executor(self._pool, self.view.cached, "units", self.view.units)
            head = await loop.run_in_executor(self._pool, self.view.cached, "head", self.view.head)
        except ChainError as exc:
            return chain_unavailable(exc)
        except InvalidInput as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error"}}, status_code=400)
        return {**body, "units": units, "chain_head": head}

    def sample_uptime(self) -> None:
        """One look at which providers the directory's health checks find serving."""
        now = time.monotonic()
        entries = self.directory.entries()
        degraded = [e.address for e in entries if any(s.suspended_until > now for s in e.stats.values())]
        self.uptime.sample([e.address for e in entries], degraded)

    def start_sampling(self, every_s: float = 5.0) -> None:
        """Sample uptime every `every_s` seconds on a daemon thread (memory reads only)."""
        if self._sampling.is_set():
            return
        self._sampling.set()

        def loop() -> None:
            while True:
                self.sample_uptime()
                time.sleep(every_s)

        threading.Thread(target=loop, name="explorer-uptime", daemon=True).start()

    def viewer(self, request: Request) -> str | None:
        """The caller's API key, if it is one of the gateway's keys."""
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        return key if key in self.api_keys else None

    def router(self) -> APIRouter:
        api = APIRouter(prefix="/explorer/api")
        view = self.view

        @api.get("")
        async def index() -> dict[str, Any]:
            return {"endpoints": ENDPOINTS}

        @api.get("/network")
        async def network() -> Any:
            return await self._read("network", view.network)

        @api.get("/models")
        async def models() -> Any:
            return await self._read("models", view.models)

        @api.get("/money")
        async def money() -> Any:
            return await self._read("money", view.money)

        @api.get("/trust")
        async def trust() -> Any:
            return await self._read("trust", view.trust)

        @api.get("/data")
        async def data() -> Any:
            return await self._read("data", view.data)

        @api.get("/address/{address}")
        async def address(address: str) -> Any:
            return await self._read(f"address:{address.lower()}", lambda: view.address(address))

        @api.get("/activity")
        async def activity(request: Request) -> dict[str, Any]:
            return self.activity.view(self.viewer(request))

        @api.get("/receipts/{response_id}")
        async def receipt(request: Request, response_id: str) -> Any:
            found = self.activity.receipt(response_id, self.viewer(request))
            if found is None:
                return JSONResponse(
                    {"error": {"message": f"no receipt for '{response_id[:80]}' here", "type": "not_found"}},
                    status_code=404,
                )
            return found

        return api

    def mount(self, app: FastAPI) -> None:
        app.include_router(self.router())
        self.start_sampling()
        app.mount("/explorer/static", StaticFiles(directory=str(STATIC)), name="explorer-static")

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(str(STATIC / "index.html"), headers={"cache-control": "no-cache"})

    # ---------------------------------------------------- called by the OpenAI routes

    def answered(self, response_id: str, answer: Answer, started: float, api_key: str | None) -> dict[str, Any]:
        """Count an answer in the activity series; return its receipt view for the response."""
        latency = time.monotonic() - started
        r = answer.receipt.receipt
        view = receipt_view(response_id, answer, self.directory, latency)
        self.activity.record(latency, r.tokens_in + r.tokens_out, True, view, api_key)
        self.throughput.record(r.provider, r.tokens_out, latency)
        return view

    def failed(self, started: float) -> None:
        self.activity.record(time.monotonic() - started, 0, False)


def mount_explorer(
    app: FastAPI, directory: Directory, payments: Payments, api_keys: frozenset[str] = frozenset()
) -> Explorer:
    """Serve the explorer page and its JSON endpoints on `app`."""
    explorer = Explorer(directory, ChainView(directory.contracts, directory, payments), api_keys)
    explorer.mount(app)
    return explorer

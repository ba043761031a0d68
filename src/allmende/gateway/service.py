"""Serving OpenAI-style requests over the provider network: validation, routing,
payment, receipt checks and failover (before the first token and mid-stream).

Every answer's receipt is checked against what was sent and received (payer/receipts.py)
before it is paid. One that fails is not paid, blamed on the provider and logged; a one-shot
request then goes to another provider, so the user only sees answers whose receipt passed.
A stream's receipt comes after its text: a failing one ends the stream with the usage the
gateway counted itself, and the provider is not paid.

A stream the provider cuts after sending text (an engine error) comes with the provider's
receipt for that text, checked and paid like any other, so both ledgers agree. One whose
connection drops, or that the gateway's own client abandons, keeps its whole reservation
counted: the provider bills the prompt and the tokens it sent, never more than that bound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from allmende.api.canonical import CanonicalRequest
from allmende.api.client import Answer, Delta, ProviderReplyError, ainfer, ainfer_stream, build_envelope
from allmende.api.directory import AmbiguousName, Directory, Offer, ProviderEntry
from allmende.api.protocol import ChatRequest
from allmende.api.upstream import HttpxUpstream, Upstream
from allmende.chain.errors import ChainError
from allmende.core import Domain, InvalidInput
from allmende.core.endpoints import MODEL_KIND_NAMES, endpoint
from allmende.core.errors import InvalidModelName
from allmende.core.routing import ProviderStats, Router
from allmende.gateway.errors import (
    AmbiguousModel,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NoProvider,
)
from allmende.gateway.staged import STAGE_KIND, StagedModel, StagedModels
from allmende.payer.payments import Hold, Payments
from allmende.payer.receipts import BadReceipt

log = logging.getLogger("allmende.gateway")
# failed tries (blamed on a provider) before a request is given up
MAX_ATTEMPTS = 4
# seconds to wait before asking busy providers again
BUSY_WAIT = 0.02


@dataclass
class Result:
    offer: Offer
    answer: Answer
    text: str


@dataclass
class Attempt:
    """One try of a request at one provider, with what it reserved."""

    entry: ProviderEntry
    stats: ProviderStats
    hold: Hold  # its channel, its most cost counted in flight there, the voucher it carried
    request_id: bytes
    envelope: dict[str, str]
    sealer: Any
    sent: CanonicalRequest  # as forwarded: its inputHash signed in the request, checked in the receipt
    held: bool = True  # its hold still counted: not yet paid (payments.pay) or released


class GatewayService:
    def __init__(
        self,
        directory: Directory,
        payments: Payments,
        router: Router,
        receipt_domain: Domain,
        http: httpx.AsyncClient,
        timeout_first_token: float = 60.0,
        registry: CollectorRegistry | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self.directory = directory
        self.payments = payments
        self.router = router
        self.receipt_domain = receipt_domain
        self.http = http
        # what carries requests to providers' /v1/infer (api/upstream.py): a gateway process
        # passes aiohttp's; by default the httpx client (tests route it to apps in process)
        self.upstream = upstream or HttpxUpstream(http)
        self.timeout_first_token = timeout_first_token
        self.registry = registry or CollectorRegistry()
        self.staged: StagedModels | None = None  # models served through stage chains (gateway/staged.py)
        self.failed_attempts = Counter(
            "allmende_gateway_failed_attempts",
            "attempts at a provider that did not produce an answer (each may be retried elsewhere)",
            ["provider", "status", "code"],
            registry=self.registry,
        )

    def resolve(self, name: object, kind: str) -> Offer:
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'model' is required", "model")
        try:
            offer = self.directory.resolve(name)
        except InvalidModelName as exc:
            raise ModelNotFound(f"The model '{name}' does not exist: {exc}", "model") from None
        except AmbiguousName as exc:
            ids = ", ".join("0x" + m.hex() for m in exc.model_ids)
            raise AmbiguousModel(
                f"The model name '{exc.name}' is claimed by more than one model id ({ids}); "
                "ask for the one you mean by its id",
                "model",
            ) from None
        if offer is None:
            raise ModelNotFound(
                f"The model '{name}' does not exist or no provider serves it: names are the ones model owners "
                "registered on chain (GET /v1/models lists those served); a model without a name is asked for "
                'by its id, model="0x…"',
                "model",
            )
        if offer.kind == STAGE_KIND:  # a pipeline stage is no model a client asks for
            raise ModelNotFound(f"'{name}' is a pipeline stage of a model, not a model; ask for the model", "model")
        if endpoint(kind).model_kind != offer.kind:
            what = MODEL_KIND_NAMES.get(offer.kind, f"a {offer.kind} model")
            raise InvalidRequest(f"'{name}' is {what}; it cannot serve {kind} requests", "model")
        return offer

    def most_cost(self, request: CanonicalRequest) -> tuple[Offer, int]:
        """The request's model and the most the request can be charged at any provider that
        offers it (the credit rule with each provider's own offer): what a budget reserves,
        what an x402 payment must cover and what an agent's spending policy checks."""
        staged = self._staged(request)
        if staged is not None:
            assert self.staged is not None
            return self.staged.offer_of(staged), self.staged.most_cost(staged, request)
        offer = self.resolve(request.model, request.kind)
        costs = [cost_at(request, entry.offers[offer.model_id]) for entry in self.directory.candidates(offer.model_id)]
        if not costs:
            raise NoProvider(f"no provider serves '{offer.name}' right now")
        return offer, max(costs)

    def _staged(self, request: CanonicalRequest, pin: str | None = None) -> StagedModel | None:
        """The model the request asks for if this gateway serves it through a stage chain and
        no provider serves it whole (whole-model providers come first)."""
        if self.staged is None:
            return None
        name = request.model
        model = self.staged.find(name)
        if model is None or self.directory.candidates(model.base):
            return None
        if not isinstance(request.request, ChatRequest):
            raise InvalidRequest(f"'{name}' is served in pipeline stages: chat completions only", "model")
        if pin is not None:
            raise InvalidRequest("a model served in pipeline stages cannot be pinned to one provider")
        return model

    def _pick(self, offer: Offer, excluded: set[str], pin: str | None) -> tuple[ProviderEntry, ProviderStats] | None:
        entries = {e.address: e for e in self.directory.candidates(offer.model_id) if pin in (None, e.address)}
        stats = [e.stats[offer.model_id] for e in entries.values() if offer.model_id in e.stats]
        chosen = self.router.choose(stats, time.monotonic(), frozenset(excluded))
        return None if chosen is None else (entries[chosen.address], chosen)

    async def _choose(
        self, offer: Offer, tried: set[str], busy: set[str], deadline: float, pin: str | None
    ) -> tuple[ProviderEntry, ProviderStats] | None:
        """A provider not tried yet (only `pin`, if given). Busy ones (at capacity, or no
        credit left for us until answers come back) are retried after a short wait, until
        the deadline."""
        while True:
            picked = self._pick(offer, tried | busy, pin)
            if picked is not None:
                return picked
            if not busy or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(BUSY_WAIT)
            busy.clear()

    async def _prepare(
        self, entry: ProviderEntry, stats: ProviderStats, offer: Offer, sent: CanonicalRequest
    ) -> Attempt | None:
        """Channel, reservation, voucher and envelope for one try; None if the provider's
        credit for us (or our deposit) cannot take this request right now."""
        cost = cost_at(sent, entry.offers.get(offer.model_id, offer))
        held = await self.payments.hold(entry.address, offer.model_id, cost, entry.info.credit_limit)
        if held is None:
            return None
        rid, env, sealer = build_envelope(
            entry.info,
            offer.model_id,
            sent.kind,
            sent.body,
            self.payments.signer,
            held.channel_id,
            held.voucher,
            body_hash=sent.input_hash,
        )
        return Attempt(entry, stats, held, rid, env, sealer, sent)

    async def _open(
        self,
        entry: ProviderEntry,
        stats: ProviderStats,
        offer: Offer,
        sent: CanonicalRequest,
        tried: set[str],
        busy: set[str],
    ) -> tuple[Attempt | None, Exception | None]:
        """`_prepare`, with a provider that cannot be tried now put aside: busy (no credit for
        us until answers come back) or tried (no channel while the chain is away; not its fault)."""
        try:
            attempt = await self._prepare(entry, stats, offer, sent)
        except ChainError as exc:
            log.warning("no usable channel to %s: %s", entry.address, exc)
            tried.add(entry.address)
            return None, exc
        if attempt is None:
            busy.add(entry.address)
        return attempt, None

    def _settle(
        self,
        attempt: Attempt,
        offer: Offer,
        answer: Answer,
        api_key: str | None,
        streamed_text: str | None = None,
        streamed_tokens: int = 0,
    ) -> bool:
        """Pay the answer if its receipt passes the check (payments.pay, payer/receipts.py);
        False if it failed: then nothing is owed for it, and the provider is blamed and logged.
        The attempt's hold ends either way."""
        own = attempt.entry.offers.get(offer.model_id, offer)  # this provider's price on chain
        entry = attempt.entry
        attempt.held = False
        try:
            self.payments.pay(
                entry.address, attempt.hold, own, attempt.sent, answer, api_key, streamed_text, streamed_tokens
            )
        except BadReceipt as exc:
            log.warning("attempt at %s for %s: %s", entry.address, offer.name, exc)
            self.failed_attempts.labels(entry.address, "502", exc.code).inc()
            attempt.stats.record_failure(time.monotonic())
            return False
        return True

    def _failed(self, attempt: Attempt, offer: Offer, exc: Exception, streamed: int) -> str:
        """Log, count and classify a failed try: "fatal" (the request itself is wrong), "busy"
        (not now), "skip" (another provider, no blame) or "failure" (blamed on the provider)."""
        address = attempt.entry.address
        if isinstance(exc, ProviderReplyError):
            status, code, message = exc.status, exc.code, exc.message
        elif isinstance(exc, TimeoutError):
            status, code, message = 504, "timeout", "no answer in time"
        else:
            status, code, message = 502, type(exc).__name__, str(exc) or type(exc).__name__
        log.warning(
            "attempt at %s for %s failed: %s %s: %s (after %d streamed tokens)",
            address,
            offer.name,
            status,
            code,
            message,
            streamed,
        )
        self.failed_attempts.labels(address, str(status), code).inc()
        answered = isinstance(exc, ProviderReplyError) and code != "stream_cut"
        if attempt.held and (answered or isinstance(exc, httpx.ConnectError)):
            # the provider refused or failed before earning anything, or was never reached
            self.payments.release(attempt.hold.channel_id, attempt.hold.cost)
            attempt.held = False
        # else: the outcome is unknown (the provider may have earned it): it stays counted
        if isinstance(exc, ProviderReplyError) and exc.status < 500:
            if exc.status == 429:
                return "busy"
            if exc.status in (402, 409):
                return "skip"
            return "fatal"
        attempt.stats.record_failure(time.monotonic())
        return "failure"

    # ------------------------------------------------------------ one shot

    async def complete(self, request: CanonicalRequest, api_key: str | None, pin: str | None = None) -> Result:
        """Serve one request; `pin` restricts it to one provider (no failover elsewhere)."""
        staged = self._staged(request, pin)
        if staged is not None:
            assert self.staged is not None
            async with contextlib.aclosing(self.staged.generate(staged, request, api_key)) as chain:
                async for piece in chain:
                    if isinstance(piece, Answer):
                        return Result(self.staged.offer_of(staged), piece, piece.output.get("text", ""))
            raise NoProvider("the stage chain ended without an answer")
        offer = self.resolve(request.model, request.kind)
        tried: set[str] = set()
        busy: set[str] = set()
        failures = 0
        last_error: Exception | None = None
        rejected: Answer | None = None  # the last answer whose receipt failed the check
        deadline = time.monotonic() + self.timeout_first_token
        while failures < MAX_ATTEMPTS:
            picked = await self._choose(offer, tried, busy, deadline, pin)
            if picked is None:
                break
            entry, stats = picked
            attempt, error = await self._open(entry, stats, offer, request, tried, busy)
            if attempt is None:
                last_error = error or last_error
                continue
            stats.in_flight += 1
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout_first_token):  # no task per request, as wait_for made
                    answer = await ainfer(
                        self.upstream,
                        entry.url,
                        entry.info,
                        self.receipt_domain,
                        attempt.envelope,
                        attempt.sealer,
                        attempt.request_id,
                    )
            except (ProviderReplyError, httpx.HTTPError, TimeoutError, InvalidInput, OSError) as exc:
                verdict = self._failed(attempt, offer, exc, 0)
                if verdict == "fatal":
                    raise refused(exc) from None
                if verdict == "busy":
                    busy.add(entry.address)
                else:
                    tried.add(entry.address)
                    failures += verdict == "failure"
                last_error = exc
                continue
            finally:
                stats.in_flight -= 1
            if not self._settle(attempt, offer, answer, api_key):
                answer.sent, rejected = request.body, answer
                tried.add(entry.address)  # not paid, blamed: the answer goes to no one
                failures += 1
                last_error = BadReceipt(f"the receipt of {entry.address} failed the gateway's check")
                continue
            stats.record_success(time.monotonic() - started)
            answer.sent = request.body
            return Result(offer, answer, answer.output.get("text", ""))
        why = f" (last error: {last_error})" if last_error else ""
        # with the evidence of a bad receipt, for a client that asks (an audit)
        raise NoProvider(f"no provider could serve '{offer.name}' right now{why}", rejected)

    # ------------------------------------------------------------- streams

    async def stream(
        self, request: CanonicalRequest, api_key: str | None, pin: str | None = None
    ) -> AsyncIterator[str | Answer]:
        """Text deltas then a final Answer. If a provider dies mid-stream, another one
        continues from the prompt plus the text already sent; the caller sees one stream.
        Usage counts tokens (from receipts, and from the token counts of deltas a failed
        provider streamed), never chunks. A model served in stages streams from its chain
        (a failed stage is replaced inside it)."""
        staged = self._staged(request, pin)
        if staged is not None:
            assert self.staged is not None
            async with contextlib.aclosing(self.staged.generate(staged, request, api_key)) as chain:
                async for piece in chain:
                    yield piece
            return
        offer = self.resolve(request.model, request.kind)
        sent = ""
        carried_tokens = 0  # tokens streamed by providers that failed afterwards
        tried: set[str] = set()
        busy: set[str] = set()
        failures = 0
        last_error: Exception | None = None
        deadline = time.monotonic() + self.timeout_first_token
        while failures < MAX_ATTEMPTS:
            picked = await self._choose(offer, tried, busy, deadline, pin)
            if picked is None:
                break
            entry, stats = picked
            if sent and request.structured:
                # another provider would start the grammar afresh after the text already sent
                raise NoProvider(
                    f"the provider of this structured output failed after {carried_tokens} tokens; "
                    "structured output cannot be continued elsewhere"
                )
            continued = request.continued(sent, carried_tokens)
            attempt, error = await self._open(entry, stats, offer, continued, tried, busy)
            if attempt is None:
                last_error = error or last_error
                continue
            stats.in_flight += 1
            started = time.monotonic()
            streamed = 0  # tokens of this attempt
            text = ""  # text of this attempt
            try:
                items = ainfer_stream(
                    self.upstream,
                    entry.url,
                    entry.info,
                    self.receipt_domain,
                    attempt.envelope,
                    attempt.sealer,
                    attempt.request_id,
                )
                first = True
                async for item in items:
                    if first:
                        stats.record_success(time.monotonic() - started)
                        first = False
                    if isinstance(item, Answer):
                        item.sent = continued.body
                        if not self._settle(attempt, offer, item, api_key, text, streamed):
                            # the text is out already; the usage is what the gateway counted
                            ids = item.output.get("token_ids")
                            received = len(ids) if isinstance(ids, list) else streamed
                            prompt = min(item.receipt.receipt.tokens_in, continued.max_prompt_tokens)
                            item.usage = {
                                "prompt_tokens": prompt,
                                "completion_tokens": received,
                                "total_tokens": prompt + received,
                            }
                        if carried_tokens:  # continued: the carried text was part of this prompt
                            completion = carried_tokens + item.usage["completion_tokens"]
                            prompt = max(0, item.usage["prompt_tokens"] - carried_tokens)
                            item.usage = {
                                "prompt_tokens": prompt,
                                "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                            }
                        yield item
                        return
                    sent += item
                    text += item
                    streamed += item.tokens if isinstance(item, Delta) else 1
                    yield item
            except (ProviderReplyError, httpx.HTTPError, TimeoutError, InvalidInput, OSError) as exc:
                if isinstance(exc, ProviderReplyError) and exc.cut is not None:
                    # the provider failed after sending text and billed that text: check its
                    # receipt against what arrived and pay it, as the provider's ledger does
                    exc.cut.sent = continued.body
                    self._settle(attempt, offer, exc.cut, api_key, text, streamed)  # its hold ends there
                verdict = self._failed(attempt, offer, exc, streamed)
                if verdict == "fatal" and not sent and not streamed:
                    raise refused(exc) from None
                if verdict == "busy" and not streamed:
                    busy.add(entry.address)
                else:
                    tried.add(entry.address)
                    failures += verdict in ("failure", "fatal")
                last_error = exc
            finally:
                stats.in_flight -= 1
            carried_tokens += streamed
        raise NoProvider(
            f"no provider could serve '{offer.name}' right now" + (f" (last error: {last_error})" if last_error else "")
        )


def cost_at(request: CanonicalRequest, offer: Offer) -> int:
    """The most `request` can be charged at `offer` (its context and prices)."""
    try:
        return request.max_cost(offer.context_length, offer.price_in, offer.price_out)
    except InvalidInput as exc:
        raise InvalidRequest(str(exc)) from None


def refused(exc: Exception) -> InvalidRequest:
    """The provider's refusal of the request itself, for the client, with the provider's
    `param` and code; a message that starts by quoting a parameter ('dimensions' ...) names
    it as OpenAI's `param` where the provider named none."""
    message = str(exc.message if isinstance(exc, ProviderReplyError) else exc)
    quoted = message.split("'")
    param = exc.param if isinstance(exc, ProviderReplyError) else None
    error = InvalidRequest(message, param or (quoted[1] if message.startswith("'") and len(quoted) > 2 else None))
    if isinstance(exc, ProviderReplyError) and exc.code not in ("bad_request", "engine_error", "invalid_input"):
        error.code = exc.code  # the provider's own code (context_length_exceeded, …), not a generic one
    return error


__all__ = ["GatewayError", "GatewayService", "Result"]

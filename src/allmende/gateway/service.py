"""Serving OpenAI-style requests over the provider network: validation, routing,
payment, receipt checks and failover (before the first token and mid-stream)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from allmende.chain.errors import ChainError
from allmende.core import Domain, InvalidInput
from allmende.core.routing import ProviderStats, Router
from allmende.gateway.directory import Directory, Offer, ProviderEntry
from allmende.gateway.errors import GatewayError, InsufficientFunds, InvalidRequest, ModelNotFound, NoProvider
from allmende.gateway.payments import Overcharged, Payments
from allmende.provider.client import Answer, ProviderReplyError, ainfer, ainfer_stream, build_envelope

log = logging.getLogger("allmende.gateway")
MAX_ATTEMPTS = 4
# provider answers that mean "try someone else" rather than "the request is wrong"
RETRYABLE = {402, 409, 429}


@dataclass
class Result:
    offer: Offer
    answer: Answer
    text: str


def validate(kind: str, body: dict[str, Any]) -> None:
    """Reject what OpenAI would reject, with the offending parameter named."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
                raise InvalidRequest(
                    f"messages[{i}].role must be system, user, assistant, developer or tool", f"messages[{i}].role"
                )
            content = m.get("content")
            if isinstance(content, list):  # OpenAI's content parts: these models read text only
                if not content or not all(
                    isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
                ):
                    raise InvalidRequest(
                        f"messages[{i}].content: only text parts are supported by these models",
                        f"messages[{i}].content",
                    )
                texts = [p["text"] for p in content]
                m["content"] = "".join(str(t) for t in texts)
            elif not isinstance(content, str):
                raise InvalidRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
    elif kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest("'prompt' must be a string", "prompt")
        body["prompt"] = prompt
    elif kind == "embedding":
        raw = body.get("input")
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t for t in raw):
            raise InvalidRequest("'input' must be a non-empty string or array of non-empty strings", "input")
        if body.get("encoding_format", "float") not in ("float", "base64"):
            raise InvalidRequest("'encoding_format' must be float or base64", "encoding_format")
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidRequest("'model' must be a string", "model")
    if not isinstance(body.get("stream", False), bool):
        raise InvalidRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise InvalidRequest("'stream_options' must be an object with a boolean include_usage", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string", "user")
    if kind == "embedding" and isinstance(body.get("input"), list) and len(body["input"]) > 256:
        raise InvalidRequest("'input' may hold at most 256 strings", "input")
    if kind != "embedding":
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise InvalidRequest("'seed' must be a non-negative integer", "seed")
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**20):
                raise InvalidRequest(f"'{name}' must be an integer between 1 and 1048576", name)
        for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
            value = body.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
            ):
                raise InvalidRequest(f"'{name}' must be a number between {low} and {high}", name)
        n = body.get("n")
        if n not in (None, 1):
            raise InvalidRequest("only n=1 is supported", "n")
        if "stop" in body and body["stop"] is not None:
            stop = body["stop"]
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
                raise InvalidRequest("'stop' must be a string or up to 4 strings", "stop")


class GatewayService:
    def __init__(
        self,
        directory: Directory,
        payments: Payments,
        router: Router,
        receipt_domain: Domain,
        http: httpx.AsyncClient,
        timeout_first_token: float = 60.0,
    ) -> None:
        self.directory = directory
        self.payments = payments
        self.router = router
        self.receipt_domain = receipt_domain
        self.http = http
        self.timeout_first_token = timeout_first_token

    def resolve(self, name: object, kind: str) -> Offer:
        if not isinstance(name, str) or not name:
            raise InvalidRequest("'model' is required", "model")
        offer = self.directory.resolve(name)
        if offer is None:
            raise ModelNotFound(f"The model '{name}' does not exist or no provider serves it", "model")
        if (kind == "embedding") != (offer.kind == "embed"):
            what = "an embedding model" if offer.kind == "embed" else "a text generation model"
            raise InvalidRequest(f"'{name}' is {what}; it cannot serve {kind} requests", "model")
        return offer

    def _pick(self, offer: Offer, tried: set[str]) -> tuple[ProviderEntry, ProviderStats] | None:
        entries = {e.address: e for e in self.directory.candidates(offer.model_id)}
        stats = [e.stats[offer.model_id] for e in entries.values() if offer.model_id in e.stats]
        chosen = self.router.choose(stats, time.monotonic(), frozenset(tried))
        return None if chosen is None else (entries[chosen.address], chosen)

    async def _envelope(
        self, entry: ProviderEntry, offer: Offer, kind: str, body: dict[str, Any]
    ) -> tuple[bytes, bytes, dict[str, str], Any]:
        channel_id = self.payments.ready_channel(entry.address)
        if channel_id is None:  # open or top up: chain transactions, off the event loop
            channel_id = await asyncio.to_thread(self.payments.channel_for, entry.address)
        voucher = self.payments.voucher(channel_id, offer.model_id)
        rid, env, sealer = build_envelope(
            entry.info, offer.model_id, kind, body, self.payments.payer, channel_id, voucher
        )
        return channel_id, rid, env, sealer

    def _settle(
        self,
        entry: ProviderEntry,
        stats: ProviderStats,
        channel_id: bytes,
        offer: Offer,
        answer: Answer,
        api_key: str | None,
    ) -> None:
        try:
            self.payments.settle(entry.address, channel_id, offer, answer.receipt, api_key)
        except Overcharged as exc:
            log.warning("provider %s overcharged: %s", entry.address, exc)
            stats.record_failure(time.monotonic())

    # ------------------------------------------------------------ one shot

    async def complete(self, kind: str, body: dict[str, Any], api_key: str | None) -> Result:
        offer = self.resolve(body.get("model"), kind)
        tried: set[str] = set()
        last_error: Exception | None = None
        for _ in range(MAX_ATTEMPTS):
            picked = self._pick(offer, tried)
            if picked is None:
                break
            entry, stats = picked
            tried.add(entry.address)
            stats.in_flight += 1
            started = time.monotonic()
            try:
                channel_id, rid, env, sealer = await self._envelope(entry, offer, kind, body)
                answer = await asyncio.wait_for(
                    ainfer(self.http, entry.url, entry.info, self.receipt_domain, env, sealer, rid),
                    self.timeout_first_token,
                )
            except ProviderReplyError as exc:
                if exc.status < 500 and exc.status not in RETRYABLE:
                    raise InvalidRequest(exc.message) from None
                stats.record_failure(time.monotonic())
                last_error = exc
                continue
            except (httpx.HTTPError, TimeoutError, InvalidInput, OSError) as exc:
                stats.record_failure(time.monotonic())
                last_error = exc
                continue
            except ChainError as exc:  # no channel to this provider while the chain is away: not its fault
                last_error = exc
                continue
            finally:
                stats.in_flight -= 1
            stats.record_success(time.monotonic() - started)
            self._settle(entry, stats, channel_id, offer, answer, api_key)
            return Result(offer, answer, answer.output.get("text", ""))
        raise NoProvider(
            f"no provider could serve '{offer.name}' right now" + (f" (last error: {last_error})" if last_error else "")
        )

    # ------------------------------------------------------------- streams

    async def stream(self, kind: str, body: dict[str, Any], api_key: str | None) -> AsyncIterator[str | Answer]:
        """Text deltas then a final Answer. If a provider dies mid-stream, another one
        continues from the prompt plus the text already sent; the caller sees one stream."""
        offer = self.resolve(body.get("model"), kind)
        sent = ""
        deltas = 0
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 64
        tried: set[str] = set()
        last_error: Exception | None = None
        for _ in range(MAX_ATTEMPTS):
            picked = self._pick(offer, tried)
            if picked is None:
                break
            entry, stats = picked
            tried.add(entry.address)
            attempt = {**body, "stream": True, "max_tokens": max(1, max_tokens - deltas)}
            attempt.pop("max_completion_tokens", None)
            if sent:
                attempt["allmende_continue"] = sent
            stats.in_flight += 1
            started = time.monotonic()
            try:
                channel_id, rid, env, sealer = await self._envelope(entry, offer, kind, attempt)
                items = ainfer_stream(self.http, entry.url, entry.info, self.receipt_domain, env, sealer, rid)
                first = True
                async for item in items:
                    if first:
                        stats.record_success(time.monotonic() - started)
                        first = False
                    if isinstance(item, Answer):
                        self._settle(entry, stats, channel_id, offer, item, api_key)
                        item.usage["completion_tokens"] = deltas
                        item.usage["total_tokens"] = item.usage["prompt_tokens"] + deltas
                        yield item
                        return
                    sent += item
                    deltas += 1
                    yield item
            except ProviderReplyError as exc:
                if exc.status < 500 and exc.status not in RETRYABLE and not sent:
                    raise InvalidRequest(exc.message) from None
                stats.record_failure(time.monotonic())
                last_error = exc
            except (httpx.HTTPError, TimeoutError, InvalidInput, OSError) as exc:
                stats.record_failure(time.monotonic())
                last_error = exc
            except ChainError as exc:
                last_error = exc
            finally:
                stats.in_flight -= 1
            log.info("stream on %s failed after %d deltas (%s); failing over", entry.address, deltas, last_error)
        raise NoProvider(
            f"no provider could serve '{offer.name}' right now" + (f" (last error: {last_error})" if last_error else "")
        )


def budget_check(payments: Payments, budgets: dict[str, int], api_key: str | None) -> None:
    if api_key is not None and api_key in budgets and payments.store.spent(api_key) >= budgets[api_key]:
        raise InsufficientFunds("this API key has spent its budget")


def json_dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


__all__ = ["GatewayError", "GatewayService", "Result", "budget_check", "validate"]

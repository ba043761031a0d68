"""In-process test seams for the gateway: real ProviderService + FastAPI apps behind
`httpx.ASGITransport`, a deterministic fake engine, and a transport that routes by host
(or refuses, for a dead provider). No sockets, no chain, no model: milliseconds per test."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from allmende.api.client import ProviderInfo
from allmende.api.directory import Directory, Offer, ProviderEntry
from allmende.chain.bindings import ChannelRecord
from allmende.core import Domain
from allmende.core.credit import UNTIL_CONTEXT
from allmende.core.envelope import public_key_bytes
from allmende.core.routing import ProviderStats, Router
from allmende.engine.base import (
    ChatPrompt,
    EmbeddingInput,
    Engine,
    EngineError,
    Prompt,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)
from allmende.gateway.service import GatewayService
from allmende.payer.payments import Payments
from allmende.payer.store import GatewayStore
from allmende.provider.app import create_app
from allmende.provider.payments import CreditPolicy, PaymentGate
from allmende.provider.service import ProviderService, ServedModel
from allmende.provider.store import ProviderStore

CHAIN_ID = 31337
VOUCHERS = Domain(CHAIN_ID, "0x" + "c1" * 20)
RECEIPTS = Domain(CHAIN_ID, "0x" + "c2" * 20)
MODEL_ID = b"\x07" * 32
GATEWAY_KEY = b"\x42" * 32
GATEWAY = Account.from_key(GATEWAY_KEY).address


class FakeEngine(Engine):
    """A deterministic 'model': token i of a completion is (sum(prompt) + i) % 50 + 65, its
    text one letter; `fail_after` makes generation raise after that many tokens."""

    kind = "generate"

    def __init__(self, fail_after: int | None = None) -> None:
        self.name = "fake"
        self.model_id = MODEL_ID
        self.context_length = 256
        self.fail_after = fail_after
        self.cached_tokens = 0  # reported on the final event, as the llama.cpp engine's prompt cache does

    def encode_text(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, ChatPrompt):
            text = "".join(m.content for m in prompt.messages)
        else:
            text = prompt.text if isinstance(prompt.text, str) else "".join(map(chr, prompt.text))
        return self.encode_text(text + prompt.continuation)

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        if len(prompt_ids) + (1 if max_tokens == UNTIL_CONTEXT else max_tokens) > self.context_length:
            raise PromptTooLong("too long")

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        params = self.fitted(prompt_ids, params)  # no max_tokens: up to the context's end
        base = sum(prompt_ids)
        for i in range(params.max_tokens):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the GPU fell off the bus")
            token = (base + i) % 50 + 65
            last = i == params.max_tokens - 1
            logprob = None
            if params.logprobs is not None:  # the drawn letter is the likeliest, then the next letters
                top = [fake_logprob(token + k, -0.25 * (k + 1)) for k in range(params.logprobs)]
                logprob = {**fake_logprob(token, -0.25), "top_logprobs": top}
            yield TokenEvent(
                chr(token),
                token,
                "length" if last else None,
                b"\x01" * 8 if last else None,
                logprob,
                self.cached_tokens if last else 0,
            )

    async def embed(self, request: EmbeddingInput) -> tuple[list[list[float]], int]:
        raise EngineError("not an embedding model")

    def final_hidden_states(self, token_ids: list[int]) -> object:
        return None


def fake_logprob(token: int, logprob: float) -> dict[str, object]:
    return {"token": chr(token), "bytes": [token], "logprob": logprob}


@dataclass
class FakeProvider:
    """A real ProviderService and app for one address, in process."""

    tmp: Path
    engine: FakeEngine = field(default_factory=FakeEngine)
    price_in: int = 200_000
    price_out: int = 600_000
    credit_limit: int = 1_000_000
    published_credit_limit: int | None = None  # what /v1/info says (defaults to the real one)
    deposit: int = 10_000_000
    service_class: type[ProviderService] = ProviderService  # a cheat's class (allmende.testing.cheats)

    def __post_init__(self) -> None:
        self.key = os.urandom(32)
        self.address = Account.from_key(self.key).address
        self.x25519 = X25519PrivateKey.generate()
        self.store = ProviderStore(self.tmp / f"{self.address}.db")
        self.gate = PaymentGate(
            self.store,
            VOUCHERS,
            self.address,
            lambda _: ChannelRecord(GATEWAY, self.address, self.deposit, 0, 0, 0),
            policy=CreditPolicy(credit_limit=self.credit_limit),
        )
        model = ServedModel(self.engine, self.price_in, self.price_out)  # type: ignore[arg-type]
        served = {self.engine.model_id: model}
        self.service = self.service_class(self.key, self.x25519, served, self.store, self.gate, RECEIPTS)
        self.app = create_app(self.service, CHAIN_ID)
        self.url = f"http://{self.address.lower()}.test"

    def entry(self, offer_price_out: int | None = None) -> ProviderEntry:
        limit = self.published_credit_limit if self.published_credit_limit is not None else self.credit_limit
        raw: dict[str, Any] = {"credit_limit": str(limit), "load": {"max_in_flight": 64}}
        info = ProviderInfo(self.address, public_key_bytes(self.x25519), CHAIN_ID, [], raw)
        price_out = self.price_out if offer_price_out is None else offer_price_out
        model_id = self.engine.model_id
        offer = Offer(model_id, "fake", "generate", self.price_in, price_out, self.engine.context_length)
        return ProviderEntry(self.address, self.url, info, 10**21, {model_id: offer})


class Hosts(httpx.AsyncBaseTransport):
    """Routes each request to the app of the provider whose host it names; `dead` hosts refuse."""

    def __init__(self, providers: list[FakeProvider]) -> None:
        self.apps = {httpx.URL(p.url).host: httpx.ASGITransport(app=p.app) for p in providers}
        self.dead: set[str] = set()
        self.hits: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.hits[host] = self.hits.get(host, 0) + 1
        if host in self.dead:
            raise httpx.ConnectError("connection refused", request=request)
        # a real hop suspends the caller until the reply comes, so other requests run meanwhile;
        # an app in process may answer without ever suspending
        await asyncio.sleep(0)
        return await self.apps[host].handle_async_request(request)


@dataclass
class Network:
    service: GatewayService
    store: GatewayStore
    providers: list[FakeProvider]
    hosts: Hosts

    def kill(self, provider: FakeProvider) -> None:
        self.hosts.dead.add(httpx.URL(provider.url).host)


def network(tmp: Path, providers: list[FakeProvider], entries: list[ProviderEntry] | None = None) -> Network:
    store = GatewayStore(tmp / "gateway.db")
    for i, provider in enumerate(providers):
        store.put_channel(provider.address, bytes([i + 1]) * 32, provider.deposit)
    contracts = SimpleNamespace(
        client=SimpleNamespace(address=GATEWAY), channels=SimpleNamespace(voucher_domain=lambda: VOUCHERS)
    )
    payments = Payments(store, contracts, GATEWAY_KEY)  # type: ignore[arg-type]
    directory = Directory(contracts, httpx.Client())  # type: ignore[arg-type]
    directory.install(entries if entries is not None else [p.entry() for p in providers])
    for entry in directory.entries():
        for model_id, offer in entry.offers.items():
            entry.stats[model_id] = ProviderStats(entry.address, offer.price_out, capacity=64)
    hosts = Hosts(providers)
    http = httpx.AsyncClient(transport=hosts, timeout=30)
    service = GatewayService(directory, payments, Router(rng=random.Random(0)), RECEIPTS, http)
    return Network(service, store, providers, hosts)

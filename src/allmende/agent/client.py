"""An agent that pays for itself: the gateway's job (providers found on chain, routing,
channels opened and vouchers signed from the agent's own key, requests sealed end to end,
every receipt checked, failover) in the agent's own process, as an httpx transport for the
official `openai` (and `anthropic`) clients. No gateway, operator, account or API key.

    agent = Agent(key="0x…" or a keystore path or devnet:N, network="http://chain:8545")
    client = OpenAI(base_url=agent.base_url, api_key="unused", http_client=agent.http_client())

A model no provider holds whole (pipeline stages, `allmende up --stages N`) is served through a
chain of stage providers when named in `stage_models` (its tokenizer loads here, no weights):
each stage is paid from the agent's own channels and its every call's receipt checked.

The agent trusts the chain (the contracts it checks at `network`, exactly as a joining
provider does) and its own key; it checks each provider's signed /v1/info against the chain,
each receipt's signature, request, text and price (usage × the offer on chain), and it
pays at most what the receipts show. Its spending policy (agent.policy) is checked before
anything is signed. Its channels, vouchers and receipts live in SQLite in its state dir;
`close()` asks every channel to close, `withdraw()` takes the unspent deposits back after
the close delay.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute

from allmende.agent.policy import Budget, SpendingCapReached, SpendingPolicy
from allmende.agent.transport import StreamingASGITransport, SyncBridge
from allmende.api import messages as messages_api
from allmende.api import responses as responses_api
from allmende.api.canonical import checked
from allmende.api.directory import Directory
from allmende.api.protocol import InvalidParameter
from allmende.api.upstream import AiohttpUpstream
from allmende.chain import ChainClient, Contracts
from allmende.chain.errors import ContractReverted
from allmende.chain.keys import load_key
from allmende.chain.network import resolve_network
from allmende.core.errors import AllmendeError, InvalidInput
from allmende.core.routing import Router, RoutingPolicy
from allmende.engine.base import Kind
from allmende.gateway.app import create_app
from allmende.gateway.errors import NoProvider
from allmende.gateway.service import GatewayService
from allmende.gateway.serving import GatewayLimits
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.store import GatewayStore

BASE_URL = "http://agent.allmende/v1"  # never resolved: the transport answers in process
# path → (request kind, the chat body it is served as, for the translated APIs)
SERVED: dict[str, tuple[Kind, Callable[[dict[str, Any]], dict[str, Any]] | None]] = {
    "/v1/chat/completions": ("chat", None),
    "/v1/completions": ("completion", None),
    "/v1/embeddings": ("embedding", None),
    "/v1/responses": ("chat", lambda b: responses_api.chat_body(responses_api.parse_responses(b))),
    "/v1/messages": ("chat", lambda b: messages_api.chat_body(messages_api.parse_messages(b))),
}
REFRESH_EVERY = 2.0  # seconds between looks at the chain for providers and offers


def agent_key(key: bytes | str | None) -> bytes:
    """The agent's private key: bytes, 0x-hex, a keystore file (password in
    ALLMENDE_PASSWORD), devnet:N, or None for ALLMENDE_AGENT_KEY (any of those forms)."""
    spec: bytes | str | None = key if key is not None else os.environ.get("ALLMENDE_AGENT_KEY")
    if spec is None:
        raise InvalidInput("no key: pass key=… or set ALLMENDE_AGENT_KEY (0x-hex, a keystore file or devnet:N)")
    if isinstance(spec, bytes):
        return spec
    if spec.startswith("0x") and len(spec) == 66:
        try:
            return bytes.fromhex(spec[2:])
        except ValueError:
            raise InvalidInput("the agent key is not 32 bytes of hex") from None
    return load_key(spec, os.environ.get("ALLMENDE_PASSWORD"))


def served_first(app: FastAPI) -> FastAPI:
    """The API's POST routes moved ahead of the rest (the explorer's pages and static files,
    /healthz, /v1/models…): the router tries its routes in order, and an agent's requests
    are these; no other route has their paths, so each request still reaches the same one."""
    routes = app.router.routes
    first = [r for r in routes if isinstance(r, APIRoute) and r.path in SERVED and "POST" in (r.methods or ())]
    routes[:] = first + [r for r in routes if r not in first]
    return app


class Agent:
    """One agent's wallet on one network (see the module doc)."""

    def __init__(
        self,
        key: bytes | str | None = None,
        network: str | None = None,
        *,
        rpc: str | None = None,
        state_dir: Path | None = None,
        policy: SpendingPolicy | None = None,
        deposit: int = 2_000_000,
        routing: RoutingPolicy | None = None,
        request_timeout: float = 120.0,
        stage_models: tuple[str, ...] = (),
    ) -> None:
        network = network or os.environ.get("ALLMENDE_NETWORK")
        if not network:
            raise InvalidInput("no network: pass network=URL (a chain's JSON-RPC or a gateway's) or ALLMENDE_NETWORK")
        self.key = agent_key(key)
        deployment = resolve_network(network, rpc)  # checked on chain: code, wiring, chain id
        self.contracts = Contracts(ChainClient(deployment.rpc_url, self.key), deployment)
        self.address = self.contracts.client.address
        folder = state_dir or Path(os.environ.get("ALLMENDE_STATE_DIR", ".allmende")) / "agents" / self.address
        self.store = GatewayStore(folder / "agent.db")
        self.payments = Payments(self.store, self.contracts, self.key, ChannelPolicy(deposit=deposit))
        self.directory = Directory(self.contracts, httpx.Client(timeout=5))
        self.directory.maybe_refresh()
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(request_timeout, connect=5))
        # requests to providers go by aiohttp, as a gateway process sends them: about 0.5 ms
        # less CPU per request than through httpx (api/upstream.py), and the same exceptions
        self.upstream = AiohttpUpstream(read=request_timeout, connect=5)
        self.service = GatewayService(
            self.directory,
            self.payments,
            Router(routing or RoutingPolicy()),
            self.contracts.registry.receipt_domain(),
            self.http,
            upstream=self.upstream,
        )
        if stage_models:  # chat models no provider holds whole: a chain of stage providers, each paid from this key
            from allmende.gateway.staged import StagedModels  # the tokenizers' ML stack only when asked

            staged = StagedModels.load(stage_models, self.contracts, self.directory, self.payments, self.http)
            self.service.staged = staged
        # no rate limit (its own requests) and no shape counts (it publishes them to no one)
        self.app = served_first(create_app(self.service, GatewayLimits(rate_limit=0, count_shapes=False)))
        self.budget = Budget(policy or SpendingPolicy(), self._spent_since)
        self._refreshed = time.monotonic()
        self._refresh_lock = threading.Lock()
        self._sync: SyncBridge | None = None

    base_url = BASE_URL

    # ------------------------------------------------------------- clients

    def async_http_client(self) -> httpx.AsyncClient:
        """For `AsyncOpenAI(base_url=agent.base_url, http_client=…)`."""
        transport = StreamingASGITransport(self.app, before=self._before)
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=None)

    def http_client(self) -> httpx.Client:
        """For `OpenAI(base_url=agent.base_url, http_client=…)`: the same, on a private event loop."""
        if self._sync is None:
            self._sync = SyncBridge(StreamingASGITransport(self.app, before=self._before))
        return httpx.Client(transport=self._sync, base_url=BASE_URL, timeout=None)

    # ------------------------------------------------------ money checks

    async def _before(self, request: httpx.Request) -> tuple[httpx.Request | httpx.Response, Callable[[], None]]:
        """The spending policy, before anything is signed; the directory kept fresh."""
        self._maybe_refresh()
        served = SERVED.get(request.url.path)
        if request.method != "POST" or served is None or self.budget.policy.unlimited:
            # nothing to check without a cap: the body is not parsed and priced twice (the app does it)
            return request, lambda: None
        raw = await request.aread()
        kind, translate = served
        try:
            body = json.loads(raw)
            request_sent = checked(kind, translate(body) if translate is not None else body)
            offer, most = self.service.most_cost(request_sent)
        except (ValueError, TypeError, AttributeError, InvalidParameter, AllmendeError):
            return request, lambda: None  # the app refuses it, in the API's own words, before paying
        try:
            hold = self.budget.hold(offer.name, offer.model_id, most)
        except SpendingCapReached as exc:
            error = {"message": str(exc), "type": "insufficient_quota", "param": None, "code": exc.code}
            return httpx.Response(402, json={"error": error}, request=request), lambda: None
        return request, lambda: self.budget.release(hold)

    def _spent_since(self, since: float, model_id: bytes | None) -> int:
        """Units paid since `since`, on `model_id` (None: on anything). A model served in stages
        is paid per stage (each receipt names its stage id): its stages' receipts count for it."""
        models = None if model_id is None else {model_id}
        if models is not None and self.service.staged is not None and model_id is not None:
            with contextlib.suppress(NoProvider):  # layouts never read: no stage was paid through them
                models |= self.service.staged.stage_ids(model_id)
        return sum(amount for model, amount in self.store.paid_since(since) if models is None or model in models)

    def _maybe_refresh(self) -> None:
        """Every REFRESH_EVERY seconds, a look at the chain for new providers and offers, on
        a thread of its own: no request waits for it (nor pays a hop to a worker thread),
        it runs on the directory it has. A price raised on chain meanwhile is refused in the
        receipt check (usage × the offer it knows), so the agent never pays above an offer it
        saw; the only risk of the lag is using an old, higher price for up to that long."""
        if time.monotonic() - self._refreshed < REFRESH_EVERY or not self._refresh_lock.acquire(blocking=False):
            return
        self._refreshed = time.monotonic()

        def refresh() -> None:
            try:
                self.directory.maybe_refresh()
            finally:
                self._refreshed = time.monotonic()
                self._refresh_lock.release()

        threading.Thread(target=refresh, name="allmende-agent-directory", daemon=True).start()

    # -------------------------------------------------------- the wallet

    def receipts(self) -> list[dict[str, Any]]:
        """Every receipt the agent checked and paid, as signed by the providers."""
        return [json.loads(receipt) for _, _, _, receipt in self.store.receipts()]

    def close(self) -> list[bytes]:
        """Settle up (every provider gets the voucher for all it answered: the agent pays
        exactly its receipts), then ask every channel to close: after the close delay the
        unspent deposit is the agent's again (`withdraw`)."""
        self.directory.maybe_refresh()
        urls = {e.address.lower(): e.url for e in self.directory.entries()}
        with httpx.Client(timeout=10) as http:
            self.payments.settle_up(urls, http)
        return self.payments.close_all()

    def withdraw(self, channel_ids: list[bytes]) -> int:
        """Take back what is left of closed channels whose close delay has passed; returns
        the units withdrawn."""
        token = self.contracts.stable
        before = token.balance_of(self.address)
        for channel_id in channel_ids:
            try:
                self.contracts.channels.withdraw(channel_id)
            except ContractReverted as exc:
                raise InvalidInput(f"channel 0x{channel_id.hex()} cannot be withdrawn yet: {exc.reason}") from None
        return int(token.balance_of(self.address) - before)

    async def aclose(self) -> None:
        """Close the connections to providers (for `async_http_client`'s users, in their loop)."""
        await self.upstream.aclose()

    def shutdown(self) -> None:
        if self._sync is not None:
            self._sync.run(self.upstream.aclose())
            self._sync.close()
            self._sync = None

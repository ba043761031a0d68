"""Starting a gateway: connect to the chain, discover providers, serve the OpenAI API."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from allmende.api.coalesce import http_protocol
from allmende.api.directory import Directory
from allmende.api.guard import GuardConfig
from allmende.api.upstream import AiohttpUpstream
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.errors import ChainError
from allmende.chain.network import PUBLIC_PATH, public_view
from allmende.core.errors import InvalidInput
from allmende.core.routing import Router, RoutingPolicy
from allmende.gateway.app import create_app
from allmende.gateway.relay import MAX_FRAME, WS_QUEUE, Relay
from allmende.gateway.service import GatewayService
from allmende.gateway.serving import GatewayLimits
from allmende.node.heap import freeze_startup_heap
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.store import GatewayStore

log = logging.getLogger("allmende.gateway")


@dataclass(frozen=True)
class GatewayConfig:
    rpc_url: str
    key: bytes
    deployments: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)
    channels: ChannelPolicy = field(default_factory=ChannelPolicy)
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    refresh_interval: float = 2.0  # seconds between looks at Registry events
    request_timeout: float = 120.0
    # chain endpoint published at /v1/network for nodes joining from other hosts (default rpc_url)
    public_rpc: str | None = None
    # this gateway's name or address as other hosts reach it (served as Host besides loopback and `host`)
    public_host: str | None = None
    # more Host names served (a DNS name, a reverse proxy's); everything else is refused (DNS rebinding)
    allowed_hosts: tuple[str, ...] = ()
    # origins (scheme://host[:port]) of web apps allowed to call the API from a browser (CORS)
    allowed_origins: tuple[str, ...] = ()
    # chat models served through chains of their pipeline stages (gateway/staged.py): their tokenizers are loaded
    stage_models: tuple[str, ...] = ()

    @property
    def guard(self) -> GuardConfig:
        return GuardConfig.serving(self.host, [self.public_host], self.allowed_hosts, self.allowed_origins)


def build(config: GatewayConfig) -> tuple[Any, Directory, Payments]:
    client = ChainClient(config.rpc_url, config.key)
    deployment = Deployment.load(config.deployments)
    contracts = Contracts(client, deployment)
    if config.limits.x402 is not None:
        require_eip3009(contracts)
    sync_http = httpx.Client(timeout=5)
    directory = Directory(contracts, sync_http)
    store = GatewayStore(config.state_dir / "gateway.db")
    payments = Payments(store, contracts, config.key, config.channels)
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(config.request_timeout, connect=5),
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
    )
    upstream = AiohttpUpstream(config.request_timeout, connect=5, max_connections=512)
    service = GatewayService(
        directory, payments, Router(config.routing), contracts.registry.receipt_domain(), http, upstream=upstream
    )
    if config.stage_models:
        from allmende.gateway.staged import StagedModels  # the ML tokenizers only when stages are served

        service.staged = StagedModels.load(config.stage_models, contracts, directory, payments, http)
    directory.maybe_refresh()

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(config.refresh_interval)
                await asyncio.to_thread(directory.maybe_refresh)
                payments.top_up_low_channels()  # starts its own threads; never blocks the loop
                if config.limits.x402 is not None:  # refunds that failed, sessions' vouchers to redeem
                    gate = await app.state.admission.x402(service)
                    await asyncio.to_thread(gate.upkeep)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        await http.aclose()
        await upstream.aclose()

    app = create_app(service, config.limits, config.guard)
    app.router.lifespan_context = lifespan
    network = public_view(deployment, config.public_rpc or config.rpc_url)
    # providers without inbound connections are reached through this gateway: a login names it
    # and its chain, staked providers only (a few unregistered ones), admitted like the API
    relay = Relay(relay_names(config), client.chain_id, lambda a: staked_provider(contracts, a), app.state.admission)
    relay.mount(app)

    @app.get(PUBLIC_PATH)
    async def network_view() -> dict[str, Any]:
        """Where this network's contracts are, for `allmende provider --network URL` (public, like the chain)."""
        return network

    return app, directory, payments


def require_eip3009(contracts: Contracts) -> None:
    """x402's `exact` scheme settles with the payment token's EIP-3009 transferWithAuthorization:
    a token without it (a real network's USDT, say) is refused before the gateway serves, rather
    than at the first paying request."""
    if not contracts.stable.supports_eip3009():
        address = contracts.stable.address
        raise InvalidInput(
            f"--x402: the payment token {address} on chain {contracts.client.chain_id} has no EIP-3009 "
            "transferWithAuthorization, which x402 payments settle with; serve without --x402 (API keys, channels) "
            "or deploy with a token that has it (USDC)"
        )


def relay_names(config: GatewayConfig) -> list[str]:
    """The `host:port`s providers may dial this gateway's relay at (what their login names)."""

    def at(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    names = [at(config.host, config.port)]
    if config.host in ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1"):
        names += [f"127.0.0.1:{config.port}", f"localhost:{config.port}"]
    for host in (config.public_host, *config.allowed_hosts):
        if not host:
            continue
        if host.rsplit(":", 1)[-1].isdigit() and (not host.startswith("[") or "]:" in host) and host.count(":") == 1:
            names.append(host)  # a name with its port
        else:  # reached on the gateway's port, or behind a proxy on the default ports
            names += [at(host.strip("[]"), port) for port in (config.port, 80, 443)]
    return names


def staked_provider(contracts: Contracts, address: str) -> bool:
    """A registered provider with stake (the relay holds its connection without limit)."""
    try:
        account = contracts.registry.account(address)
    except ChainError:
        return False
    return account.role == ROLE_PROVIDER and account.stake > 0


def serve(config: GatewayConfig) -> None:
    import uvicorn

    app, _, _ = build(config)
    freeze_startup_heap()  # built: keep full GC passes off the requests (node/heap.py)
    # a relay connection's frames: at most MAX_FRAME each, a few buffered before the relay reads them
    # http_protocol(): a response's headers and body in one write (api/coalesce.py)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_keep_alive=30,
                ws_max_size=MAX_FRAME, ws_max_queue=WS_QUEUE, http=http_protocol())  # fmt: skip

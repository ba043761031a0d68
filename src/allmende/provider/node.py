"""Starting a provider: load models, register them, stake and publish offers (all
idempotent on restart), then serve the HTTP API with the settlement loop beside it.

Who registers models: a model's owner normally registers it (`Models.register`)
before anyone serves it. A provider that serves a model nobody has registered
registers it itself when started with `register_models=True` (the default for the
devnet), becoming its owner and royalty receiver; otherwise it serves the model
without royalties until the owner registers it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from rich.progress import Progress

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.errors import ChainError
from allmende.core.envelope import public_key_bytes
from allmende.engine import Engine, load_engine
from allmende.provider.app import Limits, create_app
from allmende.provider.payments import CreditPolicy, PaymentGate
from allmende.provider.service import ProviderService, ServedModel
from allmende.provider.settlement import Settlement, SettlementPolicy
from allmende.provider.store import ProviderStore

log = logging.getLogger("allmende.provider")


# Wrappers applied to every engine a provider loads, in order: a hook for test helpers
# (allmende.testing.cheats fills it to make a provider cheat); empty in production.
ENGINE_WRAPPERS: list[Callable[[Engine], Engine]] = []
# Called with the provider's service and contracts once they exist: the same kind of hook
# (allmende.testing.cheats uses it for a provider that tries to recognise audits).
SERVICE_HOOKS: list[Callable[[ProviderService, Contracts], None]] = []


@dataclass(frozen=True)
class ModelOffer:
    """A model this provider serves and the prices it offers it at (published on chain)."""

    name: str  # smollm2-135m-instruct, allmende:tiny, minilm, a .gguf file, a hub id or a folder
    price_in: int  # payment-token units per 1M input tokens
    price_out: int  # ... per 1M output tokens


@dataclass(frozen=True)
class ProviderConfig:
    rpc_url: str
    key: bytes
    deployments: Path
    models: list[ModelOffer]
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 9000
    public_url: str | None = None  # endpoint published on chain (default http://host:port)
    stake: int | None = None  # ALM to stake (default: top up to the minimum)
    register_models: bool = True
    license: str = "Apache-2.0"
    royalty_bps: int = 0
    max_concurrency: int = 16  # sequences in one model's batch at once; more wait for a free slot
    engine: str = "transformers"  # backend of generative models: "transformers" or "llamacpp" (GGUF)
    stream_tokens_per_s: float | None = None  # per-stream token rate cap (None = as fast as it goes)
    # fault injection for testing validators: serve int8-quantised weights or skip a layer while
    # claiming the original model id ("int8" | "skip-layer"); never set in production
    credit: CreditPolicy = field(default_factory=CreditPolicy)
    settlement: SettlementPolicy = field(default_factory=SettlementPolicy)
    limits: Limits = field(default_factory=Limits)

    @property
    def endpoint(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def load_x25519(path: Path) -> X25519PrivateKey:
    """The node's long-lived X25519 key (kept across restarts, file mode 0600)."""
    if path.exists():
        return X25519PrivateKey.from_private_bytes(path.read_bytes())
    key = X25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return key


@dataclass
class ProviderNode:
    config: ProviderConfig
    contracts: Contracts
    service: ProviderService
    settlement: Settlement
    store: ProviderStore


def prepare(config: ProviderConfig, show_progress: bool = True) -> ProviderNode:
    client = ChainClient(config.rpc_url, config.key)
    contracts = Contracts(client, Deployment.load(config.deployments))
    me = client.address

    served: dict[bytes, ServedModel] = {}
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("loading models", total=len(config.models))
        for spec in config.models:
            progress.update(task, description=f"loading {spec.name}")
            engine = load_engine(spec.name, config.max_concurrency, config.engine)
            for wrap in ENGINE_WRAPPERS:
                engine = wrap(engine)
            served[engine.model_id] = ServedModel(engine, spec.price_in, spec.price_out)
            progress.advance(task)

    for model_id, model in served.items():
        if contracts.models.owner_of(model_id) is None and config.register_models:
            try:
                contracts.models.register(model_id, config.license, config.royalty_bps, metadata_uri=model.engine.name)
                log.info("registered model %s as 0x%s", model.engine.name, model_id.hex())
            except ChainError:
                if contracts.models.owner_of(model_id) is None:  # not a lost race with another node
                    raise

    x25519 = load_x25519(config.state_dir / "x25519.key")
    x_pub = public_key_bytes(x25519)
    account = contracts.registry.account(me)
    minimum = contracts.params.get("min_provider_stake")
    add = config.stake if config.stake is not None else max(0, minimum - account.stake)
    if add:
        contracts.token.ensure_allowance(contracts.registry.address, add)
    if account.role == 0 or add or account.endpoint != config.endpoint or account.x25519_key != x_pub:
        contracts.registry.register(ROLE_PROVIDER, config.endpoint, x_pub, add)
    for model_id, model in served.items():
        offer = contracts.registry.offer(me, model_id)
        if not offer.active or (offer.price_in, offer.price_out) != (model.price_in, model.price_out):
            contracts.registry.set_offer(model_id, model.price_in, model.price_out)

    store = ProviderStore(config.state_dir / "provider.db")
    gate = PaymentGate(store, contracts.channels.voucher_domain(), me, contracts.channels.channel, policy=config.credit)
    service = ProviderService(
        config.key, x25519, served, store, gate, contracts.registry.receipt_domain(), config.stream_tokens_per_s
    )
    for hook in SERVICE_HOOKS:
        hook(service, contracts)
    settlement = Settlement(store, contracts.channels, config.settlement)
    return ProviderNode(config, contracts, service, settlement, store)


def build_app(node: ProviderNode) -> Any:
    interval = node.config.settlement.interval

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await asyncio.to_thread(node.settlement.tick)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    app = create_app(node.service, node.contracts.client.chain_id, node.config.limits)
    app.router.lifespan_context = lifespan
    return app


def serve(config: ProviderConfig) -> None:
    import uvicorn

    node = prepare(config)
    uvicorn.run(build_app(node), host=config.host, port=config.port, log_level="warning", timeout_keep_alive=30)

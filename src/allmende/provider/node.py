"""Starting a provider: load models, register them, stake and publish offers (all
idempotent on restart), then serve the HTTP API with the settlement loop beside it.

Who registers models: a model's author registers it (`Models.register`, `allmende
models register`) before anyone serves it, and is its owner and royalty receiver. A
provider never takes that place by default: a model nobody has registered is served
unregistered (no owner, no royalty, no name: gateways list it and users ask for it by
its id), and a warning says so. Only with `claim_models=True` (`--claim-models`, a
devnet convenience for models the operator authored or that nobody will claim) does it
register such a model itself, becoming its owner. A model someone else registered is
never touched, flag or not.

Names: gateways list and resolve a model by the name its owner set in `Models`, never
by what a provider calls it. A provider that owns a model without a name names it
after what it was loaded as (`allmende:tiny`, `minilm`, `smollm2-135m-instruct`, a hub
id), lower-cased; a folder or file path is no name, and a name another model already
holds stays with that model. Either way the model is still served, and asked for by its
id (`model="0x…"`) until its owner names it (`allmende models name`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from eth_account import Account
from eth_utils import to_checksum_address
from fastapi.responses import JSONResponse
from rich.progress import Progress

from allmende.api.client import fetch_info
from allmende.api.coalesce import http_protocol
from allmende.api.guard import JSON, GuardConfig
from allmende.api.stages import MEDIA_TYPE as STAGE_MEDIA_TYPE
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.errors import ChainError
from allmende.chain.names import name_model
from allmende.core.envelope import public_key_bytes
from allmende.core.errors import InvalidInput
from allmende.core.stages import StagePrice
from allmende.engine import Engine, load_engine
from allmende.node.heap import freeze_startup_heap
from allmende.node.net import bind_socket
from allmende.provider.app import Limits, create_app
from allmende.provider.cases import OwnCases
from allmende.provider.payments import CreditPolicy, PaymentGate
from allmende.provider.relay import relayed_endpoint, serve_relayed
from allmende.provider.service import ProviderService, ServedModel
from allmende.provider.settlement import Settlement, SettlementPolicy
from allmende.provider.stage_app import StageSigner
from allmende.provider.store import ProviderStore
from allmende.provider.watch import ChainClock, CloseWatcher

if TYPE_CHECKING:
    from allmende.engine.stages import StageBackend

log = logging.getLogger("allmende.provider")


# Wrappers applied to every engine a provider loads, in order: a hook for test helpers
# (allmende.testing.cheats fills it to make a provider cheat); empty in production.
ENGINE_WRAPPERS: list[Callable[[Engine], Engine]] = []
# Called with the provider's service and contracts once they exist: the same kind of hook
# (allmende.testing.cheats uses it for a provider that tries to recognise audits).
SERVICE_HOOKS: list[Callable[[ProviderService, Contracts], None]] = []
# the serving class; allmende.testing.cheats swaps in one that inflates its receipts
SERVICE_CLASS: type[ProviderService] = ProviderService


@dataclass(frozen=True)
class ModelOffer:
    """A model this provider serves and the prices it offers it at (published on chain)."""

    name: str  # smollm2-135m-instruct, allmende:tiny, minilm, a .gguf file, a hub id or a folder
    price_in: int  # payment-token units per 1M input tokens
    price_out: int  # ... per 1M output tokens


def backend_of(engine: Engine) -> str:
    """What runs a model, for the operator's log: llama.cpp with its weights and threads, or
    transformers."""
    from allmende.engine.llamacpp import LlamaCppEngine

    if isinstance(engine, LlamaCppEngine):
        threads = f"{engine.threads} thread{'' if engine.threads == 1 else 's'}"
        if engine.rpc is not None:
            servers = ", ".join(engine.rpc.endpoints)
            threads += f"; {engine.local_layers} layers here, the others on RPC servers {servers}"
        return f"llama.cpp ({engine.weights} weights, {threads})"
    return "transformers"


@dataclass(frozen=True)
class StageServing:
    """Serve stage `index` of an even split of the model into `stages` (`allmende provider
    --stage I/N`) instead of the whole model: only that slice of the weights is loaded, the
    stage id is offered on chain at `per_position` (every stage) and `per_token` (the last),
    in the payment token's smallest unit, and calls are answered on the stage wire API."""

    index: int
    stages: int
    per_position: int = 1
    per_token: int = 1

    @classmethod
    def parse(cls, text: str, per_position: int = 1, per_token: int = 1) -> StageServing:
        """`I/N`, e.g. `1/3` (the middle of three stages, counted from 0)."""
        try:
            index, stages = (int(part) for part in text.split("/"))
        except ValueError:
            raise InvalidInput(f"--stage {text!r}: expected INDEX/STAGES, e.g. 1/3") from None
        if not 0 <= index < stages:
            raise InvalidInput(f"--stage {text!r}: the index counts from 0 and is below the number of stages")
        if per_position < 0 or per_token < 0:
            raise InvalidInput("stage prices are not negative")
        return cls(index, stages, per_position, per_token)


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
    relay: str | None = None  # a gateway to dial out to instead of listening (no inbound connections)
    # Host names served besides loopback, `host` and the public URL's (allmende.api.guard)
    allowed_hosts: tuple[str, ...] = ()
    stake: int | None = None  # total ALM to keep bonded (default: the minimum in Params)
    claim_models: bool = False  # register unregistered served models with this node as owner (devnet)
    license: str = "Apache-2.0"  # license and royalty of the models it claims
    royalty_bps: int = 0
    max_concurrency: int = 16  # sequences in one model's batch at once; more wait for a free slot
    engine: str = "auto"  # backend of generative models: "transformers", "llamacpp" (GGUF) or "auto" (engine_for)
    llamacpp_threads: int | None = None  # llama.cpp's threads and weights (None: the engine's defaults)
    llamacpp_weights: str | None = None
    llamacpp_rpc: tuple[str, ...] | None = None  # ggml-rpc-servers the llama.cpp models' layers spread over
    stream_tokens_per_s: float | None = None  # per-stream token rate cap (None = as fast as it goes)
    # fault injection for testing validators: serve int8-quantised weights or skip a layer while
    # claiming the original model id ("int8" | "skip-layer"); never set in production
    credit: CreditPolicy = field(default_factory=CreditPolicy)
    settlement: SettlementPolicy = field(default_factory=SettlementPolicy)
    limits: Limits = field(default_factory=Limits)
    stage: StageServing | None = None  # one pipeline stage of the (single) model, not the whole model

    @property
    def endpoint(self) -> str:
        if self.relay:
            return relayed_endpoint(self.relay, Account.from_key(self.key).address)
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def guard(self) -> GuardConfig:
        """Who may call this node (allmende.api.guard): its names are loopback, `host`, the public URL's host
        and `allowed_hosts`; a node behind a relay gets requests without Host, which pass."""
        types = frozenset({JSON, STAGE_MEDIA_TYPE}) if self.stage else frozenset({JSON})
        return GuardConfig.serving(self.host, [self.public_url], self.allowed_hosts, content_types=types)


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


@dataclass(frozen=True)
class StakePlan:
    """What joining will do with the account's money, shown before anything is signed."""

    address: str
    eth: int  # wei, for gas
    alm: int  # ALM balance (18 decimals)
    staked: int  # ALM already bonded in the Registry
    minimum: int  # Params min_provider_stake
    add: int  # ALM this start stakes on top


def plan_stake(contracts: Contracts, target: int | None) -> StakePlan:
    """How much to stake so the bonded total reaches `target` (default: the minimum). Refuses
    (InvalidInput) a target below the minimum, an account without gas, or too little ALM."""
    client = contracts.client
    me = client.address
    eth = int(client.rpc(lambda: client.w3.eth.get_balance(to_checksum_address(me))))
    alm = contracts.token.balance_of(me)
    staked = contracts.registry.account(me).stake
    minimum = contracts.params.get("min_provider_stake")
    total = minimum if target is None else target
    if total < minimum:
        raise InvalidInput(f"--stake {_alm(total)} is below the network's minimum provider stake of {_alm(minimum)}")
    plan = StakePlan(me, eth, alm, staked, minimum, max(0, total - staked))

    def hint(token: str) -> str:
        if contracts.deployment.devnet:
            return f"; on a devnet: allmende faucet {me} --network <gateway or chain URL>"
        return f"; send it from a funded key: allmende transfer {me} AMOUNT --token {token} --key KEYSTORE"

    if eth == 0:
        raise InvalidInput(f"account {me} has no ETH to pay gas{hint('eth')}")
    if plan.add > alm:
        raise InvalidInput(
            f"account {me} holds {_alm(alm)} but staking {_alm(plan.add)} needs {_alm(plan.add - alm)} more"
            f"{hint('alm')}"
        )
    return plan


def _alm(amount: int) -> str:
    whole, frac = divmod(amount, 10**18)
    return f"{whole:,}.{frac // 10**14:04d} ALM"


@dataclass
class ProviderNode:
    config: ProviderConfig
    contracts: Contracts
    service: ProviderService
    settlement: Settlement
    store: ProviderStore
    x25519_public: bytes = b""
    watcher: CloseWatcher | None = None  # follows CloseRequested events (provider/watch.py)
    published: bool = False  # endpoint, stake and offers are on chain (after the reachability check)
    failure: BaseException | None = None  # why publishing failed; the node then stops
    server: Any = None  # the uvicorn server, told to exit when publishing fails
    withdrawn: bool = False  # its offers were withdrawn on the way out (before the socket closed)
    stage: tuple[StageBackend, StageSigner] | None = None  # the pipeline stage it serves, with its signer

    def offered(self) -> dict[bytes, tuple[int, int]]:
        """Every id this node offers on chain, with its (price in, price out): its models and its stage."""
        offers = {model_id: (m.price_in, m.price_out) for model_id, m in self.service.models.items()}
        if self.stage is not None:
            engine, signer = self.stage
            offers[engine.spec.stage_id] = (signer.price.per_position, signer.price.per_token)
        return offers


def prepare(config: ProviderConfig, show_progress: bool = True) -> ProviderNode:
    """Load the models, register unregistered ones and build the service. Nothing is staked or
    published here: `publish` does that once the node is listening and reachable."""
    client = ChainClient(config.rpc_url, config.key)
    contracts = Contracts(client, Deployment.load(config.deployments))

    served: dict[bytes, ServedModel] = {}
    stage = load_stage(config, contracts) if config.stage else None
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("loading models", total=len(config.models))
        for spec in config.models if stage is None else []:
            progress.update(task, description=f"loading {spec.name}")
            engine = load_engine(
                spec.name,
                config.max_concurrency,
                config.engine,
                threads=config.llamacpp_threads,
                weights=config.llamacpp_weights,
                rpc=config.llamacpp_rpc,
            )
            log.info("loaded %s (0x%s…) on %s", spec.name, engine.model_id.hex()[:12], backend_of(engine))
            for wrap in ENGINE_WRAPPERS:
                engine = wrap(engine)
            served[engine.model_id] = ServedModel(engine, spec.price_in, spec.price_out)
            progress.advance(task)

    for model_id, model in served.items():
        owner = contracts.models.owner_of(model_id)
        if owner is None and config.claim_models:
            try:
                contracts.models.register(model_id, config.license, config.royalty_bps, metadata_uri=model.engine.name)
                log.info("claimed model %s: registered 0x%s with this node as owner", model.engine.name, model_id.hex())
            except ChainError:
                if contracts.models.owner_of(model_id) is None:  # not a lost race with another node
                    raise
        elif owner is None:
            log.warning(
                "model %s (0x%s) is not registered on chain: served unregistered (no owner, no royalty, no name; "
                "asked for by its id). Its author registers it with `allmende models register`; "
                "`--claim-models` would register it to this node instead (devnet convenience)",
                model.engine.name,
                model_id.hex(),
            )
        elif owner != client.address:
            log.info("model %s (0x%s) is registered to %s", model.engine.name, model_id.hex(), owner)
        if contracts.models.owner_of(model_id) == client.address and not contracts.models.name_of(model_id):
            name_model(contracts, model_id, model.engine.name)

    x25519 = load_x25519(config.state_dir / "x25519.key")
    store = ProviderStore(config.state_dir / "provider.db")
    me = client.address
    clock = ChainClock()
    watcher = CloseWatcher(store, contracts.channels, clock)
    gate = PaymentGate(
        store,
        contracts.channels.voucher_domain(),
        me,
        contracts.channels.channel,
        policy=config.credit,
        clock=clock,
        watcher=watcher,
    )
    service = SERVICE_CLASS(
        config.key, x25519, served, store, gate, contracts.registry.receipt_domain(), config.stream_tokens_per_s
    )
    for hook in SERVICE_HOOKS:
        hook(service, contracts)
    settlement = Settlement(store, contracts.channels, config.settlement, clock)
    node = ProviderNode(config, contracts, service, settlement, store, public_key_bytes(x25519), watcher)
    node.stage = stage
    return node


def load_stage(config: ProviderConfig, contracts: Contracts) -> tuple[StageBackend, StageSigner]:
    """The stage `config.stage` names, of the one model configured: only its slice is read and
    checked against its hash. Its descriptor must be registered on chain, derived from the
    model by the model's owner (`allmende stage register`), or no gateway routes to it."""
    from allmende.engine import resolve_model
    from allmende.engine.stages import StageEngine, stage_of

    plan = config.stage
    assert plan is not None
    if len(config.models) != 1:
        raise InvalidInput("--stage serves a stage of one model: give exactly one --model")
    resolved = resolve_model(config.models[0].name)
    spec, tensors = stage_of(resolved.path, resolved.model_id, plan.stages, plan.index)
    engine = StageEngine(resolved.path, spec, tensors=tensors)
    owner = contracts.models.owner_of(spec.stage_id)
    if owner is None or owner != contracts.models.owner_of(spec.base):
        log.warning(
            "stage %s (blocks %d-%d) is not registered on chain by the model's owner: gateways will not route to it "
            "(the owner registers it with `allmende stage register`)",
            spec.stage_id_hex,
            spec.range.start,
            spec.range.end,
        )
    price = StagePrice(plan.per_position, plan.per_token)
    signer = StageSigner(config.key, contracts.registry.receipt_domain(), price)
    blocks, name = spec.range, config.models[0].name
    log.info("loaded blocks %d-%d of %s as stage %s", blocks.start, blocks.end, name, spec.stage_id_hex)
    return engine, signer


def check_reachable(node: ProviderNode, timeout: float = 20.0) -> None:
    """The endpoint about to be published must reach this very node: its /v1/info there is
    signed by this node's key (not some other server's, e.g. a gateway's at the same URL)."""
    url = node.config.endpoint.rstrip("/")
    me = node.contracts.client.address
    deadline = time.monotonic() + timeout
    problem = "no answer"
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                info = fetch_info(http, url)
                if info.address == me and info.x25519_key == node.x25519_public:
                    return
                problem = f"it answers as {info.address}, not this node ({me})"
                break
            except httpx.HTTPStatusError as exc:
                problem = f"it answers {exc.response.status_code} to GET /v1/info"
                if exc.response.status_code not in (502, 503, 504):
                    break  # some other server answers there
                # a relay (or proxy) in front of this node that has no connection to it yet:
                # this node's own connection to the relay may still be dialling, so try again
            except (ValueError, KeyError, TypeError, InvalidInput) as exc:
                problem = f"its /v1/info is not this node's: {exc}"
                break
            except httpx.HTTPError as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
            time.sleep(0.2)
    raise InvalidInput(
        f"the public URL {url} does not reach this node ({problem}); nothing was staked or registered. "
        + _reach_advice(node.config.host, url, node.config.relay)
    )


def _reach_advice(host: str, url: str, relay: str | None) -> str:
    """What to change: a node listening on loopback only cannot be reached at another address,
    whatever the port forwarding (`--host 0.0.0.0` was forgotten); otherwise the network path."""
    try:
        listens_locally = ipaddress.ip_address(host).is_loopback
    except ValueError:
        listens_locally = host == "localhost"
    target = urlsplit(url).hostname or ""
    try:
        remote = not ipaddress.ip_address(target).is_loopback
    except ValueError:
        remote = target != "localhost"
    if relay is None and listens_locally and remote:
        return (
            f"This node listens on {host} only, which other hosts cannot reach: start it with --host 0.0.0.0 "
            "(every interface) or the address of the interface that URL reaches"
        )
    return "Give --public-url with an address gateways can reach (check port forwarding and firewalls)"


def publish(node: ProviderNode) -> None:
    """Stake, register the endpoint and key, publish the offers (idempotent on restart)."""
    config, contracts = node.config, node.contracts
    me = contracts.client.address
    account = contracts.registry.account(me)
    minimum = contracts.params.get("min_provider_stake")
    target = config.stake if config.stake is not None else minimum
    add = max(0, target - account.stake)
    if add:
        contracts.token.ensure_allowance(contracts.registry.address, add)
    if account.role == 0 or add or account.endpoint != config.endpoint or account.x25519_key != node.x25519_public:
        contracts.registry.register(ROLE_PROVIDER, config.endpoint, node.x25519_public, add)
    offered = node.offered()
    for model_id, (price_in, price_out) in offered.items():
        offer = contracts.registry.offer(me, model_id)
        if not offer.active or (offer.price_in, offer.price_out) != (price_in, price_out):
            contracts.registry.set_offer(model_id, price_in, price_out)
    node.published = True
    bonded = _alm(account.stake + add)
    log.info("published %s with %d offers; %s bonded", config.endpoint, len(offered), bonded)


def withdraw_offers(node: ProviderNode) -> int:
    """On shutdown: remove this node's offers on chain, so gateways stop routing to it. The
    stake stays bonded; the next start publishes the offers again."""
    registry = node.contracts.registry
    me = node.contracts.client.address
    removed = 0
    for model_id in node.offered():
        if registry.offer(me, model_id).active:
            registry.remove_offer(model_id)
            removed += 1
    return removed


# after its offers are withdrawn, a stopping node serves this long more: a gateway routes by
# the directory it refreshed last (every 2 s), and a request it sends in that time is answered
STOP_DRAIN_S = 2.0


def stop_offers(node: ProviderNode, timeout: float = 20.0) -> None:
    """Withdraw the offers on the way out, at most `timeout` seconds, once; logged either way.
    Called on the first Ctrl-C/SIGTERM while the node still answers, so a gateway routing a
    request here in the meantime is served, not refused by a closed socket."""
    if node.withdrawn:
        return
    node.withdrawn = True
    done: list[int] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(withdraw_offers(node))
        except ChainError as exc:
            failed.append(exc)

    worker = threading.Thread(target=run, name="withdraw-offers", daemon=True)
    worker.start()
    worker.join(timeout)
    if done:
        log.info("withdrew %d offers on chain; gateways stop routing here", done[0])
    else:
        why = failed[0] if failed else f"no receipt within {timeout:.0f} s"
        log.warning("could not withdraw the offers on chain: %s", why)


def build_app(node: ProviderNode) -> Any:
    interval = node.config.settlement.interval

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        async def loop() -> None:
            cases: OwnCases | None = None  # fraud cases against this node, told in its log
            while True:
                try:
                    if cases is None:
                        cases = await asyncio.to_thread(OwnCases, node.contracts)
                    else:
                        await asyncio.to_thread(cases.tick)
                except ChainError as exc:
                    log.debug("fraud cases not read: %s", exc)
                await asyncio.sleep(interval)
                await asyncio.to_thread(node.settlement.tick)

        async def watch() -> None:
            """Closes seen in time: scan for them, and redeem a closing channel at once."""
            watcher = node.watcher
            if watcher is None:
                return
            failing = False
            while True:
                try:
                    await asyncio.to_thread(watcher.tick)
                    if failing:
                        log.info("close watcher: the chain answers again (block %d)", watcher.synced_block)
                    failing = False
                    if node.settlement.closing_due():
                        await asyncio.to_thread(node.settlement.tick)
                except ChainError as exc:
                    if not failing:  # once per outage, not every interval
                        log.warning("close watcher: %s (retrying every %.0f s)", exc, node.config.credit.watch_interval)
                    failing = True
                await asyncio.sleep(node.config.credit.watch_interval)

        async def go_public() -> None:
            try:
                await asyncio.to_thread(check_reachable, node)
                await asyncio.to_thread(publish, node)
            except Exception as exc:  # reported by serve() once the server has stopped
                node.failure = exc
                if node.server is not None:
                    node.server.should_exit = True

        task = asyncio.create_task(loop())
        watching = asyncio.create_task(watch())
        publishing = asyncio.create_task(go_public())
        yield
        task.cancel()
        watching.cancel()
        publishing.cancel()
        if node.published and not node.withdrawn:  # not withdrawn yet: stopped by other means than a signal
            await asyncio.to_thread(stop_offers, node)

    config = node.config
    app = create_app(node.service, node.contracts.client.chain_id, config.limits, config.guard, node.stage)
    app.router.lifespan_context = lifespan
    gated = _health_after_publishing(app, node)
    gated.lifespan = lambda: lifespan(app)
    return gated


def _health_after_publishing(app: Any, node: ProviderNode) -> Any:
    """/healthz answers 503 until the node is on chain: whoever waits for a healthy provider
    (allmende up, tests) waits until gateways can find it."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz" and not node.published:
            state = "failed" if node.failure else "publishing"
            await JSONResponse({"ok": False, "status": state}, status_code=503)(scope, receive, send)
            return
        await app(scope, receive, send)

    return asgi


class _StopFlag:
    """What `build_app` sets to stop a relayed node (uvicorn's Server has the same attribute)."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    @property
    def should_exit(self) -> bool:
        return self.event.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self.event.set()


def serve_through_relay(config: ProviderConfig) -> None:
    """No listening socket: dial out to the relay and serve over that connection."""
    assert config.relay is not None
    node = prepare(config)
    app = build_app(node)
    freeze_startup_heap()

    async def main() -> None:
        stop = asyncio.Event()
        node.server = _StopFlag(stop)
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        async def withdraw_then_stop() -> None:
            if node.published:  # still connected to the relay while the offers go
                await asyncio.to_thread(stop_offers, node)
                with contextlib.suppress(TimeoutError):  # served for a gateway refresh more
                    await asyncio.wait_for(stop.wait(), STOP_DRAIN_S)
            stop.set()

        def on_signal() -> None:
            if stopping:  # a second signal: stop now
                stop.set()
                return
            stopping.append(asyncio.ensure_future(withdraw_then_stop()))

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        async with app.lifespan():
            await serve_relayed(app, config.relay or "", node.service.account, stop, node.contracts.client.chain_id)

    asyncio.run(main())
    if node.failure is not None:
        raise node.failure
    log.info("stopped")


def serve(config: ProviderConfig, sock: socket.socket | None = None) -> None:
    """Listen first, then load and build, then publish once reachable; Ctrl-C withdraws the offers."""
    import uvicorn

    if config.relay:
        serve_through_relay(config)
        return
    sock = sock or bind_socket(config.host, config.port)
    node = prepare(config)

    class WithdrawFirst(uvicorn.Server):
        """The first Ctrl-C/SIGTERM withdraws the offers while the node still listens and serves,
        then stops the server (uvicorn closed the socket first: a gateway that routed here before
        the withdrawal was on chain got a refused connection, a 502 counted against the node); a
        second signal stops at once."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if node.withdrawn or not node.published:
                super().handle_exit(sig, frame)
                return

            def withdraw_then_exit() -> None:
                stop_offers(node)
                time.sleep(STOP_DRAIN_S)  # a gateway still routing by its last refresh is served
                super(WithdrawFirst, self).handle_exit(sig, frame)

            threading.Thread(target=withdraw_then_exit, name="stopping", daemon=True).start()

    # http_protocol(): a response's headers and body in one write (api/coalesce.py)
    served = uvicorn.Config(build_app(node), log_level="warning", timeout_keep_alive=30, http=http_protocol())
    server = WithdrawFirst(served)
    node.server = server
    freeze_startup_heap()  # models loaded, app built: keep full GC passes off the requests (node/heap.py)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the shutdown is done
        log.info("stopped")
    if node.failure is not None:
        raise node.failure

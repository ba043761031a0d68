"""A local network's processes, started and stopped as one: anvil with the contracts
deployed and the devnet accounts funded, N providers, the gateway and M validators. What
`allmende up` runs; the command itself only parses options, prints and handles signals.

    plan = DevnetPlan(root, providers=2, models=["allmende:tiny"])
    plan.check()                  # everything wrong with the options, before anything starts
    devnet = Devnet(plan, on_step=print)
    network = devnet.start()      # NetworkInfo, also written to <root>/network.json
    devnet.exited()               # nodes that have exited since the last call
    devnet.stop()                 # every node at once (each withdraws its offers), then anvil
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, devnet_accounts, free_port
from allmende.core.errors import InvalidInput
from allmende.engine import EMBEDDING_ALIASES, resolve_model
from allmende.node.supervisor import (
    NetworkInfo,
    Node,
    NodeFailed,
    NodeRow,
    ProviderRow,
    allmende_command,
    load_network,
    save_network,
    spawn,
    stop_together,
)

GATEWAY_ACCOUNT = 9  # the devnet account the gateway pays from
STAGE_AUDIT_DEPOSIT = 1_000_000  # dUSD units per channel a devnet validator opens to a stage provider it audits
MAX_NODES = 8  # providers + validators: anvil funds 10 accounts, one deploys, one is the gateway's


def default_provider_command(index: int) -> list[str]:
    """How provider `index` (1-based) is started."""
    return allmende_command("provider")


@dataclass
class DevnetPlan:
    """What `allmende up` was asked to start (see its --help for each option)."""

    root: Path  # state dir: logs, databases, network.json
    providers: int = 2
    models: list[str] = field(default_factory=list)
    port: int = 8000  # the gateway's
    rpc_port: int = 8545  # anvil's
    provider_port: int = 9001  # the first provider's; 0 = any free ports
    stream_tokens_per_s: float | None = None
    provider_options: list[str] = field(default_factory=list)
    gateway_options: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    allow_origins: list[str] = field(default_factory=list)
    validators: int = 0
    validator_options: list[str] = field(default_factory=list)
    claim_models: bool = False
    public_host: str | None = None
    provider_command: Callable[[int], list[str]] = default_provider_command  # a hook for allmende.testing.cheats
    stages: int = 0  # > 0: the chat model split into this many pipeline stages, provider i serving stage i % stages
    provider_stages: list[int] = field(default_factory=list)  # the stage of each provider, instead of i % stages

    def stage_of(self, index: int) -> int:
        """The stage provider `index` (from 0) serves: the one named for it, else index mod stages."""
        return self.provider_stages[index] if self.provider_stages else index % self.stages

    @property
    def chat_models(self) -> list[str]:
        return [m for m in self.models if m.lower() not in EMBEDDING_ALIASES]

    def check_counts(self) -> None:
        """InvalidInput for node counts this devnet cannot fund."""
        if not 0 <= self.providers <= MAX_NODES:
            raise InvalidInput(f"--providers must be between 0 and {MAX_NODES}")
        if self.stages < 0 or (self.stages and self.providers < self.stages):
            raise InvalidInput(f"--stages {self.stages} needs at least as many providers (one per stage at least)")
        if self.stages and len(self.chat_models) != 1:
            raise InvalidInput("--stages splits one chat model: give one --model (default: smollm2-135m-instruct)")
        if self.provider_stages:
            self._check_provider_stages()
        if self.validators < 0 or self.providers + self.validators > MAX_NODES:
            raise InvalidInput(f"providers + validators must be at most {MAX_NODES} (anvil funds 10 accounts)")

    def _check_provider_stages(self) -> None:
        """One stage per provider, each inside the split, every stage served by one at least."""
        given = ",".join(map(str, self.provider_stages))
        if not self.stages:
            raise InvalidInput(f"--provider-stages {given} names stages: give --stages as well")
        if len(self.provider_stages) != self.providers:
            raise InvalidInput(f"--provider-stages {given} names {len(self.provider_stages)} stages for "
                               f"{self.providers} providers: one per provider")  # fmt: skip
        outside = [s for s in self.provider_stages if not 0 <= s < self.stages]
        if outside:
            raise InvalidInput(f"--provider-stages {given}: stage {outside[0]} is not one of 0..{self.stages - 1}")
        missing = sorted(set(range(self.stages)) - set(self.provider_stages))
        if missing:
            raise InvalidInput(f"--provider-stages {given}: no provider serves stage {missing[0]}")

    def check(self, checking_models: Callable[[], ContextManager[object]] = contextlib.nullcontext) -> None:
        """Everything that can be wrong before anything starts (InvalidInput): the counts, a
        network still running on this state dir, busy or overlapping ports, unknown models
        (`checking_models` wraps the model check, which converts GGUF files once)."""
        self.check_counts()
        live = running_up(self.root)
        if live is not None:
            raise InvalidInput(f"a network started by `allmende up` is still running on {self.root} (anvil pid {live})")
        wanted = {"gateway --port": self.port, "anvil --rpc-port": self.rpc_port}
        if self.provider_port:
            wanted.update({f"provider-{i + 1} port": self.provider_port + i for i in range(self.providers)})
        first_validator, _ = _port_option(self.validator_options)
        if first_validator:
            wanted.update({f"validator-{j + 1} port": first_validator + j for j in range(self.validators)})
        if len(set(wanted.values())) < len(wanted):
            raise InvalidInput(f"the ports overlap: {wanted}")
        busy = [f"{what} {number}" for what, number in wanted.items() if not port_free(number)]
        if busy:
            raise InvalidInput(f"already in use: {', '.join(busy)} (another `allmende up`? choose other ports)")
        if self.providers or self.validators:
            with checking_models():
                for m in self.models:
                    resolve_model(m)


class Devnet:
    """The processes of one `DevnetPlan`. `on_step(what)` is told each step as it completes;
    `status(what)` wraps each long wait (a spinner in the CLI)."""

    def __init__(
        self,
        plan: DevnetPlan,
        on_step: Callable[[str], None] = lambda what: None,
        status: Callable[[str], ContextManager[object]] = lambda what: contextlib.nullcontext(),
    ) -> None:
        self.plan = plan
        self.on_step = on_step
        self.status = status
        self.run_dir = plan.root / "run"
        self.accounts: list[DevnetAccount] = devnet_accounts(10)
        self.anvil: Anvil | None = None
        self.children: list[Node] = []
        self._exited: list[Node] = []

    # ------------------------------------------------------------ start

    def start(self) -> NetworkInfo:
        """Start everything, in order, each checked healthy before the next; the network's
        description is written to <root>/network.json. On any failure the caller stops it."""
        plan = self.plan
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.status("starting anvil and deploying contracts"):
            listen = "0.0.0.0" if plan.public_host else "127.0.0.1"
            self.anvil = Anvil(
                port=plan.rpc_port, log_file=self.run_dir / "anvil.log", host=listen, die_with_parent=True
            )
            deployer = ChainClient(self.anvil.url, self.accounts[0].key)
            deployment = deploy_all(deployer, fund=[a.address for a in self.accounts])
            deployments = self.run_dir / "deployments.json"
            deployment.save(deployments)
        self.on_step(f"chain {self.anvil.url} (chain id {deployment.chain_id}), contracts deployed")
        if plan.stages:
            with self.status(f"registering {plan.chat_models[0]} and its {plan.stages} stages"):
                self._register_stages(deployer, deployment)
            self.on_step(f"{plan.chat_models[0]} registered in {plan.stages} stages, owned by the deployer account")
        providers = self._start_providers(deployments)
        gateway, gateway_url = self._start_gateway(deployments)
        validators = self._start_validators(deployments, gateway_url)
        network: NetworkInfo = {
            "rpc_url": self.anvil.url,
            "anvil_pid": self.anvil.process.pid,
            "chain_id": deployment.chain_id,
            "contracts": {name: info["address"] for name, info in deployment.contracts.items()},
            "deployments": str(deployments),
            "gateway_url": gateway_url + "/v1",
            "explorer_url": gateway_url + "/",
            "gateway_pid": gateway.pid,
            "providers": providers,
            "validators": validators,
            "accounts": {
                "deployer_and_treasury": self.accounts[0].address,
                "gateway_payer": self.accounts[GATEWAY_ACCOUNT].address,
                "note": "anvil's well-known devnet accounts (public keys, devnet only)",
            },
            "up_pid": os.getpid(),
        }
        save_network(plan.root / "network.json", network)
        return network

    def _register_stages(self, deployer: ChainClient, deployment: Deployment) -> None:
        """The stage layout of the chat model on chain, as its owner registers it (`allmende
        stage register`): on this devnet the deployer account registers and names the model
        and registers its even split into `stages`, so every provider offers a stage of it."""
        from allmende.chain.names import name_model
        from allmende.chain.stages import register_layout
        from allmende.engine.stages import stage_layout

        model = self.plan.chat_models[0]
        resolved = resolve_model(model, progress=False)
        owner = Contracts(deployer, deployment)
        if owner.models.owner_of(resolved.model_id) is None:
            owner.models.register(resolved.model_id, "Apache-2.0", 0, metadata_uri=model)
            name_model(owner, resolved.model_id, model)
        register_layout(owner, stage_layout(resolved.path, resolved.model_id, self.plan.stages), "Apache-2.0")

    def _start_providers(self, deployments: Path) -> list[ProviderRow]:
        plan, rows, started = self.plan, list[ProviderRow](), list[Node]()
        assert self.anvil is not None
        for i in range(plan.providers):
            account = self.accounts[1 + i]
            port = plan.provider_port + i if plan.provider_port else free_port()
            log = self.run_dir / f"provider-{i + 1}.log"
            public = (  # other hosts reach it at the public address: it listens there and registers that
                ["--host", "0.0.0.0", "--public-url", f"http://{plan.public_host}:{port}"] if plan.public_host else []
            )
            args = [
                *plan.provider_command(i + 1),
                "--rpc", self.anvil.url, "--key", f"devnet:{account.index}", "--deployments", str(deployments),
                "--state-dir", str(self.run_dir / f"provider-{i + 1}"), "--port", str(port),
                "--redeem-interval", "10", *public,
                *(a for m in plan.models for a in ("--model", m)),
                *(["--stage", f"{plan.stage_of(i)}/{plan.stages}"] if plan.stages else []),
                *(["--claim-models"] if plan.claim_models and not plan.stages else []),
                *(["--stream-tokens-per-s", str(plan.stream_tokens_per_s)] if plan.stream_tokens_per_s else []),
                *plan.provider_options,
                *shared_threads(plan.models, plan.providers, plan.provider_options),
            ]  # fmt: skip
            child = spawn(f"provider-{i + 1}", args, log, f"http://127.0.0.1:{port}", die_with_parent=True)
            self.children.append(child)
            started.append(child)
            rows.append(
                {"address": account.address, "url": child.url or "", "models": plan.models, "pid": child.pid,
                 "log": str(log)}
            )  # fmt: skip
        with self.status(f"{plan.providers} providers loading models, staking and publishing offers"):
            for child in started:
                child.wait_healthy()
                self.on_step(f"{child.name} {child.url} on chain")
        return rows

    def _start_gateway(self, deployments: Path) -> tuple[Node, str]:
        plan = self.plan
        assert self.anvil is not None
        url = f"http://127.0.0.1:{plan.port}"
        public = (
            ["--host", "0.0.0.0", "--public-rpc", f"http://{plan.public_host}:{plan.rpc_port}",
             "--public-host", plan.public_host]
            if plan.public_host else []
        )  # fmt: skip
        gateway = spawn(
            "gateway",
            allmende_command(
                "gateway", "--rpc", self.anvil.url, "--key", f"devnet:{GATEWAY_ACCOUNT}", "--deployments",
                str(deployments), "--state-dir", str(self.run_dir / "gateway"), "--port", str(plan.port), *public,
                *(a for h in plan.allowed_hosts for a in ("--allowed-host", h)),
                *(a for o in plan.allow_origins for a in ("--allow-origin", o)),
                *(["--stage-model", plan.chat_models[0]] if plan.stages else []),
                *plan.gateway_options,
            ),
            self.run_dir / "gateway.log",
            url,
            die_with_parent=True,
        )  # fmt: skip
        self.children.append(gateway)
        with self.status("starting the gateway"):
            gateway.wait_healthy()
            try:  # it found every provider on chain and checked its /v1/info
                gateway.wait_healthy(60, ready=lambda health: health["providers"] >= plan.providers)
            except NodeFailed:
                raise NodeFailed("the gateway did not discover every provider within 60s") from None
        self.on_step(f"gateway {url}/v1 found {plan.providers} providers")
        return gateway, url

    def _start_validators(self, deployments: Path, gateway_url: str) -> list[NodeRow]:
        plan, rows, started = self.plan, list[NodeRow](), list[Node]()
        assert self.anvil is not None
        audited = plan.chat_models or ["allmende:tiny"]
        first_port, options = _port_option(plan.validator_options)  # --validator-option=--port=N: N, N+1, …
        for j in range(plan.validators):
            account = self.accounts[GATEWAY_ACCOUNT - 1 - j]  # from the top, below the gateway's account
            port = first_port + j if first_port else free_port()
            log = self.run_dir / f"validator-{j + 1}.log"
            public = (
                ["--host", "0.0.0.0", "--public-url", f"http://{plan.public_host}:{port}"] if plan.public_host else []
            )
            args = allmende_command(
                "validator", "--rpc", self.anvil.url, "--key", f"devnet:{account.index}",
                "--deployments", str(deployments), "--state-dir", str(self.run_dir / f"validator-{j + 1}"),
                "--port", str(port), *public, *(a for m in audited for a in ("--model", m)), "--gateway", gateway_url,
                # a staged model is audited stage by stage, directly, from the validator's own channels
                *(["--stage-deposit", str(STAGE_AUDIT_DEPOSIT)] if plan.stages else []), *options,
            )  # fmt: skip
            child = spawn(f"validator-{j + 1}", args, log, f"http://127.0.0.1:{port}", die_with_parent=True)
            self.children.append(child)
            started.append(child)
            rows.append({"address": account.address, "url": child.url or "", "pid": child.pid, "log": str(log)})
        if plan.validators:
            with self.status(f"starting {plan.validators} validators"):
                for child in started:
                    child.wait_healthy()
            # a vote weighs the stake held through the lookback (Params unbonding_period): on
            # this devnet the clock moves past it at once, so the validators' votes count
            chain = ChainClient(self.anvil.url, self.accounts[0].key)
            chain.increase_time(Contracts(chain, Deployment.load(deployments)).params.get("unbonding_period") + 1)
            self.on_step(f"{plan.validators} validators auditing")
        return rows

    # ------------------------------------------------------- run, stop

    def exited(self) -> list[Node]:
        """Nodes that have exited since the last call (each reported once)."""
        gone = [c for c in self.children if not c.alive() and c not in self._exited]
        self._exited += gone
        return gone

    def stop(self, timeout: float = 15) -> None:
        """Every node at once (each withdraws its offers or settles), then anvil. Idempotent."""
        stop_together(self.children, timeout=timeout)
        if self.anvil is not None:
            self.anvil.stop()


# --------------------------------------------------------------- helpers


def shared_threads(models: list[str], providers: int, provider_options: list[str]) -> list[str]:
    """Thread options that share this machine's cores out between `up`'s providers: torch's
    (`--torch-threads`, for models on transformers) and llama.cpp's (`--llamacpp-threads`, when
    a GGUF model runs on it). Both engines' threads wait for each other inside every operation
    (OpenMP in torch, a barrier per graph node in ggml), so two providers running a thread per
    core each stall one another: 4 concurrent SmolLM2 requests on transformers missed the
    gateway's 60 s deadline with 2 providers on 2 cores. Nothing the operator set is overridden."""
    from allmende.engine import engine_for

    options = " ".join(provider_options)
    share = str(max(1, len(os.sched_getaffinity(0)) // max(1, providers)))
    threads = [] if "--torch-threads" in options else ["--torch-threads", share]
    if "--llamacpp-threads" in options or re.search(r"--engine[= ]transformers\b", options):
        return threads
    if any(engine_for(m, "auto") == "llamacpp" for m in models):
        threads += ["--llamacpp-threads", share]
    return threads


def _port_option(options: list[str]) -> tuple[int | None, list[str]]:
    """(the port in `--port=N` / `--port N` among `options`, the other options)."""
    rest, port, i = [], None, 0
    try:
        while i < len(options):
            option = options[i]
            if option.startswith("--port="):
                port = int(option.split("=", 1)[1])
            elif option == "--port" and i + 1 < len(options):
                port, i = int(options[i + 1]), i + 1
            else:
                rest.append(option)
            i += 1
    except ValueError:
        raise InvalidInput(f"--validator-option --port needs a number: {options}") from None
    return port, rest


def keep_previous_run(root: Path) -> Path | None:
    """Move <root>/run of an earlier `up` aside (to run-YYYYmmdd-HHMMSS) and make a new, empty
    one. anvil keeps no state between runs, so a new run is a new chain and the old node state
    refers to nothing on it; its logs and databases are kept, not overwritten."""
    run_dir = root / "run"
    kept = None
    if run_dir.exists() and any(run_dir.iterdir()):
        kept = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while kept.exists():
            kept, suffix = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}", suffix + 1
        run_dir.rename(kept)
    run_dir.mkdir(parents=True, exist_ok=True)
    described = root / "network.json"  # describes the old chain
    if described.exists():
        if kept is not None:
            described.replace(kept / "network.json")
        else:
            described.unlink()
    return kept


def stop_described(root: Path, timeout: float = 30.0) -> list[str]:
    """Stop the network <root>/network.json describes (`allmende down`): every node with
    Ctrl-C at once (each withdraws its offers or settles), killed if still running after
    `timeout`, then anvil. Only processes that are still the ones `up` started are signalled
    (a pid the system has given to another program since is left alone). Returns what was
    stopped, e.g. ["gateway", "provider-1", "anvil"]."""
    try:
        network = load_network(root / "network.json")
    except (OSError, ValueError):
        return []
    nodes = [("gateway", network.get("gateway_pid"))]
    nodes += [(f"provider-{i + 1}", p.get("pid")) for i, p in enumerate(network.get("providers", []))]
    nodes += [(f"validator-{j + 1}", v.get("pid")) for j, v in enumerate(network.get("validators", []))]
    running = [(name, pid) for name, pid in nodes if isinstance(pid, int) and _ours(pid, "allmende")]
    anvil = [("anvil", pid) for pid in [network.get("anvil_pid")] if isinstance(pid, int) and _ours(pid, "anvil")]
    up = [("up", pid) for pid in [network.get("up_pid")] if isinstance(pid, int) and pid != os.getpid()]
    up = [(name, pid) for name, pid in up if _ours(pid, "allmende")]
    _signal_and_wait(up, timeout)  # `up` stops its nodes in order itself
    _signal_and_wait([(n, p) for n, p in running if _alive(p)], timeout)  # those of an `up` that was killed
    _signal_and_wait([(n, p) for n, p in anvil if _alive(p)], timeout)
    return [name for name, _ in up + running + anvil]


def _ours(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line mentions `marker` (it is still that node)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _signal_and_wait(processes: list[tuple[str, int]], timeout: float) -> None:
    for _, pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    for _, pid in processes:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie of ours counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def running_up(root: Path) -> int | None:
    """The pid of an `allmende up` network still running on this state dir (its anvil), if any."""
    try:
        pid = int(load_network(root / "network.json")["anvil_pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def port_free(port: int) -> bool:
    """True if a node can listen on `port` now. With SO_REUSEADDR, as the nodes themselves bind
    (node.net.bind_socket, uvicorn): connections of a stopped run still in TIME_WAIT do not
    hold the port (without it a restart within a minute of a clean stop was refused)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

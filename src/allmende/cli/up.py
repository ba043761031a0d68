"""`allmende up` — the whole local network in one command; `allmende status`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.table import Table

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.cli.common import console, friendly_errors
from allmende.config import from_environment
from allmende.core.errors import InvalidInput, InvalidModelName
from allmende.core.model_names import canonical_name
from allmende.engine import DEFAULT_CHAT_MODEL, resolve_model
from allmende.node.devnet import Devnet, DevnetPlan, default_provider_command, keep_previous_run, stop_described
from allmende.node.heap import freeze_startup_heap
from allmende.node.supervisor import NetworkInfo

DEFAULT_MODELS = [DEFAULT_CHAT_MODEL, "minilm"]


def provider_command(index: int) -> list[str]:
    """How provider `index` (1-based) is started; a hook for test helpers (allmende.testing.cheats)."""
    return default_provider_command(index)


def _stage_list(text: str | None) -> list[int]:
    """--provider-stages 0,1,1,2 as a list of stage indexes."""
    if not text:
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInput(f"--provider-stages {text}: give stage indexes separated by commas, e.g. 0,1,1,2") from None


def up(
    providers: int = typer.Option(
        2, help="number of provider processes (0: only the chain and the gateway, for providers that join)"
    ),
    model: list[str] = typer.Option(
        [],
        help="model each provider serves: smollm2-135m-instruct, allmende:tiny, minilm, a .gguf file, a folder "
        "or a hub id (default: smollm2-135m-instruct and minilm)",
    ),
    state_dir: Path = typer.Option(None, help="where logs, databases and network.json go (default .allmende)"),
    port: int = typer.Option(8000, help="gateway port"),
    rpc_port: int = typer.Option(8545, help="anvil port"),
    provider_port: int = typer.Option(9001, help="port of the first provider (others follow); 0 = any free ports"),
    stream_tokens_per_s: float = typer.Option(None, help="per-stream token rate cap for the providers"),
    provider_option: list[str] = typer.Option(
        [], help="extra option for every provider, e.g. --provider-option=--redeem-threshold=1 (repeatable)"
    ),
    gateway_option: list[str] = typer.Option([], help="extra option for the gateway (repeatable)"),
    allowed_host: list[str] = typer.Option(
        [], help="another Host name the gateway serves besides loopback (repeatable; see `allmende gateway`)"
    ),
    allow_origin: list[str] = typer.Option(
        [], help="origin of a web app allowed to call the gateway from a browser (repeatable; see `allmende gateway`)"
    ),
    validators: int = typer.Option(0, help="number of validator processes auditing the providers"),
    validator_option: list[str] = typer.Option([], help="extra option for every validator (repeatable)"),
    claim_models: bool = typer.Option(
        False,
        "--claim-models",
        help="devnet convenience: each provider registers the models it serves that nobody has registered, as "
        "their owner, and names them (allmende:tiny, minilm, smollm2-135m-instruct). Without it they are served "
        "unregistered and asked for by id; their authors register them (`allmende models register`)",
    ),
    showcase: bool = typer.Option(False, help="once up, send a few requests with the openai client and show them"),
    stages: int = typer.Option(
        0,
        help="split the chat model into this many pipeline stages across the providers (provider i serves stage "
        "i mod STAGES, so --providers 2×STAGES gives every stage a spare); the gateway serves the model by chaining "
        "them. The devnet deployer registers the model and its stages as their owner. Only the chat model is served",
    ),
    provider_stages: str = typer.Option(
        None,
        help="with --stages: the stage of each provider in order, counted from 0, instead of i mod STAGES: e.g. "
        "--providers 4 --stages 3 --provider-stages 0,1,1,2 gives the middle stage a spare",
    ),
    public_host: str = typer.Option(
        None,
        help="this host's address as other hosts reach it (e.g. 192.168.1.10): anvil and the gateway then listen "
        "on every interface, and providers elsewhere join with `allmende provider --network http://HOST:PORT`",
    ),
) -> None:
    """Start anvil, deploy, fund, start N providers and the gateway; Ctrl-C stops everything."""
    root = (state_dir or from_environment().state_dir).resolve()
    models = model or DEFAULT_MODELS
    if stages and not model:
        models = [DEFAULT_CHAT_MODEL]  # a stage chain serves one chat model
    plan = DevnetPlan(
        root, providers, models, port, rpc_port, provider_port, stream_tokens_per_s,
        provider_option, gateway_option, allowed_host, allow_origin, validators, validator_option, claim_models,
        public_host, provider_command, stages,
    )  # fmt: skip
    try:
        plan.provider_stages = _stage_list(provider_stages)
        plan.check_counts()
    except InvalidInput as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if showcase and providers == 0:
        console.print("[red]error:[/red] --showcase needs at least one provider")
        raise typer.Exit(2)
    started = time.monotonic() - _process_age()  # the step timer counts the ~4 s of imports too

    def done(what: str) -> None:
        console.print(f"[green]✓[/green] {what} [dim]({time.monotonic() - started:.0f}s)[/dim]")

    with friendly_errors():  # everything that can be wrong with the options, before anything starts
        plan.check(lambda: console.status("checking the models (GGUF files are converted once, here)"))
    done(f"ports free, models found: {', '.join(plan.models)}" if providers or validators else "ports free")
    kept = keep_previous_run(root)
    if kept is not None:
        console.print(f"starting a fresh chain; the previous run's logs and node state are kept in {kept}")
    devnet = Devnet(plan, on_step=done, status=console.status)

    # A plain flag, not a threading.Event: a handler runs on the main thread between two
    # bytecodes, possibly while that thread holds the Event's lock (a second Ctrl-C during the
    # first one's Event.set deadlocked `up`).
    interrupted = [False]

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if interrupted[0] and signum != signal.SIGALRM:
            return  # stopping already: a second Ctrl-C must not cut the stop short
        interrupted[0] = True
        if _inside_import(frame):
            # raised there, it is swallowed (torch's C extension) or leaves a module half made
            # (an abort at exit): ask again (SIGALRM, back here) once the import is done
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            return
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(signum, interrupt)
    try:
        with friendly_errors():
            network = devnet.start()
        freeze_startup_heap()  # every node started: the collector runs again (node/heap.py)
        _announce(plan, network, showcase)
        while not interrupted[0]:
            time.sleep(1)
            for child in devnet.exited():
                console.print(f"[yellow]{child.name} exited with code {child.process.returncode}[/yellow]")
    except KeyboardInterrupt:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):  # the stop has its own time limit
            signal.signal(signum, signal.SIG_IGN)
        if interrupted[0]:
            console.print("stopping…")
        devnet.stop()
    console.print("stopped.")


def _announce(plan: DevnetPlan, network: NetworkInfo, showcase: bool) -> None:
    """The summary, what to do about unregistered models and other hosts, and the showcase."""
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(Path(network["deployments"])))
    models, chat_models = plan.models, plan.chat_models
    asked = {m: _asked_as(reader, m) for m in models}  # what the gateway lists each model as
    _summary(network, [asked[m] for m in models], asked[(chat_models or models)[0]], plan.root)
    unnamed = [m for m in models if asked[m].startswith("0x")]
    if unnamed and plan.providers:
        console.print(
            f"unregistered, asked for by id: {', '.join(unnamed)} (nobody has registered them on chain; their "
            "author does with `allmende models register … --name NAME`, or start with --claim-models to let "
            "the providers claim them on this devnet)"
        )
    if plan.public_host:
        host, port = plan.public_host, plan.port
        console.print(
            f"providers on other hosts join with:\n  allmende provider --network http://{host}:{port} "
            "--key KEYFILE --model allmende:tiny --host 0.0.0.0 --public-url http://THEIR_ADDRESS:9000\n"
            f"  (a new key first: allmende keys create; allmende faucet ADDRESS --network http://{host}:{port})"
        )
    if showcase:
        _showcase(
            network,
            asked[chat_models[0]] if chat_models else None,
            [asked[m] for m in models if m not in chat_models],
        )


def down(
    state_dir: Path = typer.Option(None, help="the state dir `allmende up` ran with (default .allmende)"),
) -> None:
    """Stop the network `allmende up` started on this state dir: its gateway, providers and
    validators (each stops cleanly: offers withdrawn, state saved), then anvil. Also stops a
    network whose `up` was killed."""
    root = (state_dir or from_environment().state_dir).resolve()
    stopped = stop_described(root)
    if not stopped:
        console.print(f"no network started by `allmende up` is running on {root}")
        return
    console.print(f"stopped: {', '.join(stopped)}")


def _state_dir_option(root: Path) -> str:
    """` --state-dir ROOT` unless ROOT is the default one (what to type to reach this network)."""
    return "" if root == from_environment().state_dir.resolve() else f" --state-dir {root}"


def _process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0 elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _inside_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _asked_as(contracts: Contracts, spec: str) -> str:
    """What a user asks the gateway for to get the model loaded as `spec`: its name on chain
    when it has that name (claimed with --claim-models, or named by its author), else its id."""
    try:
        name: str | None = canonical_name(spec)
    except InvalidModelName:
        name = None
    model_id = resolve_model(spec, progress=False).model_id
    if name is not None and contracts.models.model_by_name(name) == model_id:
        return name
    return "0x" + model_id.hex()


def _summary(network: NetworkInfo, models: list[str], chat: str, root: Path) -> None:
    table = Table(title="Allmende devnet is up", show_header=False)
    table.add_row("gateway (OpenAI API)", network["gateway_url"])
    table.add_row("explorer (web page)", network["explorer_url"])
    table.add_row("chain", f"{network['rpc_url']} (chain id {network['chain_id']})")
    table.add_row("models", ", ".join(models))
    for provider in network["providers"]:
        table.add_row("provider", f"{provider['url']}  {provider['address']}")
    for validator in network.get("validators", []):
        table.add_row("validator", f"{validator['url']}  {validator['address']}")
    table.add_row("network.json", str(root / "network.json"))
    console.print(table)
    console.print(
        "call it:\n"
        "  from openai import OpenAI\n"
        f'  client = OpenAI(base_url="{network["gateway_url"]}", api_key="unused")\n'
        f'  client.chat.completions.create(model="{chat}", messages=[{{"role": "user", "content": "Hi"}}])\n'
        f"explorer and playground: open {network['explorer_url']} in a browser\n"
        f"status: allmende status{_state_dir_option(root)}    stop: Ctrl-C (or allmende down{_state_dir_option(root)})"
    )


def _showcase(network: NetworkInfo, chat: str | None, embedders: list[str]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=network["gateway_url"], api_key="unused", max_retries=0, timeout=300)
    console.rule("[bold]showcase: the openai client against the gateway")
    listed = ", ".join(m.id for m in client.models.list().data)
    console.print(f"models: {listed}")
    if chat:
        question = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model=chat, messages=question, max_tokens=32, temperature=0)  # type: ignore[arg-type]
        usage = reply.usage.model_dump() if reply.usage else {}
        console.print(f"chat   {question[0]['content']!r} → {reply.choices[0].message.content!r}  usage {usage}")
        story = [{"role": "user", "content": "Tell me in two sentences what a commons is."}]
        console.print(f"stream {story[0]['content']!r} → ", end="")
        stream: Any = client.chat.completions.create(
            model=chat,
            messages=story,  # type: ignore[arg-type]
            max_tokens=64,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                console.print(chunk.choices[0].delta.content, end="", markup=False, highlight=False)
        console.print()
        if chat == "allmende:tiny":
            console.print("(allmende:tiny has random weights: its text is noise by design)")
    if embedders:
        emb = client.embeddings.create(model=embedders[0], input=["Allmende", "the commons"])
        console.print(f"embeddings → {len(emb.data)} vectors of {len(emb.data[0].embedding)} floats")
    console.print(
        "every answer above carried a provider-signed receipt and was paid by a voucher; "
        "providers redeem them in batches — see `allmende status`"
    )

"""`allmende up` — the whole local network in one command; `allmende status`."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.table import Table

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts, free_port
from allmende.cli.common import console, friendly_errors
from allmende.config import from_environment
from allmende.core.errors import InvalidInput, InvalidModelName
from allmende.core.model_names import canonical_name
from allmende.engine import DEFAULT_CHAT_MODEL, EMBEDDING_ALIASES, resolve_model
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

DEFAULT_MODELS = [DEFAULT_CHAT_MODEL, "minilm"]
GATEWAY_ACCOUNT = 9


def provider_command(index: int) -> list[str]:
    """How provider `index` (1-based) is started; a hook for test helpers (allmende.testing.cheats)."""
    return allmende_command("provider")


def shared_threads(models: list[str], providers: int, provider_option: list[str]) -> list[str]:
    """Thread options that share this machine's cores out between `up`'s providers: torch's
    (`--torch-threads`, for models on transformers) and llama.cpp's (`--llamacpp-threads`, when
    a GGUF model runs on it). Both engines' threads wait for each other inside every operation
    (OpenMP in torch, a barrier per graph node in ggml), so two providers running a thread per
    core each stall one another: 4 concurrent SmolLM2 requests on transformers missed the
    gateway's 60 s deadline with 2 providers on 2 cores. Nothing the operator set is overridden."""
    from allmende.engine import engine_for

    options = " ".join(provider_option)
    share = str(max(1, len(os.sched_getaffinity(0)) // max(1, providers)))
    threads = [] if "--torch-threads" in options else ["--torch-threads", share]
    if "--llamacpp-threads" in options or re.search(r"--engine[= ]transformers\b", options):
        return threads
    if any(engine_for(m, "auto") == "llamacpp" for m in models):
        threads += ["--llamacpp-threads", share]
    return threads


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
    public_host: str = typer.Option(
        None,
        help="this host's address as other hosts reach it (e.g. 192.168.1.10): anvil and the gateway then listen "
        "on every interface, and providers elsewhere join with `allmende provider --network http://HOST:PORT`",
    ),
) -> None:
    """Start anvil, deploy, fund, start N providers and the gateway; Ctrl-C stops everything."""
    root = (state_dir or from_environment().state_dir).resolve()
    if not 0 <= providers <= 8:
        console.print("[red]error:[/red] --providers must be between 0 and 8")
        raise typer.Exit(2)
    if showcase and providers == 0:
        console.print("[red]error:[/red] --showcase needs at least one provider")
        raise typer.Exit(2)
    if validators < 0 or providers + validators > 8:
        console.print("[red]error:[/red] providers + validators must be at most 8 (anvil funds 10 accounts)")
        raise typer.Exit(2)
    models = model or DEFAULT_MODELS
    chat_models = [m for m in models if m.lower() not in EMBEDDING_ALIASES]
    started = time.monotonic()

    def done(what: str) -> None:
        console.print(f"[green]✓[/green] {what} [dim]({time.monotonic() - started:.0f}s)[/dim]")

    with friendly_errors():  # everything that can be wrong with the options, before anything starts
        live = running_up(root)
        if live is not None:
            raise InvalidInput(f"a network started by `allmende up` is still running on {root} (anvil pid {live})")
        wanted = {"gateway --port": port, "anvil --rpc-port": rpc_port}
        if provider_port:
            wanted.update({f"provider-{i + 1} port": provider_port + i for i in range(providers)})
        busy = [f"{what} {number}" for what, number in wanted.items() if not _port_free(number)]
        if len(set(wanted.values())) < len(wanted):
            raise InvalidInput(f"the ports overlap: {wanted}")
        if busy:
            raise InvalidInput(f"already in use: {', '.join(busy)} (another `allmende up`? choose other ports)")
        with console.status("checking the models (GGUF files are converted once, here)"):
            for m in models if providers or validators else []:
                resolve_model(m)
    done(f"ports free, models found: {', '.join(models)}" if providers or validators else "ports free")
    run_dir = root / "run"
    kept = keep_previous_run(root)
    if kept is not None:
        console.print(f"starting a fresh chain; the previous run's logs and node state are kept in {kept}")
    children: list[Node] = []
    accounts = devnet_accounts(10)
    node = None

    def stop_all() -> None:
        stop_together(children, timeout=15)  # all at once: each withdraws its offers or settles
        if node is not None:
            node.stop()

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
            with console.status("starting anvil and deploying contracts"):
                listen = "0.0.0.0" if public_host else "127.0.0.1"
                node = Anvil(port=rpc_port, log_file=run_dir / "anvil.log", host=listen)
                deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
                deployments = run_dir / "deployments.json"
                deployment.save(deployments)
            done(f"chain {node.url} (chain id {deployment.chain_id}), contracts deployed")
            provider_rows: list[ProviderRow] = []
            for i in range(providers):
                account = accounts[1 + i]
                p_port = provider_port + i if provider_port else free_port()
                log = run_dir / f"provider-{i + 1}.log"
                args = [
                    *provider_command(i + 1),
                    "--rpc",
                    node.url,
                    "--key",
                    f"devnet:{account.index}",
                    "--deployments",
                    str(deployments),
                    "--state-dir",
                    str(run_dir / f"provider-{i + 1}"),
                    "--port",
                    str(p_port),
                    "--redeem-interval",
                    "10",
                ]
                for m in models:
                    args += ["--model", m]
                if claim_models:
                    args.append("--claim-models")
                if stream_tokens_per_s:
                    args += ["--stream-tokens-per-s", str(stream_tokens_per_s)]
                args += provider_option + shared_threads(models, providers, provider_option)
                child = spawn(f"provider-{i + 1}", args, log, f"http://127.0.0.1:{p_port}")
                children.append(child)
                provider_rows.append(
                    {"address": account.address, "url": child.url or "", "models": models, "pid": child.pid,
                     "log": str(log)}
                )  # fmt: skip
            with console.status(f"{providers} providers loading models, staking and publishing offers"):
                for child in children:
                    child.wait_healthy()
                    done(f"{child.name} {child.url} on chain")
            gateway_url = f"http://127.0.0.1:{port}"
            gw = spawn(
                "gateway",
                allmende_command(
                    "gateway", "--rpc", node.url, "--key", f"devnet:{GATEWAY_ACCOUNT}", "--deployments",
                    str(deployments), "--state-dir", str(run_dir / "gateway"), "--port", str(port),
                    *(["--host", "0.0.0.0", "--public-rpc", f"http://{public_host}:{rpc_port}",
                       "--public-host", public_host] if public_host else []),
                    *(a for h in allowed_host for a in ("--allowed-host", h)),
                    *(a for o in allow_origin for a in ("--allow-origin", o)),
                    *gateway_option,
                ),
                run_dir / "gateway.log",
                gateway_url,
            )  # fmt: skip
            children.append(gw)
            with console.status("starting the gateway"):
                gw.wait_healthy()
                try:  # it found every provider on chain and checked its /v1/info
                    gw.wait_healthy(60, ready=lambda health: health["providers"] >= providers)
                except NodeFailed:
                    raise NodeFailed("the gateway did not discover every provider within 60s") from None
            done(f"gateway {gateway_url}/v1 found {providers} providers")
            validator_rows: list[NodeRow] = []
            audited = chat_models or ["allmende:tiny"]
            for j in range(validators):
                account = accounts[8 - j]  # from the top, below the gateway's account
                v_port = free_port()
                v_log = run_dir / f"validator-{j + 1}.log"
                v_args = allmende_command(
                    "validator", "--rpc", node.url, "--key", f"devnet:{account.index}",
                    "--deployments", str(deployments), "--state-dir", str(run_dir / f"validator-{j + 1}"),
                    "--port", str(v_port), *(a for m in audited for a in ("--model", m)), "--gateway", gateway_url,
                    *validator_option,
                )  # fmt: skip
                child = spawn(f"validator-{j + 1}", v_args, v_log, f"http://127.0.0.1:{v_port}")
                children.append(child)
                validator_rows.append(
                    {"address": account.address, "url": child.url or "", "pid": child.pid, "log": str(v_log)}
                )
            if validators:
                with console.status(f"starting {validators} validators"):
                    for child in children[-validators:]:
                        child.wait_healthy()
                done(f"{validators} validators auditing")
            network: NetworkInfo = {
                "rpc_url": node.url,
                "anvil_pid": node.process.pid,
                "chain_id": deployment.chain_id,
                "contracts": {name: info["address"] for name, info in deployment.contracts.items()},
                "deployments": str(deployments),
                "gateway_url": gateway_url + "/v1",
                "explorer_url": gateway_url + "/",
                "gateway_pid": gw.pid,
                "providers": provider_rows,
                "validators": validator_rows,
                "accounts": {
                    "deployer_and_treasury": accounts[0].address,
                    "gateway_payer": accounts[GATEWAY_ACCOUNT].address,
                    "note": "anvil's well-known devnet accounts (public keys, devnet only)",
                },
            }
            save_network(root / "network.json", network)
        reader = Contracts(ChainClient(node.url, accounts[0].key), deployment)
        asked = {m: _asked_as(reader, m) for m in models}  # what the gateway lists each model as
        _summary(network, [asked[m] for m in models], asked[(chat_models or models)[0]], root)
        unnamed = [m for m in models if asked[m].startswith("0x")]
        if unnamed and providers:
            console.print(
                f"unregistered, asked for by id: {', '.join(unnamed)} (nobody has registered them on chain; their "
                "author does with `allmende models register … --name NAME`, or start with --claim-models to let "
                "the providers claim them on this devnet)"
            )
        if public_host:
            console.print(
                f"providers on other hosts join with:\n  allmende provider --network http://{public_host}:{port} "
                "--key KEYFILE --model allmende:tiny --host 0.0.0.0 --public-url http://THEIR_ADDRESS:9000\n"
                f"  (a new key first: allmende keys create; allmende faucet ADDRESS --network http://{public_host}:{port})"
            )
        if showcase:
            _showcase(
                network,
                asked[chat_models[0]] if chat_models else None,
                [asked[m] for m in models if m not in chat_models],
            )
        exited: list[Node] = []
        while not interrupted[0]:
            time.sleep(1)
            for child in children:
                if not child.alive() and child not in exited:
                    console.print(f"[yellow]{child.name} exited with code {child.process.returncode}[/yellow]")
                    exited.append(child)
    except KeyboardInterrupt:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):  # the stop has its own time limit
            signal.signal(signum, signal.SIG_IGN)
        if interrupted[0]:
            console.print("stopping…")
        stop_all()
    console.print("stopped.")


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


def running_up(root: Path) -> int | None:
    """The pid of an `allmende up` network still running on this state dir (its anvil), if any."""
    try:
        pid = int(load_network(root / "network.json")["anvil_pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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
        "status: allmende status    stop: Ctrl-C"
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

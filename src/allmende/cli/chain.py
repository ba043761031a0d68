"""`allmende chain up|deploy` — a local devnet and the contracts on any EVM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from allmende.chain import ChainClient, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.cli.common import console, friendly_errors, resolve_key
from allmende.config import from_environment

app = typer.Typer(no_args_is_help=True, help="Run a devnet and deploy the contracts.")


@app.command("up")
def up(
    port: int = typer.Option(8545, help="JSON-RPC port"),
    chain_id: int = typer.Option(31337, help="chain id"),
    block_time: float = typer.Option(None, help="seconds per block (default: mine on every transaction)"),
) -> None:
    """Start anvil (from .tools/) in the foreground; Ctrl-C stops it."""
    with friendly_errors():
        node = Anvil(port=port, chain_id=chain_id, block_time=block_time)
    console.print(f"anvil on {node.url} (chain id {chain_id}); devnet accounts (public keys, devnet only):")
    for account in devnet_accounts(10):
        console.print(f"  devnet:{account.index}  {account.address}")
    stop = False

    def handle(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)
    try:
        while not stop and node.process.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()


@app.command("deploy")
def deploy(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    key: str = typer.Option("devnet:0", help="deployer: keystore path or devnet:N"),
    out: Path = typer.Option(None, help="deployments JSON (default <state-dir>/deployments.json)"),
    devnet: bool = typer.Option(True, help="deploy dUSD and fund anvil's accounts with ALM and dUSD"),
    treasury: str = typer.Option(None, help="treasury address (default: the deployer)"),
) -> None:
    """Compile and deploy every contract; write the deployments JSON."""
    env = from_environment()
    target = out or env.state_dir / "deployments.json"
    with friendly_errors():
        client = ChainClient(rpc or env.rpc_url, resolve_key(key))
        fund = [a.address for a in devnet_accounts(10)] if devnet else []
        with console.status("compiling and deploying contracts"):
            deployment = deploy_all(client, treasury=treasury, devnet=devnet, fund=fund)
        deployment.save(target)
    for name, info in deployment.contracts.items():
        console.print(f"  {name:<14} {info['address']}")
    console.print(f"wrote {target}")

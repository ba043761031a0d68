"""`allmende chain up|deploy` — a local devnet and the contracts on any EVM."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import typer

from allmende.chain import ChainClient, Deployment, deploy_all
from allmende.chain.anvil import DEVNET_CHAIN_IDS, Anvil, devnet_accounts, is_devnet_chain
from allmende.chain.client import SentTransaction
from allmende.chain.compile import DEFAULT_EVM_VERSION, SUPPORTED_EVM_VERSIONS
from allmende.chain.deploy import PaymentToken, check_payment_token, load_distribution, rehearse
from allmende.cli.common import console, friendly_errors, resolve_key
from allmende.config import from_environment
from allmende.core.errors import InvalidInput

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
    key: str = typer.Option(
        None, help="deployer: keystore path (required outside a devnet; on a devnet the default is devnet:0)"
    ),
    out: Path = typer.Option(None, help="deployments JSON (default <state-dir>/deployments.json)"),
    devnet: bool = typer.Option(
        None,
        "--devnet/--no-devnet",
        help="devnet: deploy dUSD (anyone may mint it) and fund anvil's accounts; only on chain ids "
        f"{', '.join(map(str, sorted(DEVNET_CHAIN_IDS)))}; the default there unless --payment-token is given",
    ),
    payment_token: str = typer.Option(
        None, help="an existing 6-decimal ERC-20 (e.g. USDC) to pay with; required outside a devnet"
    ),
    distribution: Path = typer.Option(
        None,
        help="the initial ALM: a JSON object {address: ALM} or CSV 'address,ALM' lines; "
        "the rest of the supply goes to the treasury (outside a devnet)",
    ),
    evm_version: str = typer.Option(
        DEFAULT_EVM_VERSION, help=f"compile for this EVM ({', '.join(SUPPORTED_EVM_VERSIONS)})"
    ),
    treasury: str = typer.Option(None, help="treasury address (default: the Timelock)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="run the deployment on a local fork (anvil) and print every transaction and its gas"
    ),
) -> None:
    """Compile and deploy every contract; write the deployments JSON."""
    env = from_environment()
    target = out or env.state_dir / "deployments.json"
    with friendly_errors():
        url = rpc or env.rpc_url
        chain_id = ChainClient(url).chain_id
        on_devnet_chain = is_devnet_chain(chain_id)
        if devnet is None:
            devnet = on_devnet_chain and payment_token is None
        if devnet and not on_devnet_chain:
            raise InvalidInput(f"--devnet: chain {chain_id} is not a devnet's chain id")
        if key is None:
            if not devnet:
                raise InvalidInput("--key is required outside a devnet: the deployer's keystore file")
            key = "devnet:0"
        if key.startswith("devnet:") and not on_devnet_chain:
            raise InvalidInput(f"{key} is one of anvil's public keys: refused on chain {chain_id}; use a keystore")
        options: dict[str, Any] = {
            "treasury": treasury,
            "devnet": devnet,
            "fund": [a.address for a in devnet_accounts(10)] if devnet else [],
            "payment_token": payment_token,
            "distribution": load_distribution(distribution) if distribution else None,
            "evm_version": evm_version,
        }
        secret = resolve_key(key)
        if payment_token:  # checked before anything is sent (deploy_all checks it again)
            _print_token(check_payment_token(ChainClient(url), payment_token))
        if dry_run:
            with console.status("rehearsing the deployment on a local fork of the chain"):
                deployment, sent, gas_price = rehearse(url, secret, **options)
            _print_rehearsal(chain_id, deployment, sent, gas_price)
            return
        client = ChainClient(url, secret)
        with console.status("compiling and deploying contracts"):
            deployment = deploy_all(client, **options)
        deployment.save(target)
    for name, info in deployment.contracts.items():
        console.print(f"  {name:<14} {info['address']}")
    console.print(
        f"chain {deployment.chain_id}, EVM {deployment.evm_version}, from block {deployment.deploy_block}"
        f"{' (devnet)' if deployment.devnet else ''}"
    )
    console.print(f"wrote {target}")


def _print_token(token: PaymentToken) -> None:
    """The payment token as read on chain, for the operator to compare with the one intended."""
    x402 = (
        "EIP-3009 yes: gateways can take x402 payments in it"
        if token.eip3009
        else "EIP-3009 no: channels work, but gateways cannot take x402 payments (--x402) in it"
    )
    console.print(f"payment token {token.symbol} {token.address}: {token.decimals} decimals; {x402}", highlight=False)


def _print_rehearsal(
    chain_id: int, deployment: Deployment, sent: list[tuple[str, SentTransaction]], price: int
) -> None:
    console.print(
        f"dry run on a fork of chain {chain_id} (EVM {deployment.evm_version}); nothing was sent. "
        f"Transactions from {deployment.deployer}, in order:"
    )
    total = 0
    for n, (what, tx) in enumerate(sent, 1):
        to = tx.receipt.get("contractAddress") or tx.receipt.get("to")
        console.print(f"  {n:>3}  {what:<32} {to}  gas {tx.gas_used:>10,}")
        total += tx.gas_used
    console.print(
        f"  {len(sent)} transactions, {total:,} gas; at today's gas price ({price / 10**9:g} gwei) "
        f"about {total * price / 10**18:.6f} ETH (L2s add an L1 data fee)"
    )

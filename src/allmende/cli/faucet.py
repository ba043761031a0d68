"""`allmende faucet ADDRESS` — fund a key on a devnet: ETH for gas, ALM to stake, dUSD to pay."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import typer

from allmende.chain import ChainClient, Contracts
from allmende.chain.anvil import devnet_accounts, is_devnet_chain
from allmende.cli.common import alm, console, find_network, friendly_errors, resolve_key, usd
from allmende.core.errors import InvalidInput


def faucet(
    address: str = typer.Argument(..., help="the account to fund (0x…)"),
    network: str = typer.Option(None, help="a gateway's URL or the devnet's JSON-RPC URL (checked as for a provider)"),
    rpc: str = typer.Option(
        None, help="JSON-RPC URL (default: the one --network names, else $ALLMENDE_RPC, else the deployments file's)"
    ),
    deployments: Path = typer.Option(
        None, help="deployments JSON, without --network (default: found as every command finds it)"
    ),
    eth: str = typer.Option("10", help="ETH for gas"),
    alm_amount: str = typer.Option(
        "6000", "--alm", help="ALM to stake (the devnet's minimum: 1,000 for a provider, 5,000 for a validator)"
    ),
    usd_amount: str = typer.Option("1000", "--usd", help="dUSD, the devnet's payment token (for a gateway's channels)"),
    key: str = typer.Option(
        None, help="the deployer's key (default: the devnet account that deployed, found by its address)"
    ),
) -> None:
    """Send devnet ETH, ALM and dUSD to ADDRESS from the deployment's deployer (devnet deployments
    on devnet chain ids only: elsewhere use `allmende transfer`)."""
    from eth_utils import is_address, to_checksum_address

    with friendly_errors():
        if not is_address(address):
            raise InvalidInput(f"{address!r} is not an address (0x followed by 40 hex digits)")
        who = to_checksum_address(address)
        amounts = {name: _units(value, decimals, name) for name, value, decimals in
                   (("--eth", eth, 18), ("--alm", alm_amount, 18), ("--usd", usd_amount, 6))}  # fmt: skip
        found = find_network(network, rpc, deployments)
        deployment, url = found.deployment, found.rpc_url
        chain_id = ChainClient(url).chain_id
        if not deployment.devnet or not is_devnet_chain(chain_id):
            raise InvalidInput(
                f"chain {chain_id} is not a devnet (or the deployment is not a devnet one): the faucet only hands "
                "out devnet money; send real tokens with `allmende transfer`"
            )
        if key is not None:
            secret = resolve_key(key)
        else:
            known = [a for a in devnet_accounts(10) if a.address.lower() == deployment.deployer.lower()]
            if not known:
                raise InvalidInput(
                    f"the deployer {deployment.deployer} is not one of anvil's accounts: pass its key with --key"
                )
            secret = known[0].key
        client = ChainClient(url, secret)
        if client.address.lower() != deployment.deployer.lower():
            raise InvalidInput(f"--key is {client.address}, not the deployer {deployment.deployer}")
        contracts = Contracts(client, deployment)
        if amounts["--eth"]:
            client.send_value(who, amounts["--eth"])
        if amounts["--alm"]:
            contracts.token.transfer(who, amounts["--alm"])
        if amounts["--usd"]:
            contracts.stable.mint(who, amounts["--usd"])
        balance = int(client.rpc(lambda: client.w3.eth.get_balance(who)))
        sent = f"{amounts['--eth'] / 10**18:.4f} ETH, {alm(amounts['--alm'])} and {usd(amounts['--usd'])}"
        console.print(
            f"sent {sent} to {who} (devnet money); it now holds {balance / 10**18:.4f} ETH, "
            f"{alm(contracts.token.balance_of(who))}, {usd(contracts.stable.balance_of(who))}"
        )


def _units(value: str, decimals: int, name: str) -> int:
    try:
        amount = Decimal(value) * 10**decimals
    except ArithmeticError:
        amount = Decimal(-1)
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise InvalidInput(f"{name} {value!r}: expected a non-negative amount with at most {decimals} decimals")
    return int(amount)

"""`allmende transfer TO AMOUNT` — send ALM, the payment token or ETH from your key, on any
chain (the faucet is for devnets only): how an operator hands out stake and payment money."""

from __future__ import annotations

from pathlib import Path

import typer

from allmende.chain import ChainClient, Contracts
from allmende.cli.common import console, find_network, friendly_errors, resolve_key
from allmende.cli.faucet import _units
from allmende.core.errors import InvalidInput

ASSETS = ("alm", "usd", "eth")


def transfer(
    to: str = typer.Argument(..., help="the recipient (0x…)"),
    amount: str = typer.Argument(..., help="how much, in whole units (e.g. 2000 or 12.5)"),
    asset: str = typer.Option("alm", "--token", help="alm (stake and votes), usd (the payment token) or eth (gas)"),
    key: str = typer.Option(..., help="the sender: keystore path (or devnet:N on a devnet)"),
    network: str = typer.Option(None, help="a gateway's URL or the chain's JSON-RPC URL (checked as for a provider)"),
    rpc: str = typer.Option(
        None, help="JSON-RPC URL (default: the one --network names, else $ALLMENDE_RPC, else the deployments file's)"
    ),
    deployments: Path = typer.Option(
        None, help="deployments JSON, without --network (default: found as every command finds it)"
    ),
) -> None:
    """Send ALM, the deployment's payment token or ETH from --key to TO; prints both balances after."""
    from eth_utils import is_address, to_checksum_address

    with friendly_errors():
        if not is_address(to):
            raise InvalidInput(f"{to!r} is not an address (0x followed by 40 hex digits)")
        if asset not in ASSETS:
            raise InvalidInput(f"--token {asset!r}: expected one of {', '.join(ASSETS)}")
        who = to_checksum_address(to)
        found = find_network(network, rpc, deployments)
        deployment = found.deployment
        client = ChainClient(found.rpc_url, resolve_key(key))
        contracts = Contracts(client, deployment)
        if asset == "eth":
            units = _units(amount, 18, "AMOUNT")
            client.send_value(who, units)
            mine, theirs = (int(client.rpc(lambda a=a: client.w3.eth.get_balance(a))) for a in (client.address, who))  # type: ignore[misc]
            symbol, decimals = "ETH", 18
        else:
            token = contracts.token if asset == "alm" else contracts.stable
            decimals = 18 if asset == "alm" else int(client.call(token.contract.functions.decimals()))
            symbol = "ALM" if asset == "alm" else str(client.call(token.contract.functions.symbol()))
            units = _units(amount, decimals, "AMOUNT")
            held = token.balance_of(client.address)
            if held < units:
                raise InvalidInput(f"{client.address} holds {held / 10**decimals:,} {symbol}, less than {amount}")
            token.transfer(who, units)
            mine, theirs = token.balance_of(client.address), token.balance_of(who)
    console.print(
        f"sent {amount} {symbol} to {who}; {who} holds {theirs / 10**decimals:,} {symbol}, "
        f"{client.address} {mine / 10**decimals:,} {symbol}"
    )

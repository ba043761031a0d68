"""`allmende stake show|unbond|withdraw` — a provider's or validator's Registry stake:
see it, take it out of service (`unbond`), and take the ALM back after the unbonding
period (`withdraw`). Token holders' governance stake is `allmende gov stake`."""

from __future__ import annotations

import datetime
from pathlib import Path

import typer

from allmende.cli.common import alm, console, contracts_for, friendly_errors
from allmende.cli.gov import DEPLOYMENTS, RPC, parse_alm
from allmende.core.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="A provider's or validator's Registry stake: show, unbond, withdraw.")
ROLES = {0: "none", 1: "provider", 2: "validator"}


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


@app.command("show")
def show(
    address: str = typer.Argument(None, help="whose stake (default: the --key's address)"),
    key: str = typer.Option(None, help="keystore file or devnet:N (its address, if none is given)"),
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Role, bonded stake, what is unbonding and from when it can be withdrawn, open cases."""
    from eth_utils import is_address, to_checksum_address

    with friendly_errors():
        if address is None and key is None:
            raise InvalidInput("give an ADDRESS or --key")
        if address is not None and not is_address(address):
            raise InvalidInput(f"{address!r} is not an address")
        c = contracts_for(rpc, key if address is None else None, deployments)
        who = to_checksum_address(address) if address is not None else c.client.address
        a = c.registry.account(who)
        active = c.registry.is_active(who)
        cases = c.registry.open_cases(who)
    console.print(who)
    console.print(f"  role        {ROLES.get(a.role, str(a.role))}{' (active)' if active else ' (not active)'}")
    console.print(f"  stake       {alm(a.stake)}")
    when = f", withdraw from {_when(a.unbond_at)}" if a.unbonding else ""
    console.print(f"  unbonding   {alm(a.unbonding)}{when}")
    if cases:
        console.print(f"  open cases  {cases} (nothing can be withdrawn until they are resolved)")


@app.command("unbond")
def unbond(
    amount: str = typer.Argument(..., help="ALM to take out of stake, e.g. 1000, or 'all'"),
    key: str = typer.Option(..., help="keystore file or devnet:N"),
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Start unbonding: the ALM stops counting as stake now (below the minimum the node is no
    longer active) and can be withdrawn after `unbonding_period`; it stays slashable until then."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        staked = c.registry.account(c.client.address).stake
        units = staked if amount == "all" else parse_alm(amount)
        if units == 0:
            raise InvalidInput(f"{c.client.address} has no stake to unbond")
        if units > staked:
            raise InvalidInput(f"{c.client.address} has {alm(staked)} staked, not {alm(units)}")
        c.registry.unbond(units)
        a = c.registry.account(c.client.address)
        active = c.registry.is_active(c.client.address)
    console.print(f"unbonding {alm(a.unbonding)}; withdraw from {_when(a.unbond_at)}")
    console.print(f"  stake left {alm(a.stake)}; {'still active' if active else 'no longer active'}")


@app.command("withdraw")
def withdraw(
    key: str = typer.Option(..., help="keystore file or devnet:N"),
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Take back unbonded ALM once the unbonding period is over and no fraud case is open against you."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        account = c.registry.account(c.client.address)
        before = account.unbonding
        if before == 0:
            raise InvalidInput(f"{c.client.address} has nothing unbonding (`allmende stake unbond` first)")
        if c.client.timestamp() < account.unbond_at:
            raise InvalidInput(
                f"{alm(before)} still unbonding: it can be withdrawn from {_when(account.unbond_at)}, not yet "
                f"(chain time {_when(c.client.timestamp())})"
            )
        c.registry.withdraw()
    console.print(f"withdrew {alm(before)}")

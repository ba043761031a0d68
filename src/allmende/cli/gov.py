"""`allmende gov propose|list|show|vote|queue|execute|fast-forward` — governance from the shell."""

from __future__ import annotations

import datetime
from pathlib import Path

import typer
from rich.table import Table

from allmende.chain import ChainClient
from allmende.cli.common import alm, console, contracts_for, friendly_errors
from allmende.config import from_environment
from allmende.core.codec import address_field, hex_bytes
from allmende.core.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Propose, vote on, queue and execute protocol changes.")

RPC = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC)")
DEPLOYMENTS = typer.Option(None, help="deployments JSON (default <state-dir>/deployments.json)")
KEY = typer.Option(..., help="keystore file or devnet:N")


@app.command("propose")
def propose(
    description: str = typer.Option(..., help="what the proposal does and why"),
    set_param: list[str] = typer.Option([], "--set", help="name=value: set a Params value (repeatable)"),
    call: list[str] = typer.Option([], help="ADDRESS:0xCALLDATA: any call the Timelock should make (repeatable)"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Propose Params changes (--set) and/or arbitrary calls (--call)."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        calls: list[tuple[str, int, bytes]] = []
        for item in set_param:
            name, _, value = item.partition("=")
            if not name or not value.isdigit():
                raise InvalidInput(f"--set expects name=integer, got {item!r}")
            c.params.get(name)  # unknown names fail here, before anyone votes on them
            data = c.params.contract.encode_abi("set", [name, int(value)])
            calls.append((c.params.address, 0, bytes.fromhex(data[2:])))
        for item in call:
            target, _, data = item.partition(":")
            calls.append((address_field(target, "call target"), 0, hex_bytes(data, None, "calldata")))
        if not calls:
            raise InvalidInput("nothing to propose: give --set name=value or --call ADDRESS:0xDATA")
        proposal_id = c.governor.propose(calls, description)
    console.print(f"proposal {proposal_id}")


@app.command("list")
def list_(rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """All proposals with their state and tallies."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        table = Table("id", "state", "for", "against", "abstain", "description")
        for pid in c.governor.ids():
            p = c.governor.proposal(pid)
            table.add_row(
                str(pid)[:12] + "…",
                p.state,
                alm(p.for_votes),
                alm(p.against_votes),
                alm(p.abstain_votes),
                p.description[:50],
            )
    console.print(table)


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


@app.command("show")
def show(proposal_id: int, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """State, tallies, quorum, voting window and eta of one proposal."""
    with friendly_errors():
        p = contracts_for(rpc, None, deployments).governor.proposal(proposal_id)
    console.print(f"proposal {proposal_id}: [bold]{p.state}[/bold]  — {p.description}")
    console.print(f"  proposer {p.proposer}; voting {_when(p.start)} → {_when(p.end)}")
    console.print(
        f"  for {alm(p.for_votes)}, against {alm(p.against_votes)}, abstain {alm(p.abstain_votes)}; "
        f"quorum {alm(p.quorum)}"
    )
    console.print(f"  eta {_when(p.eta)}")


@app.command("vote")
def vote(
    proposal_id: int,
    support: str = typer.Argument(..., help="for | against | abstain"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Vote with your stake as of the proposal's start."""
    with friendly_errors():
        contracts_for(rpc, key, deployments).governor.vote(proposal_id, support)
    console.print(f"voted {support} on {proposal_id}")


@app.command("queue")
def queue(proposal_id: int, key: str = KEY, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Queue a passed proposal in the Timelock."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        c.governor.queue(proposal_id)
        eta = c.governor.proposal(proposal_id).eta
    console.print(f"queued {proposal_id}; executable from {_when(eta)}")


@app.command("execute")
def execute(proposal_id: int, key: str = KEY, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Execute a queued proposal whose Timelock delay is over."""
    with friendly_errors():
        contracts_for(rpc, key, deployments).governor.execute(proposal_id)
    console.print(f"executed {proposal_id}")


@app.command("fast-forward")
def fast_forward(seconds: int = typer.Argument(..., help="seconds to move the devnet clock"), rpc: str = RPC) -> None:
    """Devnet only: move anvil's clock forward and mine a block (to walk through a proposal)."""
    env = from_environment()
    with friendly_errors():
        client = ChainClient(rpc or env.rpc_url)
        client.increase_time(seconds)
        now = client.timestamp()
    console.print(f"devnet time is now {_when(now)}")

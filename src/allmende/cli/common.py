"""Shared CLI plumbing: typed errors become one red line and exit code 1, never a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer
from rich.console import Console

from allmende.chain.keys import load_key
from allmende.cli.errors import debugging, print_error
from allmende.config import from_environment
from allmende.core.errors import AllmendeError

if TYPE_CHECKING:
    from allmende.chain import Contracts, Deployment

console = Console(soft_wrap=True)
T = TypeVar("T")


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Our own errors as one line on stderr and exit code 1 (`allmende.cli.errors` maps the
    rest at the root); with --debug they go through with their traceback."""
    try:
        yield
    except AllmendeError as exc:
        if debugging():
            raise
        print_error(str(exc))
        raise typer.Exit(1) from None


def node_logging() -> None:
    """Long-running nodes log warnings and their own info lines with a timestamp."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("allmende").setLevel(logging.INFO)


def exit_stopped() -> NoReturn:
    """Leave at once once a node has stopped in order (its database committed, its offers
    withdrawn). The interpreter's own shutdown would first garbage-collect the whole heap of a
    loaded model, measured at 12-16 s for a validator, long enough for `allmende up` to give up
    and kill it. Logs and the console are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def resolve_key(spec: str) -> bytes:
    """A key from `devnet:N` or a keystore path (password from env or prompt)."""
    password = from_environment().password
    if not spec.startswith("devnet:") and password is None:
        if not Path(spec).is_file():  # say so now, not after asking for a password
            return load_key(spec, None)
        password = typer.prompt(f"password for {spec}", hide_input=True)
    return load_key(spec, password)


def usd(amount: int) -> str:
    """6-decimal dUSD units → '12.345678 dUSD' (exact: integer maths only)."""
    whole, frac = divmod(amount, 10**6)
    return f"{whole:,}.{frac:06d} dUSD"


def alm(amount: int) -> str:
    whole, frac = divmod(amount, 10**18)
    return f"{whole:,}.{frac // 10**14:04d} ALM"


def run(fn: Callable[[], T]) -> T:
    with friendly_errors():
        return fn()


def find_deployments(explicit: Path | None, node_dir: Path | None = None, state_dir: Path | None = None) -> Path:
    """The one rule every command uses to find the network's deployments file, first found wins:
    `--deployments`, else $ALLMENDE_DEPLOYMENTS, else in the state dir (`state_dir`, else
    $ALLMENDE_STATE_DIR): NODE_DIR/deployments.json (a node's own state dir, where
    `--network` saved what it joined), run/deployments.json (what `allmende up` wrote),
    deployments.json (`allmende chain deploy`'s default), provider/deployments.json (what
    `allmende provider --network` saved on a provider's host). Never suggests deploying: a
    second set of contracts on a chain others use would be an empty, separate network."""
    if explicit is not None:
        return explicit
    env = from_environment()
    if env.deployments is not None:
        return env.deployments
    state = state_dir or env.state_dir
    candidates = [
        *([node_dir / "deployments.json"] if node_dir is not None else []),
        state / "run" / "deployments.json",
        state / "deployments.json",
        state / "provider" / "deployments.json",
    ]
    candidates = list(dict.fromkeys(candidates))  # node_dir may be one of the state dir's own
    for path in candidates:
        if path.is_file():
            return path
    from allmende.chain import DeploymentNotFound

    looked = ", ".join(str(p) for p in candidates)
    raise DeploymentNotFound(
        f"no deployments file at {looked}: to join a running network pass --network URL (a gateway's URL or "
        "the chain's JSON-RPC URL); to use a file, --deployments FILE or ALLMENDE_DEPLOYMENTS (`allmende up` "
        "writes <state-dir>/run/deployments.json; --state-dir or ALLMENDE_STATE_DIR names its state dir)"
    )


def chain_url(rpc: str | None, deployment: Deployment) -> str:
    """The chain endpoint: `rpc`, else $ALLMENDE_RPC, else the one the deployments file records."""
    env = from_environment()
    return rpc or (env.rpc_url if env.rpc_url_set else deployment.rpc_url or env.rpc_url)


@dataclass(frozen=True)
class Network:
    """The network a command talks to, found by `find_network`."""

    deployment: Deployment
    rpc_url: str  # the chain endpoint to use
    path: Path | None  # the deployments file it was read from or saved to; None: joined and not saved


def find_network(
    network: str | None = None,
    rpc: str | None = None,
    deployments: Path | None = None,
    *,
    node_dir: Path | None = None,
    state_dir: Path | None = None,
    deployer: str | None = None,
    save_to: Path | None = None,
) -> Network:
    """The network every command uses, by one rule. With `--network URL` (a gateway's URL or the
    chain's JSON-RPC URL): the contracts it names, checked on chain before anything is signed
    (`resolve_network`), at `rpc` if given, else the chain URL the network announces; saved to
    `save_to` if given (as `allmende provider` does, so later commands on that host find it).
    Without it: the deployments file `find_deployments` finds, at `rpc`, else $ALLMENDE_RPC, else
    the chain URL that file records (`chain_url`), never a default that could be another devnet."""
    from allmende.chain import Deployment

    if network:
        from allmende.chain.network import resolve_network

        deployment = resolve_network(network, rpc, deployer)
        if save_to is not None:
            deployment.save(save_to)
        return Network(deployment, rpc or deployment.rpc_url, save_to)
    path = find_deployments(deployments, node_dir, state_dir)
    deployment = Deployment.load(path)
    return Network(deployment, chain_url(rpc, deployment), path)


def contracts_for(
    rpc: str | None,
    key: str | bytes | None,
    deployments: Path | None,
    network: str | None = None,
    state_dir: Path | None = None,
) -> Contracts:
    """Bindings for the network `find_network` finds, signing with `key` (a keystore
    file, devnet:N or raw bytes) or read-only without one."""
    from allmende.chain import ChainClient, Contracts

    found = find_network(network, rpc, deployments, state_dir=state_dir)
    secret = resolve_key(key) if isinstance(key, str) else key
    return Contracts(ChainClient(found.rpc_url, secret), found.deployment)


def parse_id(value: str, what: str = "id") -> bytes:
    """A 0x-prefixed 32-byte id from the command line; exits with a clear message otherwise."""
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        print_error(f"{what} {value!r} must be 0x followed by 64 hex digits")
        raise typer.Exit(2)
    return raw

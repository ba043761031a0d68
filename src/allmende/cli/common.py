"""Shared CLI plumbing: typed errors become one red line and exit code 1, never a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer
from rich.console import Console

from allmende.chain.keys import load_key
from allmende.config import from_environment
from allmende.core.errors import AllmendeError

if TYPE_CHECKING:
    from allmende.chain import Contracts

console = Console(soft_wrap=True)
T = TypeVar("T")


@contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except AllmendeError as exc:
        console.print(f"[red]error:[/red] {exc}")
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


def deployments_path(explicit: Path | None, *also: Path) -> Path:
    """The deployments JSON: `explicit`, else the first that exists of `also`,
    <state-dir>/deployments.json and <state-dir>/run/deployments.json (where `allmende up`
    writes it). Exits with advice when there is none."""
    if explicit is not None:
        return explicit
    state = from_environment().state_dir
    candidates = [*also, state / "deployments.json", state / "run" / "deployments.json"]
    for path in candidates:
        if path.is_file():
            return path
    console.print(
        f"[red]error:[/red] no deployments file (looked at {', '.join(str(p) for p in candidates)}).\n"
        "  To join a running network: --network URL (a gateway's URL or the chain's JSON-RPC URL).\n"
        "  To use a file: --deployments FILE. To start a network of your own: `allmende up`."
    )
    raise typer.Exit(1)


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


def find_deployments(explicit: Path | None) -> Path:
    """The one rule every command uses to find the network: `--deployments`, else
    $ALLMENDE_DEPLOYMENTS, else what `allmende up` wrote in the state dir
    (<state-dir>/run/deployments.json), else <state-dir>/deployments.json (`allmende chain
    deploy`'s default). Never suggests deploying: a second set of contracts on a chain
    others use would be an empty, separate network."""
    if explicit is not None:
        return explicit
    env = from_environment()
    if env.deployments is not None:
        return env.deployments
    candidates = [env.state_dir / "run" / "deployments.json", env.state_dir / "deployments.json"]
    for path in candidates:
        if path.exists():
            return path
    from allmende.chain import DeploymentNotFound

    looked = " or ".join(str(p) for p in candidates)
    raise DeploymentNotFound(
        f"no deployments file at {looked}: pass --deployments FILE or set ALLMENDE_DEPLOYMENTS to the "
        "deployments JSON of the network you use (`allmende up` writes <state-dir>/run/deployments.json; "
        "--state-dir or ALLMENDE_STATE_DIR names its state dir)"
    )


def contracts_for(rpc: str | None, key: str | bytes | None, deployments: Path | None) -> Contracts:
    """Bindings for the network `find_deployments` finds, signing with `key` (a keystore
    file, devnet:N or raw bytes) or read-only without one. The endpoint is `rpc`, else
    $ALLMENDE_RPC, else the one the deployments file records."""
    from allmende.chain import ChainClient, Contracts, Deployment

    env = from_environment()
    deployment = Deployment.load(find_deployments(deployments))
    secret = resolve_key(key) if isinstance(key, str) else key
    url = rpc or (env.rpc_url if env.rpc_url_set else deployment.rpc_url or env.rpc_url)
    client = ChainClient(url, secret)
    return Contracts(client, deployment)


def parse_id(value: str, what: str = "id") -> bytes:
    """A 0x-prefixed 32-byte id from the command line; exits with a clear message otherwise."""
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        console.print(f"[red]error:[/red] {what} {value!r} must be 0x followed by 64 hex digits")
        raise typer.Exit(2)
    return raw

"""Shared CLI plumbing: typed errors become one red line and exit code 1, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

from allmende.chain.keys import load_key
from allmende.config import from_environment
from allmende.core.errors import AllmendeError

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


def resolve_key(spec: str) -> bytes:
    """A key from `devnet:N` or a keystore path (password from env or prompt)."""
    password = from_environment().password
    if not spec.startswith("devnet:") and password is None:
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

"""The CLI's one error handler: whatever a command raises becomes one line on stderr
(`error: …`) and exit code 1, never a traceback. `allmende --debug …` (or
ALLMENDE_DEBUG=1) lets the exception through instead, traceback and all.

Usage errors (a missing option, a value of the wrong form) are one line too, with click's
exit code 2 and a pointer to the command's --help. Everything else is mapped here, once, at the root of the command tree
(`HandledGroup.invoke`), so a command needs no try/except of its own:

    AllmendeError (core/errors.py)       its message (it was written for the user)
    web3 ContractLogicError              the contract's revert reason
    web3 MismatchedABI                   which call got an argument of the wrong form
    requests/httpx connection errors     what could not be reached
    FileNotFoundError, other OSError     the path and what is wrong with it
    ValueError, TypeError (bad input)    its message
    anything else                        its type and message, and a pointer to --debug
"""

from __future__ import annotations

import re
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from allmende.config import from_environment
from allmende.core.errors import AllmendeError

err_console = Console(stderr=True, soft_wrap=True)
DEBUG_KEY = "allmende.debug"


def debugging() -> bool:
    """Whether this invocation asked for tracebacks (--debug or ALLMENDE_DEBUG=1)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get(DEBUG_KEY):
        return True
    return from_environment().debug


def print_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)


def one_line(exc: BaseException) -> str:
    """What the user reads for `exc`: one line (crafted messages of our own errors are kept whole)."""
    import httpx
    import requests
    from web3.exceptions import ContractLogicError, MismatchedABI

    if isinstance(exc, AllmendeError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, MismatchedABI):  # an argument of the wrong form reached a contract call
        named = re.search(r"named `(\w+)`", str(exc))
        call = f" for {named.group(1)}" if named else ""
        text = (
            f"an argument{call} has the wrong form: ids are 0x and 64 hex digits, addresses 0x and 40, "
            "amounts whole numbers"
        )
    elif isinstance(exc, ContractLogicError):
        from allmende.chain.client import revert_reason

        text = f"the contract refused: {revert_reason(exc)}"
    elif isinstance(exc, (requests.ConnectionError, requests.Timeout, httpx.TransportError, ConnectionError)):
        text = f"cannot reach the endpoint: {_flat(exc)}"
    elif isinstance(exc, FileNotFoundError):
        text = f"no such file or directory: {exc.filename}" if exc.filename else _flat(exc)
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror or _flat(exc)}{where}"
    elif isinstance(exc, (ValueError, TypeError)):
        text = _flat(exc)
    else:
        text = f"unexpected {type(exc).__name__}: {_flat(exc)} (run with --debug for the traceback)"
    return text


def _flat_text(text: str) -> str:
    return " ".join(text.split())


def _flat(exc: BaseException) -> str:
    text = _flat_text(str(exc))
    if len(text) > 400:
        text = text[:400] + "…"
    return text or type(exc).__name__


class HandledGroup(TyperGroup):
    """The root command group: maps every exception a command raises to one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a missing option, a value of the wrong form: one line too
            if debugging():
                raise
            where = exc.ctx.command_path if exc.ctx is not None else "allmende"
            print_error(f"{_flat_text(exc.format_message())} (see `{where} --help`)")
            raise typer.Exit(2) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if debugging():
                raise
            print_error(one_line(exc))
            raise typer.Exit(1) from None


def debug_option(
    debug: bool = typer.Option(
        False, "--debug", help="show the traceback of an error (also ALLMENDE_DEBUG=1)", is_eager=True
    ),
) -> None:
    """Allmende: the commons of idle compute."""
    if debug:
        click.get_current_context().meta[DEBUG_KEY] = True

"""`allmende keys create|import|list` — keystore v3 files."""

from __future__ import annotations

from pathlib import Path

import typer

from allmende.chain.keys import create_keystore, import_keystore, list_keystores
from allmende.cli.common import console, friendly_errors
from allmende.config import from_environment

app = typer.Typer(no_args_is_help=True, help="Create, import and list keystore files.")


def _dir(directory: Path | None) -> Path:
    return directory or from_environment().state_dir / "keys"


def _password(confirm: bool = True) -> str:
    env = from_environment().password
    return env if env is not None else typer.prompt("password", hide_input=True, confirmation_prompt=confirm)


@app.command("create")
def create(
    name: str = typer.Option(None, help="file name (default: the address)"),
    directory: Path = typer.Option(None, "--dir", help="keystore folder (default $ALLMENDE_STATE_DIR/keys)"),
) -> None:
    """Create a new key, encrypted with a password (ALLMENDE_PASSWORD or a prompt)."""
    with friendly_errors():
        info = create_keystore(_dir(directory), _password(), name)
    console.print(f"created {info.address} in {info.path}")


@app.command("import")
def import_(
    private_key: str = typer.Argument(..., help="hex private key"),
    name: str = typer.Option(None, help="file name (default: the address)"),
    directory: Path = typer.Option(None, "--dir", help="keystore folder (default $ALLMENDE_STATE_DIR/keys)"),
) -> None:
    """Encrypt an existing private key into a keystore file."""
    with friendly_errors():
        info = import_keystore(_dir(directory), private_key, _password(), name)
    console.print(f"imported {info.address} into {info.path}")


@app.command("list")
def list_(
    directory: Path = typer.Option(None, "--dir", help="keystore folder (default $ALLMENDE_STATE_DIR/keys)"),
) -> None:
    """List keystore files and their addresses."""
    for info in list_keystores(_dir(directory)):
        console.print(f"{info.address}  {info.path}")

"""`allmende up` refuses what would fail later, in seconds and before it starts anything: a
busy port, a model it cannot find, a network still running on the same state dir; and a
restart keeps the previous run's logs instead of overwriting them."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import click
import typer
from typer.testing import CliRunner

from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.node.devnet import keep_previous_run


def _up(tmp_path: Path, *args: str) -> tuple[int, str]:
    ports = ["--port", str(free_port()), "--rpc-port", str(free_port()), "--provider-port", "0"]
    result = CliRunner().invoke(app, ["up", "--state-dir", str(tmp_path), *ports, *args])
    return result.exit_code, result.output


def test_a_busy_gateway_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = _up(tmp_path, "--model", "allmende:tiny", "--port", str(port))
    assert code == 1, output
    assert f"already in use: gateway --port {port}" in output
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_an_unknown_model_is_refused_before_anything_starts(tmp_path: Path) -> None:
    code, output = _up(tmp_path, "--model", str(tmp_path / "no-such-model"))
    assert code == 1, output
    assert "no-such-model" in output and "neither a local folder" in output
    assert not (tmp_path / "run").exists()


def test_a_network_still_running_on_the_state_dir_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "network.json").write_text(json.dumps({"anvil_pid": os.getpid()}))  # a live pid
    code, output = _up(tmp_path, "--model", "allmende:tiny")
    assert code == 1, output
    assert "still running" in output


def test_a_restart_keeps_the_previous_runs_logs(tmp_path: Path) -> None:
    # Prepare: what an earlier run left
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "gateway.log").write_text("the old gateway's log")
    (tmp_path / "network.json").write_text("{}")

    # Execute
    kept = keep_previous_run(tmp_path)

    # Assert
    assert kept is not None and (kept / "gateway.log").read_text() == "the old gateway's log"
    assert (kept / "network.json").exists() and not (tmp_path / "network.json").exists()
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())
    assert keep_previous_run(tmp_path) is None  # an empty run dir is simply reused


def _options(command: click.Command, path: str = "") -> Iterator[tuple[str, click.Option]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}".strip())
    else:
        for param in command.params:
            if isinstance(param, click.Option):
                yield path, param


def test_every_cli_option_has_help_text() -> None:
    missing = [f"{path} {option.opts[0]}" for path, option in _options(typer.main.get_command(app)) if not option.help]
    assert missing == []

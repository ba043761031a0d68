"""The CLI on a real anvil: `chain deploy` writes a usable deployments file; `demo` pays a
channel and its on-chain split equals the Python split."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from allmende.chain.anvil import Anvil
from allmende.cli import app


def test_chain_deploy_writes_deployments(tmp_path: Path) -> None:
    with Anvil() as node:
        out = tmp_path / "deployments.json"
        result = CliRunner().invoke(app, ["chain", "deploy", "--rpc", node.url, "--out", str(out)])

    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["contracts"]) >= {"Channels", "Registry"}


def test_chain_deploy_to_dead_node_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["chain", "deploy", "--rpc", "http://127.0.0.1:9", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1
    assert "unreachable" in result.output and "Traceback" not in result.output


def test_demo_walk_through_pays_the_right_split() -> None:
    # in this process (typer's runner): the same command and exit code without an interpreter
    # start-up; an unhandled exception fails it
    done = CliRunner().invoke(app, ["demo"])

    assert done.exit_code == 0 and done.exception is None, done.output + repr(done.exception)
    rows = re.findall(r"│ (model owner|treasury|provider)\S*[^│]*│ ([\d.]+) dUSD\s+│ ([\d.]+) dUSD", done.stdout)
    assert len(rows) == 3
    assert all(on_chain == expected for _, on_chain, expected in rows)

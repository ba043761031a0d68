"""`allmende up`'s life as an operator meets it (issue 38): a restart right after a clean stop
finds its ports free although the last run's connections linger in TIME_WAIT, `kill -9` of
`up` leaves no node running (the kernel stops each child with its parent), and `allmende down`
stops a network from its state dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.node.devnet import port_free
from allmende.node.supervisor import allmende_command


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _up(tmp_path: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`allmende up` with one allmende:tiny provider, running once its network.json is written."""
    ports = ["--port", str(free_port()), "--rpc-port", str(free_port()), "--provider-port", "0"]
    command = allmende_command("up", "--state-dir", str(tmp_path), "--providers", "1", "--model", "allmende:tiny")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([*command, *ports], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = tmp_path / "network.json"
    _wait_until("up's network.json", lambda: info.exists() or up.poll() is not None, 240)
    assert info.exists(), (tmp_path / "up.log").read_text()
    return up, json.loads(info.read_text())


def _pids(network: dict[str, Any]) -> list[int]:
    nodes = [network["anvil_pid"], network["gateway_pid"], *(p["pid"] for p in network["providers"])]
    return [*nodes, *(v["pid"] for v in network["validators"])]


def test_a_port_left_in_time_wait_by_a_stopped_run_is_free_for_the_next(tmp_path: Path) -> None:
    # Prepare: a server that closed a connection first, as a stopped node does: TIME_WAIT on its
    # port. It listened with SO_REUSEADDR, as uvicorn, node.net.bind_socket and anvil do.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end lingers in TIME_WAIT
        client.recv(1)
        client.close()
    lingering = subprocess.run(["ss", "-tan", f"sport = :{port}"], capture_output=True, text=True).stdout

    # Execute, Assert
    assert "TIME-WAIT" in lingering, lingering
    assert port_free(port)


def test_kill_9_of_up_leaves_no_node_running(tmp_path: Path) -> None:
    up, network = _up(tmp_path)
    pids = _pids(network)
    assert all(_alive(pid) for pid in pids)

    up.kill()
    up.wait()

    _wait_until("every node to stop with up", lambda: not any(_alive(pid) for pid in pids), 60)


def test_down_stops_the_network_of_a_state_dir(tmp_path: Path) -> None:
    up, network = _up(tmp_path)
    pids = _pids(network)

    result = CliRunner().invoke(app, ["down", "--state-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "stopped: up, gateway, provider-1, anvil" in result.output
    assert up.wait(30) == 0  # up stopped its nodes and exited cleanly
    assert not any(_alive(pid) for pid in pids)
    again = CliRunner().invoke(app, ["down", "--state-dir", str(tmp_path)])
    assert "no network started by `allmende up` is running" in again.output
    assert os.path.exists(tmp_path / "run" / "provider-1.log")

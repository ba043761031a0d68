"""Node processes started, awaited, stopped and reported on by the one supervisor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from allmende.chain.anvil import free_port
from allmende.node.supervisor import NetworkInfo, NodeFailed, load_network, save_network, spawn, start

SERVE_HEALTHZ = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"ok": true, "providers": 2}'
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        print("request", *a, flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_healthy_node_is_started_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    node = start(
        "node", [sys.executable, "-c", SERVE_HEALTHZ, str(port)], tmp_path / "node.log", f"http://127.0.0.1:{port}",
        timeout=60, ready=lambda health: health["providers"] == 2,
    )  # fmt: skip
    assert node.alive()
    node.stop(timeout=10)
    assert not node.alive()
    assert "request" in node.log_tail()  # its output went to its log


def test_a_node_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no model here', flush=True); sys.exit(3)"]
    with pytest.raises(NodeFailed, match="exited while starting") as failed:
        start("provider", command, tmp_path / "p.log", "http://127.0.0.1:9", timeout=60)
    assert "no model here" in str(failed.value)


def test_a_node_that_never_gets_healthy_is_killed(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(600)"]
    node = spawn("sleeper", command, tmp_path / "s.log", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(NodeFailed, match="did not become healthy"):
        node.wait_healthy(timeout=1)
    node.kill9()
    assert not node.alive()


def test_network_info_round_trips(tmp_path: Path) -> None:
    info: NetworkInfo = {
        "rpc_url": "http://127.0.0.1:8545", "anvil_pid": 1, "chain_id": 31337, "contracts": {"Channels": "0x01"},
        "deployments": "d.json", "gateway_url": "http://127.0.0.1:8000/v1", "explorer_url": "http://127.0.0.1:8000/",
        "gateway_pid": 2, "providers": [], "validators": [],
        "accounts": {"deployer_and_treasury": "0x1", "gateway_payer": "0x2", "note": "devnet"},
    }  # fmt: skip
    save_network(tmp_path / "network.json", info)
    assert load_network(tmp_path / "network.json") == info

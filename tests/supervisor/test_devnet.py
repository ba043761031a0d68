"""The devnet supervisor (node/devnet.py) in process, without the CLI: it starts anvil, the
providers and the gateway in order, describes them in network.json, reports a node that
exits, and stops every process; a node that fails to start leaves nothing running once the
caller stops it. Option checks refuse before anything starts."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from pathlib import Path

import httpx
import pytest

from allmende.chain.anvil import free_port
from allmende.core.errors import InvalidInput
from allmende.node.devnet import Devnet, DevnetPlan
from allmende.node.supervisor import NodeFailed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _plan(tmp_path: Path, **kw: object) -> DevnetPlan:
    plan = DevnetPlan(tmp_path, providers=1, models=["allmende:tiny"], port=free_port(), rpc_port=free_port())
    plan.provider_port = 0
    for name, value in kw.items():
        setattr(plan, name, value)
    return plan


def test_a_devnet_starts_in_order_reports_an_exited_node_and_stops_every_process(tmp_path: Path) -> None:
    # Prepare
    steps: list[str] = []
    validator_port = free_port()
    plan = _plan(tmp_path, validators=1, validator_options=[f"--port={validator_port}"])  # a port of my choice
    devnet = Devnet(plan, on_step=steps.append)

    # Execute
    try:
        network = devnet.start()
        models = httpx.get(network["gateway_url"] + "/models", timeout=10).json()["data"]
        described = json.loads((tmp_path / "network.json").read_text())
        provider = devnet.children[0]
        provider.process.kill()
        provider.process.wait(10)
        exited, again = devnet.exited(), devnet.exited()
    finally:
        devnet.stop()
        devnet.stop()  # idempotent

    # Assert
    assert [s.split()[0] for s in steps] == ["chain", "provider-1", "gateway", "1"]  # "1 validators auditing"
    assert network["validators"][0]["url"] == f"http://127.0.0.1:{validator_port}"
    assert len(models) == 1 and models[0]["id"].startswith("0x")  # allmende:tiny, served unregistered
    assert described["gateway_url"] == network["gateway_url"] and len(described["providers"]) == 1
    assert exited == [provider] and again == []  # each exit is reported once
    pids = [network["anvil_pid"], network["gateway_pid"], *(p["pid"] for p in network["providers"])]
    pids += [v["pid"] for v in network["validators"]]
    assert not [pid for pid in pids if _alive(pid)]


def test_a_node_that_fails_to_start_is_reported_and_stop_leaves_nothing_running(tmp_path: Path) -> None:
    # Prepare: a provider that exits at once
    failing = [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(3)"]
    devnet = Devnet(_plan(tmp_path, provider_command=lambda index: failing))

    # Execute
    with pytest.raises(NodeFailed) as failed:
        devnet.start()
    anvil = devnet.anvil
    devnet.stop()

    # Assert
    assert "provider-1" in str(failed.value) and "no GPU here" in str(failed.value)
    assert anvil is not None and not _alive(anvil.process.pid)
    assert not (tmp_path / "network.json").exists()  # no description of a network that never ran


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"providers": 9}, "--providers must be between 0 and 8"),
        ({"providers": 5, "validators": 4}, "providers + validators must be at most 8"),
        ({"models": ["/no/such/model"]}, "no/such/model"),
    ],
    ids=["too-many-providers", "too-many-nodes", "unknown-model"],
)
def test_a_plan_that_cannot_run_is_refused_before_anything_starts(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        _plan(tmp_path, **change).check()
    assert not (tmp_path / "run").exists()


def test_overlapping_and_busy_ports_are_refused(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(InvalidInput, match="the ports overlap"):
        _plan(tmp_path, port=port, rpc_port=port).check()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"already in use: anvil --rpc-port {busy}"):
            _plan(tmp_path, rpc_port=busy).check()

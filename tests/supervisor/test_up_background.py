"""`allmende up &` from a shell: background jobs start with Ctrl-C ignored (no job control),
and Python keeps an ignored SIGINT ignored; a supervisor (a CI runner) may start us with SIGINT
blocked, which survives exec too. `up` must still stop its nodes on SIGINT; before the fix it
never saw the signal, was killed after the caller's patience ran out, and orphaned them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from allmende.chain.anvil import free_port
from allmende.supervisor import allmende_command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ignore_sigint() -> None:  # as a shell's `&` does
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _block_sigint() -> None:  # as some supervisors do
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


@pytest.mark.parametrize("start", [_ignore_sigint, _block_sigint], ids=["ignored", "blocked"])
def test_up_started_with_sigint_ignored_or_blocked_still_stops_its_nodes_on_sigint(
    tmp_path: Path, start: Callable[[], None]
) -> None:
    ports = ["--port", str(free_port()), "--rpc-port", str(free_port()), "--provider-port", "0"]
    command = allmende_command("up", "--state-dir", str(tmp_path), "--providers", "0", *ports)
    with (tmp_path / "up.log").open("ab") as log:
        up = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=start,
        )
    try:
        info = tmp_path / "network.json"
        deadline = time.monotonic() + 180
        while not info.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert info.exists(), (tmp_path / "up.log").read_text()
        network = json.loads(info.read_text())
        nodes = [network["anvil_pid"], network["gateway_pid"]]
        assert all(_alive(pid) for pid in nodes)

        up.send_signal(signal.SIGINT)
        try:
            returncode = up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("up did not stop within 90 s of SIGINT; its log:\n" + (tmp_path / "up.log").read_text())

        assert returncode == 0
        assert "stopped." in (tmp_path / "up.log").read_text()
        assert not any(_alive(pid) for pid in nodes)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()

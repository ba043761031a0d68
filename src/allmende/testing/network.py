"""Starting `allmende up` as a subprocess for tests and benchmarks, the way a user runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from allmende.chain.anvil import free_port
from allmende.node.supervisor import NetworkInfo, NodeFailed, load_network, spawn


def start_network(
    root: Path, *args: str, timeout: float = 300.0, cheat: str | None = None, claim_models: bool = True
) -> tuple[subprocess.Popen[bytes], NetworkInfo]:
    """Run `allmende up` on free ports with state in `root`; return it and its network.json.
    `cheat="N:MODE"` makes provider N cheat (see allmende.testing.cheats); `claim_models`
    lets its providers register and name the models they serve (`up --claim-models`)."""
    launcher = [sys.executable, "-m", "allmende.testing.cheats", cheat] if cheat else [sys.executable, "-m", "allmende"]
    command = [
        *launcher,
        "up",
        "--state-dir",
        str(root),
        "--port",
        str(free_port()),
        "--rpc-port",
        str(free_port()),
        "--provider-port",
        "0",
        *(["--claim-models"] if claim_models else []),
        *args,
    ]
    up = spawn("allmende up", command, root / "up.log")
    deadline = time.monotonic() + timeout
    path = root / "network.json"
    try:
        while not path.exists():  # written once everything is healthy
            if not up.alive() or time.monotonic() > deadline:
                raise NodeFailed(f"allmende up did not start:\n{up.log_tail(4000)}")
            time.sleep(0.5)
        return up.process, load_network(path)
    except BaseException:  # not started, or the wait interrupted (Ctrl-C, a test's timeout): no orphan
        stop_network(up.process)
        raise


def stop_network(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a user would; kill if it does not stop."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

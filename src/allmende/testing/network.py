"""Starting `allmende up` as a subprocess for tests and benchmarks, the way a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from allmende.chain.anvil import free_port


def start_network(
    root: Path, *args: str, timeout: float = 300.0, cheat: str | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Run `allmende up` on free ports with state in `root`; return it and its network.json.
    `cheat="N:MODE"` makes provider N cheat (see allmende.testing.cheats)."""
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
        *args,
    ]
    log = root / "up.log"
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    path = root / "network.json"
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"allmende up did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    return process, json.loads(path.read_text())


def stop_network(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a user would; kill if it does not stop."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

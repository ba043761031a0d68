"""The test helper that starts `allmende up` (allmende.testing.network.start_network) leaves no
process behind when its wait is interrupted: a Ctrl-C or a test's timeout while `up` is still
starting once left `up` and the nodes it had started running after the test had ended."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType

import pytest

from allmende.testing.network import start_network


class Interrupted(Exception):
    """What the alarm raises inside start_network's wait (as Ctrl-C raises KeyboardInterrupt)."""


def _ours(root: Path) -> list[int]:
    """Processes whose command line names `root`: `up` (its --state-dir) and what it passes it to."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(root) in command and state != "Z":
            found.append(int(entry))
    return found


def test_an_interrupted_start_leaves_no_process_running(tmp_path: Path) -> None:
    seen: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        seen.extend(_ours(tmp_path))
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 3.0)
    try:
        with pytest.raises(Interrupted):
            start_network(tmp_path, "--providers", "1", "--model", "allmende:tiny")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert seen, "the alarm came before `up` was running (or after it had started)"
    assert not (tmp_path / "network.json").exists()  # it was interrupted while starting
    deadline = time.monotonic() + 60
    while _ours(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ours(tmp_path) == []

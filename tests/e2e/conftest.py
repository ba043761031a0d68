"""`allmende up` as a user runs it: a subprocess with anvil, three providers and the gateway."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from allmende.chain.anvil import free_port


@dataclass
class Network:
    root: Path
    data: dict[str, Any]
    process: subprocess.Popen[bytes]

    @property
    def client(self) -> OpenAI:
        return OpenAI(base_url=self.data["gateway_url"], api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("up")
    args = [
        sys.executable,
        "-m",
        "allmende",
        "up",
        "--providers",
        "3",
        "--state-dir",
        str(root),
        "--port",
        str(free_port()),
        "--rpc-port",
        str(free_port()),
        "--provider-port",
        "0",
        "--stream-tokens-per-s",
        "40",
    ]
    log = root / "up.log"
    process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    path = root / "network.json"
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"allmende up failed:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    data = json.loads(path.read_text())
    try:
        yield Network(root, data, process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def provider_in_flight(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/healthz", timeout=2).json()["in_flight"])
    except httpx.HTTPError:
        return 0

"""`allmende up` as a user runs it: a subprocess with anvil, three providers (serving allmende:tiny,
minilm and the default chat model) and the gateway."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from allmende.testing.network import start_network, stop_network

WEB_APP = "http://webapp.example"  # a web app's origin the gateway allows (test_cross_site*.py)


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
    process, data = start_network(
        root,
        "--providers",
        "3",
        "--model",
        "allmende:tiny",
        "--model",
        "minilm",
        "--model",
        "smollm2-135m-instruct",  # the default chat model, for the agent loop (test_agent_loop.py)
        "--stream-tokens-per-s",
        "40",
        "--allow-origin",
        WEB_APP,
    )
    try:
        yield Network(root, data, process)
    finally:
        stop_network(process)


def provider_in_flight(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/healthz", timeout=2).json()["in_flight"])
    except httpx.HTTPError:
        return 0

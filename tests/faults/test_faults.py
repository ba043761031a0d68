"""Faults on a real network (`allmende up` with 3 providers): a provider killed with
SIGKILL during 200 concurrent requests (half streaming) costs no request, and a gateway
killed with SIGKILL and restarted recovers its channels and never signs a lower voucher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import free_port
from allmende.gateway.store import GatewayStore
from allmende.testing.network import start_network, stop_network
from tests.faults.requests import ask


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("faults")
    process, data = start_network(root, "--providers", "3", "--model", "allmende:tiny", "--stream-tokens-per-s", "60")
    try:
        yield root, data
    finally:
        stop_network(process)


def test_provider_killed_during_200_concurrent_requests(network: tuple[Path, dict[str, Any]]) -> None:
    _, data = network
    victim = data["providers"][1]
    killed = threading.Event()

    def killer() -> None:
        time.sleep(1.5)
        os.kill(victim["pid"], signal.SIGKILL)
        killed.set()

    results: list[str] = []
    failures: list[str] = []

    def one(i: int) -> None:
        # its own API key per client thread, as separate users would have
        client = OpenAI(base_url=data["gateway_url"], api_key=f"user-{i % 32}", max_retries=0, timeout=120)
        try:
            results.append(ask(client, i))
        except Exception as exc:
            failures.append(f"{i}: {type(exc).__name__}: {exc}")

    threading.Thread(target=killer).start()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(200)))

    assert killed.is_set()
    assert failures == []
    assert len(results) == 200
    assert sum(r.startswith("stream:") for r in results) == 100


def test_gateway_killed_and_restarted_recovers_its_channels(network: tuple[Path, dict[str, Any]]) -> None:
    root, data = network
    state = root / "run" / "gateway"
    before = GatewayStore(state / "gateway.db")
    channels_before = {p: c for p, c, _ in before.all_channels()}
    signed_before = {(c, m): before.owed(c, m)[1] for _, c, _ in before.all_channels() for m in _models(data)}
    assert channels_before, "the previous test should have opened channels"
    os.kill(data["gateway_pid"], signal.SIGKILL)
    time.sleep(0.5)

    port = free_port()
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "allmende",
            "gateway",
            "--rpc",
            data["rpc_url"],
            "--key",
            "devnet:9",
            "--deployments",
            data["deployments"],
            "--state-dir",
            str(state),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["providers"] >= 2:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="after-restart", max_retries=0)
        answers = [ask(client, i) for i in range(12)]
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)

    after = GatewayStore(state / "gateway.db")
    deployment = Deployment.load(data["deployments"])
    reader = Contracts(ChainClient(data["rpc_url"]), deployment)
    opened = [
        e
        for e in reader.client.events(reader.channels.contract, "ChannelOpened", deployment.deploy_block)
        if e["args"]["payer"] == data["accounts"]["gateway_payer"]
    ]
    assert len(answers) == 12
    assert {p: c for p, c, _ in after.all_channels()} == channels_before  # same channels, none reopened
    assert len(opened) == len(channels_before)
    for (channel, model), signed in signed_before.items():
        owed, signed_now = after.owed(channel, model)
        assert signed_now >= signed  # never a lower cumulative
        assert signed_now <= owed
    receipts = after.receipts()
    assert len({json.loads(r[3])["request_id"] for r in receipts}) == len(receipts)


def _models(data: dict[str, Any]) -> list[bytes]:
    deployment = Deployment.load(data["deployments"])
    reader = Contracts(ChainClient(data["rpc_url"]), deployment)
    return reader.registry.models_of(data["providers"][0]["address"])

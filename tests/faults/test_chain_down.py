"""The chain endpoint goes away for a while (anvil frozen with SIGSTOP, so calls to it
hang rather than fail fast, the harder case), on a real `allmende up` network.

While it is away, requests on channels the nodes already know keep being served
(vouchers are off chain; providers trust their cached channel state and refresh it in
the background), and the transactions that fall due (providers' batch redeems, the
gateway's top-up at the low-water mark) wait for their call to time out (30 s) and are
retried, or complete when it returns. When it is back they go through: every voucher
signed meanwhile is redeemed in full and the channel is topped up."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.payer.store import GatewayStore
from allmende.testing.network import start_network, stop_network
from tests.faults.requests import ask

# a request costs about 16-18 units: a channel passes its low-water mark (25 % of the deposit
# left) after about 40 requests on it, and the two deposits last for about 100
DEPOSIT = 900
MIN_REQUESTS = 40
MAX_REQUESTS = 88


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("chain-down")
    process, data = start_network(
        root,
        "--providers",
        "2",
        "--model",
        "allmende:tiny",
        "--provider-option=--redeem-threshold=1",
        "--provider-option=--redeem-interval=1",
        "--provider-option=--channel-ttl=1",
        f"--gateway-option=--deposit={DEPOSIT}",
    )
    try:
        yield root, data
    finally:
        os.kill(data["anvil_pid"], signal.SIGCONT)  # never leave it frozen
        stop_network(process)


def signed_vouchers(store: GatewayStore, models: list[bytes]) -> dict[tuple[bytes, bytes], int]:
    return {
        (channel, model): store.owed(channel, model)[1]
        for _, channel, _ in store.all_channels()
        for model in models
        if store.owed(channel, model)[1] > 0
    }


def test_requests_go_on_while_the_chain_is_away_and_transactions_follow(
    network: tuple[Path, dict[str, Any]],
) -> None:
    root, data = network
    deployment = Deployment.load(data["deployments"])
    reader = Contracts(ChainClient(data["rpc_url"], timeout=5), deployment)
    model = reader.registry.models_of(data["providers"][0]["address"])[0]
    store = GatewayStore(root / "run" / "gateway" / "gateway.db")
    client = OpenAI(base_url=data["gateway_url"], api_key="chain-down", max_retries=0, timeout=60)

    # both providers get a channel (the router spreads requests), and everything so far is redeemed
    for i in range(40):
        ask(client, i, stream_tokens=12, chat_tokens=12)
        if len(store.all_channels()) == 2 and i >= 4:
            break
    assert len(store.all_channels()) == 2
    deadline = time.monotonic() + 60
    while any(reader.channels.redeemed(c, m) < v for (c, m), v in signed_vouchers(store, [model]).items()):
        assert time.monotonic() < deadline, "vouchers were not redeemed while the chain was up"
        time.sleep(0.5)
    deposits_before = {c: reader.channels.channel(c).deposit for _, c, _ in store.all_channels()}
    signed_before = signed_vouchers(store, [model])

    os.kill(data["anvil_pid"], signal.SIGSTOP)
    try:
        time.sleep(2)  # past the providers' channel ttl: their caches are stale now
        failures: list[str] = []
        results: list[str] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            try:
                answer = ask(client, i, stream_tokens=12, chat_tokens=12)
                with lock:
                    results.append(answer)
            except Exception as exc:
                with lock:
                    failures.append(f"{i}: {type(exc).__name__}: {exc}")

        def below_low_water() -> bool:
            return any(d - store.total_owed(c) < d // 4 for _, c, d in store.all_channels())

        # requests in batches until a channel passes its low-water mark (its top-up must then
        # wait for the chain); the two deposits together last well beyond that
        sent = 0
        with ThreadPoolExecutor(4) as pool:
            while sent < MIN_REQUESTS or (not below_low_water() and sent < MAX_REQUESTS):
                list(pool.map(one, range(sent, sent + 8)))
                sent += 8
        signed_while_down = signed_vouchers(store, [model])
        # read while the chain is still away: once it is back, the gateway's top-up refills the channel
        crossed = below_low_water()
    finally:
        os.kill(data["anvil_pid"], signal.SIGCONT)

    assert failures == []
    assert len(results) == sent >= MIN_REQUESTS
    # the work done while the chain was away was paid with vouchers nobody could redeem yet
    assert any(v > signed_before.get(k, 0) for k, v in signed_while_down.items())
    # some channel crossed its low-water mark meanwhile (the top-up had to wait for the chain)
    assert crossed, f"no channel reached its low-water mark in {sent} requests"

    # back: a few more requests; the settlement loops and the gateway's top-up loop catch up
    time.sleep(5)  # the gateway retries chain work 5 s after it last failed
    for i in range(4):
        ask(client, i, stream_tokens=12, chat_tokens=12)
    deadline = time.monotonic() + 120
    while True:
        signed = signed_vouchers(store, [model])
        redeemed = {k: reader.channels.redeemed(*k) for k in signed}
        deposits = {c: reader.channels.channel(c).deposit for _, c, _ in store.all_channels()}
        topped_up = [c for c in deposits if deposits[c] > deposits_before[c]]
        if redeemed == signed and topped_up:
            break
        assert time.monotonic() < deadline, f"after the chain came back: signed {signed}, redeemed {redeemed}"
        time.sleep(0.5)
    for channel in topped_up:  # the gateway's record agrees with the chain
        assert dict((c, d) for _, c, d in store.all_channels())[channel] == deposits[channel]

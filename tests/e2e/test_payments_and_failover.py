"""Money end to end (receipts → vouchers → redeem → split on chain) and failover when a
provider process is killed in the middle of a stream. Runs after test_openai_api."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.core import split_payment
from allmende.gateway.store import GatewayStore
from tests.e2e.conftest import Network, provider_in_flight

CHAT = [{"role": "user", "content": "Erzähl eine lange Geschichte."}]


def test_redeemed_amounts_and_split_match_the_receipts(network: Network) -> None:
    for _ in range(6):
        network.client.chat.completions.create(model="allmende:tiny", messages=CHAT, max_tokens=8)
    network.client.embeddings.create(model="minilm", input="noch eins")
    deployment = Deployment.load(network.data["deployments"])
    reader = Contracts(ChainClient(network.data["rpc_url"]), deployment)
    treasury = reader.channels.treasury()
    addresses = [p["address"] for p in network.data["providers"]]
    before = {a: reader.channels.earnings(a) for a in [*addresses, treasury]}

    for i in range(1, len(network.data["providers"]) + 1):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "allmende",
                "provider-redeem",
                "--rpc",
                network.data["rpc_url"],
                "--key",
                f"devnet:{i}",
                "--deployments",
                network.data["deployments"],
                "--state-dir",
                str(network.root / "run" / f"provider-{i}"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    store = GatewayStore(network.root / "run" / "gateway" / "gateway.db")
    fee_bps = reader.params.get("protocol_fee_bps")
    redeemed_total, expected_fee = 0, 0
    for provider, channel_id, _ in store.all_channels():
        for model_id in reader.registry.models_of(reader.client.w3.to_checksum_address(provider)):
            owed, signed = store.owed(channel_id, model_id)
            on_chain = reader.channels.redeemed(channel_id, model_id)
            assert on_chain == signed <= owed  # every voucher the gateway signed was redeemed, nothing more
            redeemed_total += on_chain
    # each provider redeemed one batch per (channel, model); fees are floored per voucher
    for provider, channel_id, _ in store.all_channels():
        for model_id in reader.registry.models_of(reader.client.w3.to_checksum_address(provider)):
            expected_fee += split_payment(reader.channels.redeemed(channel_id, model_id), 0, fee_bps).protocol_fee
    gained = {a: reader.channels.earnings(a) - before[a] for a in before}
    assert redeemed_total > 0
    assert gained[treasury] == expected_fee
    # the models were registered by provider 1 with royalty 0, so providers get the rest
    assert sum(gained[a] for a in addresses) == redeemed_total - expected_fee
    assert store.receipt_count() >= 7


def test_stream_survives_a_provider_killed_mid_stream(network: Network) -> None:
    stream = network.client.chat.completions.create(
        model="allmende:tiny",
        messages=CHAT,
        max_tokens=120,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, killed = [], []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 10 and not killed:
            for provider in network.data["providers"]:
                if provider_in_flight(provider["url"]) > 0:
                    os.kill(provider["pid"], signal.SIGKILL)
                    killed.append(provider)
                    break
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]

    assert len(killed) == 1, "no provider was serving the stream when we looked"
    assert finishes and finishes[-1] in ("length", "stop")
    deltas = [c for c in chunks if c.choices and c.choices[0].delta.content]
    # one stream to the client: every delta counted once, and more arrived after the kill
    assert usage and usage[0].completion_tokens == len(deltas) > 10
    assert len(content) > 0


def test_requests_keep_succeeding_with_a_provider_dead(network: Network) -> None:
    time.sleep(0.5)
    failures = 0
    results: list[str] = []

    def one() -> None:
        nonlocal failures
        try:
            reply = network.client.chat.completions.create(model="allmende:tiny", messages=CHAT, max_tokens=4)
            results.append(reply.choices[0].finish_reason)
        except Exception:
            failures += 1

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == 0 and len(results) == 20

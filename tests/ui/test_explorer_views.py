"""The explorer's address pages and each provider's earnings over time, against a fresh anvil
with exact amounts: a provider's earnings curve ends at what `Channels` credited it, across a
model's registration (royalty-free service before it, a spanning increment, fees rounded on the
cumulative); the address page shows role, stake, balances, channels and that curve; a bad
address is one JSON error. Throughput and uptime (what this gateway saw) in memory, with a clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.directory import Directory
from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.core import Voucher, sign_voucher
from allmende.core.errors import InvalidInput
from allmende.gateway.explorer_chain import ChainView
from allmende.gateway.explorer_stats import Throughput, Uptime
from allmende.payer.payments import Payments
from allmende.payer.store import GatewayStore

ALM = 10**18


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[Anvil, Deployment, list[DevnetAccount]]]:
    accounts = devnet_accounts(6)
    with Anvil() as node:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        yield node, deployment, accounts


def _as(node: Anvil, deployment: Deployment, key: bytes) -> Contracts:
    return Contracts(ChainClient(node.url, key), deployment)


def _fresh_provider(node: Anvil, deployment: Deployment, funder: DevnetAccount) -> Contracts:
    """A provider key nothing else on this chain pays: its credits are exactly this test's."""
    key = Account.create().key
    c = _as(node, deployment, key)
    _as(node, deployment, funder.key).client.send_value(c.client.address, 10**18)
    _as(node, deployment, funder.key).token.transfer(c.client.address, 2_000 * ALM)
    c.token.approve(c.registry.address)
    c.registry.register(ROLE_PROVIDER, "http://127.0.0.1:9", b"\x03" * 32, 1_000 * ALM)
    return c


def test_earnings_over_time_end_at_what_channels_credited_across_a_registration(chain: Any, tmp_path: Path) -> None:
    # Prepare: a payer's channel to a fresh provider; redeems before, across and after a registration
    node, deployment, accounts = chain
    owner, payer = accounts[1], accounts[2]
    provider = _fresh_provider(node, deployment, accounts[0])
    as_payer = _as(node, deployment, payer.key)
    view = ChainView(as_payer, Directory(as_payer, httpx.Client()),
                     Payments(GatewayStore(tmp_path / "g.db"), as_payer, payer.key), ttl=0)  # fmt: skip
    model_id = keccak(os.urandom(32))
    as_payer.stable.approve(as_payer.channels.address)
    channel = as_payer.channels.open(provider.client.address, 10**8)
    domain = as_payer.channels.voucher_domain()

    def redeem(cumulative: int) -> None:
        provider.channels.redeem([sign_voucher(Voucher(channel, model_id, cumulative), domain, payer.key)])

    # Execute
    redeem(333_333)
    as_payer.client.increase_time(3_600)
    _as(node, deployment, owner.key).models.register(model_id, "MIT", 700)
    as_payer.client.increase_time(3_600)
    redeem(1_000_001)
    as_payer.client.increase_time(60)
    redeem(2_345_679)
    money = view.money()
    page = view.address(provider.client.address)

    # Assert: three points, rising, ending at the contract's credit to the provider
    credited = provider.channels.earnings(provider.client.address)
    curve = money["earned_over_time"][provider.client.address]
    assert len(curve) == 3 and [int(p["earned"]) for p in curve] == sorted(int(p["earned"]) for p in curve)
    assert int(curve[-1]["earned"]) == credited > 0
    assert page["earned_over_time"] == curve and int(page["withdrawable"]) == credited
    assert (page["role"], int(page["stake"])) == ("provider", 1_000 * ALM)
    (row,) = page["channels"]
    assert (row["payer"], row["as"], int(row["redeemed"])) == (payer.address, "provider", 2_345_679)
    assert int(page["balances"]["alm"]) == 1_000 * ALM  # 2,000 received, 1,000 staked
    payer_page = view.address(payer.address.lower())  # any case of hex
    assert payer_page["address"] == payer.address and any(c["as"] == "payer" for c in payer_page["channels"])
    owner_page = view.address(owner.address)
    assert "0x" + model_id.hex() in owner_page["models_owned"]


def test_a_bad_address_is_refused_with_its_reason(chain: Any, tmp_path: Path) -> None:
    node, deployment, accounts = chain
    c = _as(node, deployment, accounts[3].key)
    view = ChainView(c, Directory(c, httpx.Client()), Payments(GatewayStore(tmp_path / "g.db"), c, accounts[3].key))
    with pytest.raises(InvalidInput, match="is not an address"):
        view.address("0x1234<script>")


class Clock:
    def __init__(self) -> None:
        self.now = 1_200_000.0  # the start of a minute

    def __call__(self) -> float:
        return self.now


def test_uptime_history_counts_each_look_and_keeps_a_stopped_provider() -> None:
    clock = Clock()
    uptime = Uptime(bucket_s=60, keep=5, clock=clock)
    for _ in range(4):  # minute 1: serving at every look
        uptime.sample(["0xA"])
        clock.now += 15
    uptime.sample(["0xA"], degraded=["0xA"])  # minute 2: suspended after failing requests
    uptime.sample([])  # then gone: down
    clock.now += 120

    shown = uptime.of("0xA")

    assert shown["history"] == [None, 1.0, 0.0, None, None]
    assert shown["uptime"] == round(4 / 6, 4)
    assert Uptime(clock=clock).of("0xB") == {"bucket_s": 60, "history": [None] * 60, "uptime": None}


def test_throughput_is_output_tokens_over_the_answers_time() -> None:
    throughput = Throughput(keep=2)
    throughput.record("0xA", 100, 4.0)
    throughput.record("0xA", 30, 1.0)
    throughput.record("0xA", 50, 1.0)  # the first falls out of the window
    assert throughput.of("0xA") == {"requests": 3, "tokens_out": 180, "tokens_per_s": 40.0, "window": 2}
    assert throughput.of("0xB")["tokens_per_s"] is None


def test_a_provider_that_withdrew_its_offers_shows_as_stopped_not_unreachable(chain: Any, tmp_path: Path) -> None:
    """A clean stop withdraws the offers and keeps the stake: the explorer said "unreachable"
    (in red) for such a provider; it is "stopped"."""
    node, deployment, accounts = chain
    provider = _fresh_provider(node, deployment, accounts[0])  # staked and active, no offers
    reader = _as(node, deployment, accounts[3].key)
    view = ChainView(reader, Directory(reader, httpx.Client()),
                     Payments(GatewayStore(tmp_path / "g.db"), reader, accounts[3].key), ttl=0)  # fmt: skip

    (row,) = (p for p in view.network()["providers"] if p["address"] == provider.client.address)

    assert row["active"] and row["offers"] == [] and row["health"] == "stopped"

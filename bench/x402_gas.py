"""On-chain gas of one request paid with x402 `exact` at the gateway, from real transaction
receipts on anvil.

A request paid with x402 costs two transactions, both sent (and paid for in ETH) by the
gateway: the facilitator's `transferWithAuthorization` that settles the payer's EIP-3009
authorization (the request's most), and the dUSD transfer that sends back what the receipt
did not use. The settlement goes through the official SDK (`x402ClientSync` signs,
`x402FacilitatorSync` with the gateway's signer settles), as in `gateway/x402_payments.py`.
The payer's first payment is reported apart (its balance slot is warm after it; every
authorization writes a fresh nonce slot). The provider is paid through the gateway's channel
as every request is (see bench/gas.py: ≤ 50 gas per request amortised).

    python bench/x402_gas.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table
from x402 import ResourceConfig, x402ClientSync, x402FacilitatorSync, x402ResourceServerSync
from x402.mechanisms.evm.exact import ExactEvmClientScheme, ExactEvmFacilitatorScheme, ExactEvmServerScheme
from x402.schemas import AssetAmount, ResourceInfo

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.gateway.x402_payments import ChainSigner

USD = 10**6
PAYMENTS = 10
MOST = 20_000  # a request's most, dUSD units
CHARGED = 1_234  # what its receipt says


def measure() -> dict[str, Any]:
    deployer, payer, gateway = devnet_accounts(3)
    with Anvil() as node:
        admin = ChainClient(node.url, deployer.key)
        deployment = deploy_all(admin, fund=[payer.address, gateway.address])
        as_gateway = Contracts(ChainClient(node.url, gateway.key), deployment)
        stable = as_gateway.stable
        network = f"eip155:{admin.chain_id}"
        name, version = stable.eip712_domain()
        facilitator = x402FacilitatorSync()
        facilitator.register([network], ExactEvmFacilitatorScheme(ChainSigner(as_gateway.client)))
        server = x402ResourceServerSync(facilitator)
        server.register(network, ExactEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
        server.initialize()
        client = x402ClientSync()
        client.register("eip155:*", ExactEvmClientScheme(Account.from_key(payer.key)))
        client.set_spend_controls(False)  # dUSD is no default asset of the SDK
        price = AssetAmount(amount=str(MOST), asset=stable.address, extra={"name": name, "version": version})
        config = ResourceConfig(
            scheme="exact", pay_to=gateway.address, price=price, network=network, max_timeout_seconds=300
        )

        seconds: list[float] = []

        def pay_once() -> tuple[int, int]:
            started = time.perf_counter()
            requirements = server.build_payment_requirements(config)
            required = server.create_payment_required_response(requirements, ResourceInfo(url="bench"))
            payload = client.create_payment_payload(required)
            verified = server.verify_payment(payload, requirements[0])  # as the gateway does first
            settled = server.settle_payment(payload, requirements[0])
            assert verified.is_valid and settled.success, (verified, settled)
            refund = stable.transfer(payer.address, MOST - CHARGED)
            seconds.append(time.perf_counter() - started)
            return as_gateway.client.wait(settled.transaction).gas_used, refund.gas_used

        first_settle, first_refund = pay_once()
        steady = [pay_once() for _ in range(PAYMENTS)]
    settle = round(sum(s for s, _ in steady) / PAYMENTS)
    refund = round(sum(r for _, r in steady) / PAYMENTS)
    return {
        "settle_first_payment": first_settle,
        "refund_first_payment": first_refund,
        "settle_per_request": settle,
        "refund_per_request": refund,
        "gas_per_request": settle + refund,
        "payer_gas": 0,
        # sign, verify, settle and refund, each transaction mined (anvil mines at once)
        "payment_ms_p50": round(statistics.median(seconds[1:]) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="On-chain gas of a request paid with x402 exact, on anvil")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure()
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title="x402 exact: gas per request (gasUsed of mined transactions, anvil; sent by the gateway)")
    table.add_column("transaction")
    table.add_column("gas", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:,}" if key != "payment_ms_p50" else f"{value} ms")
    Console().print(table)


if __name__ == "__main__":
    main()

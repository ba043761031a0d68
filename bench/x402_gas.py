"""On-chain gas per request paid with x402 at the gateway, `exact` and `session`, from real
transaction receipts on anvil.

A request paid with x402 costs two transactions, both sent (and paid for in ETH) by the
gateway: the facilitator's `transferWithAuthorization` that settles the payer's EIP-3009
authorization (the request's most), and the dUSD transfer that sends back what the receipt
did not use. The settlement goes through the official SDK (`x402ClientSync` signs,
`x402FacilitatorSync` with the gateway's signer settles), as in `gateway/x402_payments.py`.
The payer's first payment is reported apart (its balance slot is warm after it; every
authorization writes a fresh nonce slot). The provider is paid through the gateway's channel
as every request is (see bench/gas.py: ≤ 50 gas per request amortised).

A session of N requests (N = 1, 10, 100, 1,000) runs the real halves: the official SDK's
client with `SessionScheme` (the agent's key approves dUSD and opens its channel on the
first payment, signs a voucher and an authorisation per request off chain, checks every
charge's receipt), the SDK's server and facilitator with the gateway's session scheme, the
statement read in process, a registered provider signing each receipt. Then the agent
closes (the gateway redeems its last voucher) and, after the close delay, withdraws. Every
transaction either of them sent is counted: approve, open, redeem, request_close, withdraw.

    python bench/x402_gas.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import httpx
from eth_account import Account
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table
from x402 import ResourceConfig, x402ClientSync, x402FacilitatorSync, x402ResourceServerSync
from x402.mechanisms.evm.exact import ExactEvmClientScheme, ExactEvmFacilitatorScheme, ExactEvmServerScheme
from x402.schemas import AssetAmount, ResourceInfo

from allmende.agent.transport import StreamingASGITransport, SyncBridge
from allmende.agent.x402 import SessionScheme
from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.core import Receipt, sign_receipt
from allmende.core.x402_session import request_hash
from allmende.gateway.x402_ledger import X402Ledger
from allmende.gateway.x402_payments import ChainSigner
from allmende.gateway.x402_sessions import SessionFacilitatorScheme, SessionGate, SessionServerScheme, mount_sessions

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


SESSION_MODEL_ID = b"\x51" * 32
SESSION_SIZES = (1, 10, 100, 1_000)


def measure_sessions() -> dict[str, Any]:
    """Gas per request of a session of N requests, all its transactions counted."""
    deployer, gateway, provider = devnet_accounts(3)
    out: dict[str, Any] = {}
    with Anvil() as node:
        admin = ChainClient(node.url, deployer.key)
        deployment = deploy_all(admin, fund=[gateway.address, provider.address])
        as_admin = Contracts(admin, deployment)
        as_gateway = Contracts(ChainClient(node.url, gateway.key), deployment)
        as_provider = Contracts(ChainClient(node.url, provider.key), deployment)
        as_provider.token.approve(as_provider.registry.address)
        as_provider.registry.register(ROLE_PROVIDER, "http://provider.bench", b"\x02" * 32, 1_000 * 10**18)
        as_provider.registry.set_offer(SESSION_MODEL_ID, USD, USD)  # 1 unit per token: a receipt of CHARGED units
        receipt_domain = as_gateway.registry.receipt_domain()
        network = f"eip155:{admin.chain_id}"
        for size in SESSION_SIZES:
            ledger = X402Ledger(None)
            sessions = SessionGate(as_gateway, ledger)
            facilitator = x402FacilitatorSync()
            facilitator.register([network], SessionFacilitatorScheme(as_gateway, ledger, USD))
            server = x402ResourceServerSync(facilitator)
            server.register(network, SessionServerScheme())
            server.initialize()
            app = FastAPI()

            async def gate(sessions: SessionGate = sessions) -> SessionGate:
                return sessions

            mount_sessions(app, gate)
            agent = Account.create()
            admin.w3.provider.make_request("anvil_setBalance", [agent.address, hex(10**19)])  # type: ignore[arg-type]
            as_admin.stable.mint(agent.address, 10 * USD)
            scheme = SessionScheme(
                bytes(agent.key), network=node.url, http=httpx.Client(transport=SyncBridge(StreamingASGITransport(app)))
            )
            client = x402ClientSync()
            client.register("eip155:*", scheme)
            client.set_spend_controls(False)
            first_block = admin.block_number() + 1
            for i in range(size):
                extra = {
                    "channels": as_gateway.channels.address,
                    "statement": "http://gateway.bench/v1/x402/sessions/",
                    "requestHash": "0x" + request_hash(str(i).encode()).hex(),
                    "paymentFlow": "upfront",
                }
                price = AssetAmount(amount=str(MOST), asset=as_gateway.stable.address, extra=extra)
                config = ResourceConfig(scheme="session", pay_to=gateway.address, price=price, network=network)
                requirements = server.build_payment_requirements(config)
                required = server.create_payment_required_response(requirements, ResourceInfo(url="bench"))
                payload = client.create_payment_payload(required)
                settled = server.settle_payment(payload, requirements[0])
                assert settled.success, settled
                receipt = Receipt(
                    os.urandom(32), SESSION_MODEL_ID, provider.address, os.urandom(32), os.urandom(32),
                    os.urandom(32), 1_000, CHARGED - 1_000, CHARGED, int(time.time()),
                )  # fmt: skip
                signed = sign_receipt(receipt, receipt_domain, provider.key)
                ledger.charge(bytes.fromhex(payload.payload["nonce"][2:]), CHARGED, json.dumps(signed.to_json()))
            closing = scheme.close()
            admin.increase_time(as_admin.params.get("channel_close_delay"))
            back = scheme.withdraw(closing)
            assert scheme.paid() == size * CHARGED and back == 2 * USD - size * CHARGED, (scheme.paid(), back)
            agent_gas, gateway_gas = 0, 0
            each: dict[str, int] = {}
            for number in range(first_block, admin.block_number() + 1):
                for tx in admin.w3.eth.get_block(number, full_transactions=True)["transactions"]:
                    sender = tx["from"].lower()  # type: ignore[index]
                    if sender in (agent.address.lower(), gateway.address.lower()):
                        used = int(admin.w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])  # type: ignore[index]
                        agent_gas += used if sender == agent.address.lower() else 0
                        gateway_gas += used if sender == gateway.address.lower() else 0
                        name = _function_name(as_gateway, tx)
                        each[name] = each.get(name, 0) + used
            out[f"session_{size}"] = {
                "agent_gas": agent_gas,
                "gateway_gas": gateway_gas,
                "transactions": each,
                "gas_per_request": round((agent_gas + gateway_gas) / size, 1),
                "gateway_gas_per_request": round(gateway_gas / size, 1),
            }
    return out


def _function_name(contracts: Contracts, tx: Any) -> str:
    """The called function of a transaction to dUSD or Channels, by its selector."""
    for binding in (contracts.channels, contracts.stable):
        if str(tx["to"]).lower() == binding.address.lower():
            return str(binding.contract.get_function_by_selector(bytes(tx["input"])[:4]).fn_name)
    return str(tx["to"])


def main() -> None:
    parser = argparse.ArgumentParser(description="On-chain gas of a request paid with x402 exact, on anvil")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure()
    sessions = measure_sessions()
    result["sessions"] = sessions
    result["session_gas_per_request_at_1000"] = sessions["session_1000"]["gas_per_request"]
    result["goal_session_gas_per_request_at_1000"] = 50
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title="x402 exact: gas per request (gasUsed of mined transactions, anvil; sent by the gateway)")
    table.add_column("transaction")
    table.add_column("gas", justify="right")
    for key, value in result.items():
        if key in ("sessions", "session_gas_per_request_at_1000", "goal_session_gas_per_request_at_1000"):
            continue
        table.add_row(key, f"{value:,}" if key != "payment_ms_p50" else f"{value} ms")
    Console().print(table)
    per = Table(title="x402 session: all its transactions (agent: approve, open, close, withdraw; gateway: redeem)")
    for column in ("requests", "agent gas", "gateway gas", "gas per request", "gateway gas per request"):
        per.add_column(column, justify="right")
    per.add_row("exact", "0", "", f"{result['gas_per_request']:,}", f"{result['gas_per_request']:,}")
    for size in SESSION_SIZES:
        r = sessions[f"session_{size}"]
        per.add_row(
            f"{size:,}", f"{r['agent_gas']:,}", f"{r['gateway_gas']:,}", f"{r['gas_per_request']:,}",
            f"{r['gateway_gas_per_request']:,}",
        )  # fmt: skip
    Console().print(per)
    print("one session of 1,000, each transaction:", ", ".join(
        f"{name} {gas:,}" for name, gas in sessions["session_1000"]["transactions"].items()
    ))  # fmt: skip
    print(f"session gas per request at 1,000: {result['session_gas_per_request_at_1000']} (goal ≤ 50)")


if __name__ == "__main__":
    main()

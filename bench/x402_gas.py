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

Sessions run the real halves: the official SDK's client with `SessionScheme` (the agent's
key approves dUSD and opens its channel on the first payment, signs a voucher and an
authorisation per request off chain, checks every charge's receipt), the SDK's server and
facilitator with the gateway's session scheme, the statement read in process, a registered
provider signing each receipt, the gateway's `Payments` paying it. For each session size N
(1, 10, 100, 1,000) one agent runs a lifecycle of `--sessions` sessions of N requests on one
channel (a session ends with `end()`: no transaction; the next reuses the channel), then
closes it (cooperatively: the gateway's redeem of its last voucher releases the channel and
sends the rest back; `withdraw` then has nothing to do). Every transaction the agent or the
gateway sent is counted: approve, open, top_up, redeem (which puts what it pays into the
gateway's provider channel: `fund_into`), any separate fund, request_close and withdraw (when
the gateway does not close cooperatively). Also printed: the steady state of a channel that
lives on (no open or close in view), from the measured redeem, fund and top-up gas and the
thresholds.

    python bench/x402_gas.py [--json] [--sessions K] [--sizes 1,10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
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
from allmende.agent.x402 import DEPOSIT, MAX_LOCKED, SessionScheme
from allmende.api.directory import Offer
from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.core import Receipt, sign_receipt
from allmende.core.x402_session import request_hash
from allmende.gateway.x402_ledger import X402Ledger
from allmende.gateway.x402_payments import ChainSigner
from allmende.gateway.x402_sessions import SessionFacilitatorScheme, SessionGate, SessionServerScheme, mount_sessions
from allmende.payer.payments import Payments
from allmende.payer.store import GatewayStore

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
SESSIONS = 10  # sessions per channel in the measured lifecycle
AGENT_DEPOSIT = DEPOSIT  # the agent's first deposit (SessionScheme's default: 2 dUSD)
AGENT_MAX_LOCKED = MAX_LOCKED  # the most a top-up leaves unspent (default 20 dUSD): the steady top-up
REDEEM_ABOVE = 10 * USD  # the gateway redeems a channel once this much is unredeemed (X402Policy's default)


def measure_sessions(
    sizes: tuple[int, ...] = SESSION_SIZES,
    sessions: int = SESSIONS,
    deposit: int = AGENT_DEPOSIT,
    max_locked: int = AGENT_MAX_LOCKED,
) -> dict[str, Any]:
    """Gas per request of x402 sessions, every transaction of the lifecycle counted: for each
    session size N, one agent runs `sessions` sessions of N requests on one channel (its
    first payment approves dUSD and opens it; later sessions reuse it; top-ups when the
    deposit runs short, doubling the channel up to `max_locked` unspent), then closes it and
    withdraws the rest. The gateway redeems when more than REDEEM_ABOVE is unredeemed and when
    the channel closes, each redeem funding its provider channel in the same transaction
    (`SessionGate(funding=Payments)`). The gateway's provider channel itself (opened once
    for all traffic) and the provider's own redeems are every request's cost, not x402's
    (bench/gas.py), and are not counted. A first agent's one request warms the gateway up
    (reported apart as `gateway_warm_up`): the gateway's first relayed redeem and first fund
    into its provider channel write fresh slots once per gateway, which no later agent pays."""
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
        offer = Offer(SESSION_MODEL_ID, "bench", "generate", USD, USD, 4096)
        network = f"eip155:{admin.chain_id}"
        with tempfile.TemporaryDirectory() as state:
            payments = Payments(GatewayStore(Path(state) / "gateway.db"), as_gateway, gateway.key)
            provider_channel = payments.channel_for(provider.address)  # the gateway's, for all its traffic
            # a first agent warms the gateway up: its first relayed redeem and its first fund into
            # its provider channel write fresh slots, once per gateway, not per agent
            runs = [("gateway_warm_up", 1, 1), *((f"session_{n}", n, sessions) for n in sizes)]
            for label, size, count in runs:
                ledger = X402Ledger(None)
                gate = SessionGate(as_gateway, ledger, REDEEM_ABOVE, funding=payments)
                facilitator = x402FacilitatorSync()
                facilitator.register([network], SessionFacilitatorScheme(as_gateway, ledger, USD))
                server = x402ResourceServerSync(facilitator)
                server.register(network, SessionServerScheme())
                server.initialize()
                app = FastAPI()

                async def sessions_of(gate: SessionGate = gate) -> SessionGate:
                    return gate

                mount_sessions(app, sessions_of)
                agent = Account.create()
                admin.w3.provider.make_request("anvil_setBalance", [agent.address, hex(10**19)])  # type: ignore[arg-type]
                as_admin.stable.mint(agent.address, 100 * USD)
                wallet = as_admin.stable.balance_of(agent.address)
                scheme = SessionScheme(
                    bytes(agent.key),
                    network=node.url,
                    deposit=deposit,
                    max_locked=max_locked,
                    http=httpx.Client(transport=SyncBridge(StreamingASGITransport(app))),
                )
                client = x402ClientSync()
                client.register("eip155:*", scheme)
                client.set_spend_controls(False)
                first_block = admin.block_number() + 1
                phases: list[tuple[str, int]] = []  # (phase, last block of it)
                for number in range(count):
                    for i in range(size):
                        extra = {
                            "channels": as_gateway.channels.address,
                            "statement": "http://gateway.bench/v1/x402/sessions/",
                            "requestHash": "0x" + request_hash(f"{number}/{i}".encode()).hex(),
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
                        ledger.charge(
                            bytes.fromhex(payload.payload["nonce"][2:]), CHARGED, json.dumps(signed.to_json())
                        )
                        payments.settle(provider.address, provider_channel, offer, signed, None)  # the gateway pays
                    scheme.end()
                    phases.append(("first session" if number == 0 else "later sessions", admin.block_number()))
                closing = scheme.close()
                admin.increase_time(as_admin.params.get("channel_close_delay"))
                back = scheme.withdraw(closing)
                phases.append(("close", admin.block_number()))
                requests = size * count
                assert scheme.paid() == requests * CHARGED, (scheme.paid(), requests)
                assert as_admin.stable.balance_of(agent.address) == wallet - requests * CHARGED, back
                out[label] = _lifecycle_gas(
                    admin, as_gateway, (agent.address, gateway.address), first_block, phases, size, count
                )
            out["relayed_into_provider_channel"] = as_gateway.channels.relayed(provider_channel)
            out["gateway_relay_balance_left"] = as_gateway.channels.relay_balance(gateway.address)
    return out


def _lifecycle_gas(
    admin: ChainClient,
    contracts: Contracts,
    senders: tuple[str, str],
    first_block: int,
    phases: list[tuple[str, int]],
    size: int,
    sessions: int,
) -> dict[str, Any]:
    """Every transaction the agent and the gateway (`senders`) sent from `first_block` on, by phase."""
    agent, gateway = senders
    agent_gas, gateway_gas = 0, 0
    each: dict[str, list[int]] = {}
    by_phase: dict[str, int] = {"first session": 0, "later sessions": 0, "close": 0}
    block = first_block
    for phase, last in phases:
        for number in range(block, last + 1):
            for tx in admin.w3.eth.get_block(number, full_transactions=True)["transactions"]:
                sender = tx["from"].lower()  # type: ignore[index]
                if sender not in (agent.lower(), gateway.lower()):
                    continue
                used = int(admin.w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"])  # type: ignore[index]
                if sender == agent.lower():
                    agent_gas += used
                else:
                    gateway_gas += used
                name = ("agent " if sender == agent.lower() else "gateway ") + _function_name(contracts, tx)
                each.setdefault(name, []).append(used)
                by_phase[phase] += used
        block = last + 1
    requests = size * sessions
    later = by_phase["later sessions"]
    return {
        "sessions": sessions,
        "requests": requests,
        "agent_gas": agent_gas,
        "gateway_gas": gateway_gas,
        "transactions": {name: {"count": len(g), "gas": sum(g), "each": g} for name, g in each.items()},
        "gas_per_request": round((agent_gas + gateway_gas) / requests, 1),
        "first_session_gas_per_request": round(by_phase["first session"] / size, 1),
        "later_sessions_gas_per_request": round(later / (size * (sessions - 1)), 1) if sessions > 1 else None,
        "close_gas": by_phase["close"],
    }


def _function_name(contracts: Contracts, tx: Any) -> str:
    """The called function of a transaction to dUSD or Channels, by its selector."""
    for binding in (contracts.channels, contracts.stable):
        if str(tx["to"]).lower() == binding.address.lower():
            return str(binding.contract.get_function_by_selector(bytes(tx["input"])[:4]).fn_name)
    return str(tx["to"])


def steady_state(sessions: dict[str, Any], max_locked: int = AGENT_MAX_LOCKED) -> dict[str, Any]:
    """Gas per request of a channel that lives on: a redeem and a fund every REDEEM_ABOVE /
    CHARGED requests, a top-up every `max_locked` / CHARGED (once the channel has doubled up to
    the cap, each top-up fills it to `max_locked` unspent, less a request's most; the measured
    gas: the cheapest of each kind, a channel's later redeems write no fresh slots)."""
    gas: dict[str, list[int]] = {}
    for run in sessions.values():
        if isinstance(run, dict) and "transactions" in run:
            for name, t in run["transactions"].items():
                gas.setdefault(name, []).extend(t["each"])
    mean = {name: min(g) for name, g in gas.items()}  # the cheapest: no fresh slot written
    per_redeem = REDEEM_ABOVE / CHARGED
    per_top_up = (max_locked - MOST) / CHARGED
    redeem, fund, top_up = mean.get("gateway redeem", 0), mean.get("gateway fund", 0), mean.get("agent top_up", 0)
    return {
        "requests_per_redeem": round(per_redeem),
        "requests_per_top_up": round(per_top_up),
        "redeem_gas": redeem,
        "fund_gas": fund,
        "top_up_gas": top_up,
        "gas_per_request": round((redeem + fund) / per_redeem + top_up / per_top_up, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="On-chain gas of a request paid with x402, exact and session, on anvil"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sessions", type=int, default=SESSIONS, help="sessions per channel in each lifecycle")
    parser.add_argument("--sizes", default=",".join(map(str, SESSION_SIZES)), help="requests per session")
    parser.add_argument("--deposit", type=int, default=AGENT_DEPOSIT, help="the agent's first deposit, units")
    parser.add_argument(
        "--max-locked", type=int, default=AGENT_MAX_LOCKED, help="the most a top-up leaves unspent, units"
    )
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.sizes.split(","))
    result = measure()
    sessions = measure_sessions(sizes, args.sessions, args.deposit, args.max_locked)
    result["sessions"] = sessions
    result["session_steady_state"] = steady_state(sessions, args.max_locked)
    result["assumptions"] = {
        "charged_per_request": CHARGED,
        "most_per_request": MOST,
        "agent_deposit": args.deposit,
        "agent_max_locked": args.max_locked,
        "gateway_redeem_above": REDEEM_ABOVE,
        "sessions_per_channel": args.sessions,
    }
    if 1_000 in sizes:
        result["session_gas_per_request_at_1000"] = sessions["session_1000"]["gas_per_request"]
        result["goal_session_gas_per_request_at_1000"] = 50
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title="x402 exact: gas per request (gasUsed of mined transactions, anvil; sent by the gateway)")
    table.add_column("transaction")
    table.add_column("gas", justify="right")
    for key in ("settle_first_payment", "refund_first_payment", "settle_per_request", "refund_per_request"):
        table.add_row(key, f"{result[key]:,}")
    table.add_row("gas_per_request", f"{result['gas_per_request']:,}")
    table.add_row("payment_ms_p50", f"{result['payment_ms_p50']} ms")
    Console().print(table)
    a = result["assumptions"]
    print(
        f"session assumptions: each request charged {CHARGED:,} units (its most {MOST:,}); the agent deposits "
        f"{args.deposit:,} and tops up by doubling the channel, never to more than {args.max_locked:,} unspent; "
        f"the gateway redeems a channel once more than {REDEEM_ABOVE:,} "
        f"is unredeemed, and when it closes; {a['sessions_per_channel']} sessions per channel, then close + withdraw; "
        "the gateway's redeems fund its provider channel in the same transaction (fund_into) and the close is "
        "cooperative (the last redeem releases the channel and refunds the agent); "
        "the gateway's own provider channel and the provider's redeems are every request's cost (bench/gas.py), "
        "not counted; the gateway warmed up by one agent's request first (its first relayed redeem and fund "
        f"write fresh slots once per gateway: {sessions['gateway_warm_up']['gateway_gas']:,} gateway gas for it)"
    )
    per = Table(title=f"x402 session: every transaction of a channel's lifecycle ({args.sessions} sessions of N)")
    for column in (
        "requests per session", "agent gas", "gateway gas", "gas per request (lifecycle)",
        "first session / request", "later sessions / request", "close + withdraw gas",
    ):  # fmt: skip
        per.add_column(column, justify="right")
    per.add_row("exact", "0", "", f"{result['gas_per_request']:,}", "", "", "")
    for size in sizes:
        r = sessions[f"session_{size}"]
        later = r["later_sessions_gas_per_request"]
        per.add_row(
            f"{size:,}", f"{r['agent_gas']:,}", f"{r['gateway_gas']:,}", f"{r['gas_per_request']:,}",
            f"{r['first_session_gas_per_request']:,}", "" if later is None else f"{later:,}", f"{r['close_gas']:,}",
        )  # fmt: skip
    Console().print(per)
    for size in sizes:
        print(f"lifecycle at {size:,} per session, each transaction:", ", ".join(
            f"{name} " + " + ".join(f"{g:,}" for g in t["each"])
            for name, t in sessions[f"session_{size}"]["transactions"].items()
        ))  # fmt: skip
    steady = result["session_steady_state"]
    print(
        f"steady state (a channel that lives on): a redeem ({steady['redeem_gas']:,}) and a fund "
        f"({steady['fund_gas']:,}) every {steady['requests_per_redeem']:,} requests, a top-up "
        f"({steady['top_up_gas']:,}) every {steady['requests_per_top_up']:,}: "
        f"{steady['gas_per_request']} gas per request"
    )
    if 1_000 in sizes:
        print(f"session gas per request at 1,000 (lifecycle): {result['session_gas_per_request_at_1000']} (goal ≤ 50)")


if __name__ == "__main__":
    main()

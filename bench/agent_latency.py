"""Latency of the ways an agent pays for itself, at concurrency 1, with allmende:tiny.

Starts `allmende up --providers 1 --model allmende:tiny` and a second gateway on the same
chain with `--x402`; every payer is a fresh key funded by the devnet faucet. Each round sends
one chat request (greedy, 16 new tokens) down every path, in an order rotated per round, so
the shared machine's load falls on all paths alike; the differences reported are medians of
the per-round differences.

- `provider (direct)`: a payer calling the provider itself (its channel, a voucher, the
  request sealed to the provider's key, the receipt checked; bench/provider.py's path);
- `agent client`: the official `openai` client over `allmende.agent` (the same work plus
  routing, the spending policy and the gateway's API in the agent's process, as an httpx
  transport). `agent_added_ms_p50` = agent client − direct provider call, per round.
- `gateway (API key)`: the ordinary gateway, for reference;
- `x402 exact` / `x402 session`: the official `x402` httpx client through the x402 gateway
  (every request: the 402, the payment, the paid retry; exact settles and refunds on chain,
  session reads the statement and signs). `first_request_ms` is a fresh wallet's first paid
  request (session: approving and opening its channel too); `x402_*_first_overhead_ms` that
  minus the API-key gateway's p50.

Besides wall time, each row has the CPU this process spent per request (`time.process_time`,
all its threads: the client, the agent's in-process gateway; the provider and the gateways
are other processes): on a shared, loaded machine wall time swings with the load, CPU time
much less, so `agent_added_cpu_ms_p50` is the figure to compare changes by.

    python bench/agent_latency.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from eth_account import Account
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner
from x402 import x402Client
from x402.http.clients import x402_httpx_transport
from x402.mechanisms.evm.exact import ExactEvmClientScheme

from allmende.agent import Agent
from allmende.agent.x402 import SessionScheme
from allmende.api.client import PayerKey, build_envelope, fetch_info, infer
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.core import Voucher, sign_voucher
from allmende.node.supervisor import Node, allmende_command
from allmende.testing.network import start_network, stop_network

sys.path.insert(0, str(Path(__file__).parent))
from provider import BODY, percentile

MODEL = "allmende:tiny"
PASSWORD = "bench"


def funded_key(rpc: str) -> str:
    key = Account.create()
    given = CliRunner().invoke(app, ["faucet", key.address, "--network", rpc, "--alm", "0", "--usd", "50"])
    assert given.exit_code == 0, given.output
    return "0x" + bytes(key.key).hex()


def x402_gateway(root: Path, network: dict[str, Any]) -> Node:
    rpc = network["rpc_url"]
    key = Account.create()
    ChainClient(rpc).w3.provider.make_request("anvil_setBalance", [key.address, hex(10**19)])  # type: ignore[arg-type]
    contracts = Contracts(ChainClient(rpc, bytes(key.key)), Deployment.load(Path(network["deployments"])))
    contracts.stable.mint(key.address, 100 * 10**6)
    keyfile = root / "x402-gateway.json"
    keyfile.write_text(json.dumps(Account.encrypt(key.key, PASSWORD)))
    port = free_port()
    args = allmende_command(
        "gateway", "--rpc", rpc, "--key", str(keyfile), "--deployments", network["deployments"],
        "--state-dir", str(root / "x402-gateway"), "--port", str(port), "--x402", "--rate-limit", "0",
    )  # fmt: skip
    log = root / "x402-gateway.log"
    process = subprocess.Popen(
        args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "ALLMENDE_PASSWORD": PASSWORD}
    )
    node = Node("gateway", process, log, f"http://127.0.0.1:{port}")
    node.wait_healthy(120, ready=lambda health: health["providers"] >= 1)
    return node


def openai_send(client: openai.OpenAI) -> Callable[[], Any]:
    messages = BODY["messages"]
    return lambda: client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)


def x402_send(url: str, client: x402Client) -> tuple[Callable[[], Any], Callable[[], None]]:
    loop = asyncio.new_event_loop()
    http = httpx.AsyncClient(transport=x402_httpx_transport(client), timeout=120)
    agent = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", http_client=http, max_retries=0)
    messages = BODY["messages"]

    def send() -> Any:
        return loop.run_until_complete(
            agent.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
        )

    def close() -> None:
        loop.run_until_complete(http.aclose())
        loop.close()

    return send, close


def allowed(client: x402Client, asset: str) -> x402Client:
    spec = {"network": "eip155:*", "asset": asset, "max_amount_per_payment": "5000000"}
    client.set_spend_controls({"allowed_assets": [spec]})  # type: ignore[typeddict-item]
    return client


def provider_send(url: str, rpc: str, deployment: Deployment) -> Callable[[], Any]:
    """A payer calling the provider itself: its own channel, a voucher for what it owes, the
    request sealed to the provider's key, the receipt checked (bench/provider.py's path)."""
    key = bytes.fromhex(funded_key(rpc)[2:])
    contracts = Contracts(ChainClient(rpc, key), deployment)
    contracts.stable.approve(contracts.channels.address)
    http = httpx.Client(timeout=120)
    info = fetch_info(http, url)
    model = bytes.fromhex(info.models[0]["model_id"][2:])  # the one model this network serves
    receipt_domain, voucher_domain = contracts.registry.receipt_domain(), contracts.channels.voucher_domain()
    channel = contracts.channels.open(info.address, 10**7)
    signer = PayerKey(key, voucher_domain)
    owed = [0]

    def send() -> Any:
        voucher = sign_voucher(Voucher(channel, model, owed[0]), voucher_domain, key) if owed[0] else None
        rid, envelope, sealer = build_envelope(info, model, "chat", BODY, signer, channel, voucher)
        answer = infer(http, url, info, receipt_domain, envelope, sealer, rid)
        owed[0] += answer.receipt.receipt.amount
        return answer

    return send


def measure(requests: int) -> dict[str, Any]:
    """Rounds of one request per path, the order rotated each round, so that the shared
    machine's load falls on every path alike; differences are medians of per-round pairs."""
    out: dict[str, Any] = {"model": MODEL, "max_tokens": 16, "requests": requests, "concurrency": 1, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, network = start_network(root, "--providers", "1", "--model", MODEL)
        gateway = x402_gateway(root, dict(network))
        closers: list[Callable[[], None]] = []
        try:
            rpc = network["rpc_url"]
            deployment = Deployment.load(Path(network["deployments"]))
            stable = Contracts(ChainClient(rpc), deployment).stable.address
            agent = Agent(key=funded_key(rpc), network=rpc, state_dir=root / "agent")
            closers.append(agent.shutdown)
            exact = x402Client()
            exact.register("eip155:*", ExactEvmClientScheme(Account.from_key(funded_key(rpc))))
            session = x402Client()
            session.register("eip155:*", SessionScheme(funded_key(rpc), network=rpc))
            exact_send, close = x402_send(gateway.url, allowed(exact, stable))
            closers.append(close)
            session_send, close = x402_send(gateway.url, allowed(session, stable))
            closers.append(close)
            paths: dict[str, Callable[[], Any]] = {
                "provider (direct)": provider_send(network["providers"][0]["url"], rpc, deployment),
                "agent client": openai_send(
                    openai.OpenAI(base_url=agent.base_url, api_key="none", http_client=agent.http_client())
                ),
                "gateway (API key)": openai_send(openai.OpenAI(base_url=network["gateway_url"], api_key="none")),
                "x402 exact": exact_send,
                "x402 session": session_send,
            }
            first = {name: _once(send)[0] for name, send in paths.items()}
            times: dict[str, list[float]] = {name: [] for name in paths}
            cpu: dict[str, list[float]] = {name: [] for name in paths}
            names = list(paths)
            for round_ in range(requests):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    wall, used = _once(paths[name])
                    times[name].append(wall)
                    cpu[name].append(used)
        finally:
            for close in closers:
                close()
            gateway.stop(timeout=10)
            stop_network(proc)
    for name in paths:
        out["rows"].append(row(name, first[name], times[name], cpu[name]))

    def added(path: str, base: str, of: dict[str, list[float]] = times) -> float:
        return round(statistics.median(a - b for a, b in zip(of[path], of[base], strict=True)), 2)

    out["agent_added_ms_p50"] = added("agent client", "provider (direct)")
    out["agent_added_cpu_ms_p50"] = added("agent client", "provider (direct)", cpu)
    out["goal_agent_added_ms_p50"] = 2.0
    for scheme in ("exact", "session"):
        out[f"x402_{scheme}_added_ms_p50"] = added(f"x402 {scheme}", "gateway (API key)")
        out[f"x402_{scheme}_first_overhead_ms"] = round(
            first[f"x402 {scheme}"] - statistics.median(times["gateway (API key)"]), 1
        )
    return out


def _once(send: Callable[[], Any]) -> tuple[float, float]:
    """Wall and CPU (this process, all threads) milliseconds of one request."""
    started, cpu = time.perf_counter(), time.process_time()
    send()
    return (time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000


def row(path: str, first: float | None, times: list[float], cpu: list[float]) -> dict[str, Any]:
    return {
        "path": path,
        "first_request_ms": None if first is None else round(first, 1),
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(percentile(times, 0.99), 2),
        "cpu_ms_p50": round(statistics.median(cpu), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="what paying for itself costs an agent in latency")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.requests)
    if args.json:
        print(json.dumps(result))
        return
    table = Table(title=f"{MODEL}, 16 new tokens, concurrency 1, {args.requests} requests per row (after the first)")
    for column in ("path", "first request ms", "p50 ms", "p99 ms", "CPU ms p50 (this process)"):
        table.add_column(column, justify="right")
    for r in result["rows"]:
        first = "" if r["first_request_ms"] is None else f"{r['first_request_ms']:.1f}"
        table.add_row(r["path"], first, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_ms_p50']:.2f}")
    Console().print(table)
    print(
        f"agent client adds {result['agent_added_ms_p50']} ms p50 over a direct provider call (goal ≤ 2 ms), "
        f"{result['agent_added_cpu_ms_p50']} ms of CPU; "
        f"x402 first request +{result['x402_exact_first_overhead_ms']} ms (exact), "
        f"+{result['x402_session_first_overhead_ms']} ms (session, opening its channel) over the API-key "
        "gateway's p50; "
        f"steady x402 adds {result['x402_exact_added_ms_p50']} ms (exact), {result['x402_session_added_ms_p50']} ms "
        "(session) p50"
    )


if __name__ == "__main__":
    main()

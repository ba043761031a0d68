"""An agent that pays for itself through a gateway with the official `x402` client (issue 31):
a fresh key funded by the devnet faucet (dUSD and gas, no ALM, no API key) runs a 10-step
tool-calling loop with the official `openai` client over `x402_httpx_transport`, once with
the SDK's `exact` scheme and once with Allmende's `session` scheme registered in the same SDK
client (one line). Every step's receipt verifies; the wallet's dUSD falls by exactly the sum
of the receipts (`exact`: the gateway refunds what each receipt did not use and pays the
gas; `session`: the gateway redeems the agent's vouchers, and what the close gives back is
deposit − spent — the agent pays the gas of opening and closing in ETH). A replayed session
payment is refused by the real gateway."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import httpx
import openai
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.http.clients import x402_httpx_transport
from x402.http.x402_http_client import x402HTTPClient

from allmende.agent.x402 import SessionScheme
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.core import Domain, SignedReceipt
from tests.e2e.conftest import Network
from tests.e2e.test_x402 import Gateway, contracts_of, fresh_payer, payer_client, x402_gateway

__all__ = ["x402_gateway"]  # the module's gateway with --x402, shared with test_x402.py's fixture

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITIES = ["Paris", "Lima", "Oslo", "Accra", "Hanoi"]


def session_client(network: Network, key: LocalAccount, hook: bool = False) -> tuple[x402Client, SessionScheme]:
    scheme = SessionScheme("0x" + bytes(key.key).hex(), network=network.data["rpc_url"], deposit=2_000_000)
    client = x402Client()
    if hook:
        scheme.register_with(client)  # the same, and its chain work off the async client's loop
    else:
        client.register("eip155:*", scheme)  # the one line an agent adds
    allowed = {
        "network": "eip155:*",
        "asset": contracts_of(network).stable.address,
        "max_amount_per_payment": "5000000",
    }
    client.set_spend_controls({"allowed_assets": [allowed]})  # type: ignore[typeddict-item]
    return client, scheme


async def tool_loop(url: str, client: x402Client) -> list[dict[str, Any]]:
    """Five rounds of a forced tool call, the tool's result and the model's answer: ten paid
    steps; each step's `allmende` view (its receipt and its x402 payment)."""
    http = httpx.AsyncClient(transport=x402_httpx_transport(client), timeout=300)
    agent = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", http_client=http, max_retries=0)
    views = []
    async with http:
        for city in CITIES:
            asked = [{"role": "user", "content": f"What is the weather in {city}?"}]
            call = await agent.chat.completions.create(
                model=MODEL, messages=asked, tools=[WEATHER], temperature=0, max_tokens=24,  # type: ignore[arg-type, list-item]
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )  # fmt: skip
            message = call.choices[0].message
            (tool_call,) = message.tool_calls or []
            result = f"18 degrees and sunny in {json.loads(tool_call.function.arguments)['city']}"
            answer = await agent.chat.completions.create(
                model=MODEL, temperature=0, max_tokens=12, tools=[WEATHER], tool_choice="none",  # type: ignore[list-item]
                messages=[*asked, message.model_dump(exclude_none=True),  # type: ignore[list-item]
                          {"role": "tool", "tool_call_id": tool_call.id, "content": result}],
            )  # fmt: skip
            assert answer.choices[0].message.content
            views += [call.model_extra["allmende"], answer.model_extra["allmende"]]  # type: ignore[index]
    return views


@functools.cache
def receipt_domain(deployments: str, rpc_url: str) -> Domain:
    """The network's receipt domain (its chain id and its Registry), read from the chain once
    for all the receipts this module checks."""
    return Contracts(ChainClient(rpc_url), Deployment.load(Path(deployments))).registry.receipt_domain()


def receipt_of(network: Network, view: dict[str, Any]) -> SignedReceipt:
    """The provider's signed receipt from an answer's view, its signature checked."""
    signed = SignedReceipt.from_json({**view, "amount": view["asked"]})
    signed.verify(receipt_domain(network.data["deployments"], network.data["rpc_url"]))
    return signed


def test_an_agent_pays_a_10_step_tool_loop_with_x402_exact(network: Network, x402_gateway: Gateway) -> None:
    # Prepare
    key = fresh_payer(network)
    stable = contracts_of(network).stable
    before = stable.balance_of(key.address)

    # Execute
    views = asyncio.run(tool_loop(x402_gateway.url, payer_client(key, stable.address)))

    # Assert: ten receipts, each verified; each payment charged its receipt and refunded the rest
    receipts = [receipt_of(network, view) for view in views]
    assert len(receipts) == 10
    for view, receipt in zip(views, receipts, strict=True):
        x402 = view["x402"]
        assert x402["scheme"] == "exact" and x402["payer"].lower() == key.address.lower()
        assert int(x402["charged"]) == receipt.receipt.amount > 0
        assert int(x402["refunded"]) == int(x402["paid"]) - receipt.receipt.amount
    assert stable.balance_of(key.address) == before - sum(r.receipt.amount for r in receipts)


def test_an_agent_pays_a_10_step_tool_loop_with_an_x402_session(network: Network, x402_gateway: Gateway) -> None:
    # Prepare
    key = fresh_payer(network)
    contracts = contracts_of(network)
    stable, channels = contracts.stable, contracts.channels
    before = stable.balance_of(key.address)
    client, scheme = session_client(network, key)

    # Execute: the loop, then the agent closes its session
    views = asyncio.run(tool_loop(x402_gateway.url, client))
    closing = scheme.close()

    # Assert: ten receipts in the answers, the same ten checked by the plugin, all verified
    receipts = [receipt_of(network, view) for view in views]
    assert len(receipts) == 10
    assert {r.receipt.request_id for r in receipts} == {r.receipt.request_id for r in scheme.receipts()}
    for view, receipt in zip(views, receipts, strict=True):
        assert view["x402"]["scheme"] == "session" and int(view["x402"]["charged"]) == receipt.receipt.amount
    paid = sum(r.receipt.amount for r in receipts)
    assert scheme.paid() == paid > 0
    # one channel, from the agent's key to the gateway, which redeemed exactly the receipts and,
    # asked by the agent, closed it and sent the rest back at once (a cooperative close): the
    # wallet is short by exactly the receipts, with nothing left to withdraw
    (channel_id,) = closing
    state = channels.channel(channel_id)
    assert state.payer == key.address and state.provider.lower() == x402_gateway.address.lower()
    assert state.spent == paid and state.closes_at > 0 and state.deposit == state.spent
    assert before - stable.balance_of(key.address) == paid


def test_a_replayed_session_payment_is_refused_by_the_gateway(network: Network, x402_gateway: Gateway) -> None:
    # Prepare: one session payment, signed for one request
    key = fresh_payer(network)
    client, _ = session_client(network, key)
    url = f"{x402_gateway.url}/v1/chat/completions"
    body = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    required = httpx.post(url, json=body, timeout=30)
    http = x402HTTPClient(client)
    payment_required = http.get_payment_required_response(required.headers.get, required.json())
    header = dict(http.encode_payment_signature_header(asyncio.run(client.create_payment_payload(payment_required))))

    # Execute
    first = httpx.post(url, json=body, headers=header, timeout=120)
    again = httpx.post(url, json=body, headers=header, timeout=120)

    # Assert
    assert first.status_code == 200, first.text
    assert first.json()["allmende"]["x402"]["scheme"] == "session"
    assert again.status_code == 402 and "nonce_already_used" in again.json()["error"]["message"], again.text


CONCURRENT = 32


async def concurrent_chats(url: str, clients: list[x402Client], body: dict[str, Any]) -> list[dict[str, Any]]:
    """One request per client, all at once (a client may appear many times: one agent's
    concurrent requests); each answer's `allmende` view. No retries: one refusal fails."""
    transports = {id(c): httpx.AsyncClient(transport=x402_httpx_transport(c), timeout=300) for c in clients}
    try:
        agents = {
            key: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", http_client=http, max_retries=0)
            for key, http in transports.items()
        }
        replies = await asyncio.gather(*(agents[id(c)].chat.completions.create(**body) for c in clients))
    finally:
        for http in transports.values():
            await http.aclose()
    return [reply.model_extra["allmende"] for reply in replies]  # type: ignore[index]


def test_32_exact_payers_at_once_each_pay_exactly_their_receipt(network: Network, x402_gateway: Gateway) -> None:
    # Prepare: 32 fresh wallets with 1 dUSD each (minted: the devnet token's own faucet)
    contracts = contracts_of(network)
    minter = fresh_payer(network)
    as_minter = Contracts(ChainClient(network.data["rpc_url"], bytes(minter.key)), contracts.deployment)
    payers = [Account.create() for _ in range(CONCURRENT)]
    for payer in payers:
        as_minter.stable.mint(payer.address, 10**6)
    body = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

    # Execute: every payer's request at once, each paid with the SDK's `exact`
    views = asyncio.run(
        concurrent_chats(x402_gateway.url, [payer_client(p, contracts.stable.address) for p in payers], body)
    )

    # Assert: all served, each wallet short by exactly its own receipt
    for payer, view in zip(payers, views, strict=True):
        receipt = receipt_of(network, view)
        assert view["x402"]["scheme"] == "exact" and view["x402"]["payer"].lower() == payer.address.lower()
        assert int(view["x402"]["charged"]) == receipt.receipt.amount > 0
        assert contracts.stable.balance_of(payer.address) == 10**6 - receipt.receipt.amount


def test_32_requests_at_once_from_one_session_are_charged_exactly_their_receipts(
    network: Network, x402_gateway: Gateway
) -> None:
    # Prepare: one agent, its session scheme with the async client's hook (chain work off the loop)
    key = fresh_payer(network)
    channels = contracts_of(network).channels
    body = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    client, scheme = session_client(network, key, hook=True)

    # Execute: 32 requests at once on one session, then the agent closes it
    views = asyncio.run(concurrent_chats(x402_gateway.url, [client] * CONCURRENT, body))
    closing = scheme.close()

    # Assert: all 32 served and charged their receipts; the plugin checked exactly those; the
    # gateway redeemed exactly their sum from the one channel
    receipts = [receipt_of(network, view) for view in views]
    for view, receipt in zip(views, receipts, strict=True):
        assert view["x402"]["scheme"] == "session" and int(view["x402"]["charged"]) == receipt.receipt.amount > 0
    assert {r.receipt.request_id for r in receipts} == {r.receipt.request_id for r in scheme.receipts()}
    (channel_id,) = closing
    assert channels.channel(channel_id).spent == scheme.paid() == sum(r.receipt.amount for r in receipts)


def test_a_later_session_pays_from_the_same_channel_through_the_gateway_with_no_transaction(
    network: Network, x402_gateway: Gateway
) -> None:
    # Prepare: a first session of two requests, ended (its last voucher to the gateway)
    key = fresh_payer(network)
    contracts = contracts_of(network)
    channels, w3 = contracts.channels, contracts.client.w3
    body = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    first_client, first = session_client(network, key)
    views = asyncio.run(concurrent_chats(x402_gateway.url, [first_client, first_client], body))
    first.end()
    (opened,) = first.sessions.values()
    transactions = w3.eth.get_transaction_count(key.address)

    # Execute: another process of the same wallet, no state, pays two more; then it closes
    second_client, second = session_client(network, key)
    views += asyncio.run(concurrent_chats(x402_gateway.url, [second_client, second_client], body))
    sent_for_them = w3.eth.get_transaction_count(key.address) - transactions
    (channel_id,) = second.close()

    # Assert: one channel, no transaction of the agent's for the second session; the gateway
    # redeemed exactly the four receipts, and its relay balance went into its provider channels
    # (the protocol fee is paid there, once)
    receipts = [receipt_of(network, view) for view in views]
    assert channel_id == opened.channel_id and sent_for_them == 0
    assert channels.channel(channel_id).spent == second.paid() == sum(r.receipt.amount for r in receipts) > 0
    assert channels.relay_balance(x402_gateway.address) == 0

"""An agent pays for its own inference (issue 31, the agent client): a fresh key, funded by
the devnet faucet, runs a 10-step tool-calling loop with the official `openai` client whose
httpx transport is `allmende.agent` (providers found on chain, channels opened and vouchers
signed from the agent's key, every receipt checked) — no gateway, no API key. Every step's
receipt verifies; on close the agent settles up and the providers redeem exactly its
receipts, so what the close gives back (deposit − spent) leaves its wallet short by exactly
the sum of its receipts. Its spending policy refuses a request before anything is signed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from eth_account import Account
from typer.testing import CliRunner

from allmende.agent import Agent, SpendingPolicy
from allmende.cli import app
from allmende.core import SignedReceipt
from allmende.core.errors import InvalidInput
from tests.e2e.conftest import Network

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


def funded_agent(network: Network, tmp_path: Path, **options: Any) -> Agent:
    """A fresh key with devnet dUSD and gas from the faucet (no ALM: it stakes nothing)."""
    key = Account.create()
    rpc = network.data["rpc_url"]
    given = CliRunner().invoke(app, ["faucet", key.address, "--network", rpc, "--alm", "0", "--usd", "50"])
    assert given.exit_code == 0, given.output
    return Agent(key="0x" + bytes(key.key).hex(), network=rpc, state_dir=tmp_path / "agent", **options)


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_an_agent_pays_for_a_10_step_tool_loop_from_its_own_wallet_with_no_gateway(
    network: Network, tmp_path: Path
) -> None:
    # Prepare
    agent = funded_agent(network, tmp_path)
    token, channels = agent.contracts.stable, agent.contracts.channels
    before = token.balance_of(agent.address)
    client = openai.OpenAI(base_url=agent.base_url, api_key="unused", http_client=agent.http_client(), max_retries=0)

    # Execute: 5 rounds of a forced tool call, the tool's result, the model's answer
    steps = 0
    for city in CITIES:
        asked = [{"role": "user", "content": f"What is the weather in {city}?"}]
        call = client.chat.completions.create(
            model=MODEL, messages=asked, tools=[WEATHER], temperature=0, max_tokens=24,  # type: ignore[arg-type, list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )  # fmt: skip
        message = call.choices[0].message
        (tool_call,) = message.tool_calls or []
        result = f"18 degrees and sunny in {json.loads(tool_call.function.arguments)['city']}"
        answer = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=12, tools=[WEATHER], tool_choice="none",  # type: ignore[list-item]
            messages=[*asked, message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": tool_call.id,
                                                                       "content": result}],  # type: ignore[list-item]
        )  # fmt: skip
        assert answer.choices[0].message.content
        assert call.model_extra and answer.model_extra and "allmende" in answer.model_extra  # the receipt's view
        steps += 2

    # Assert: ten receipts, each signed by its provider for this agent's request
    domain = agent.contracts.registry.receipt_domain()
    receipts = [SignedReceipt.from_json(r) for r in agent.receipts()]
    assert steps == len(receipts) == 10
    for receipt in receipts:
        receipt.verify(domain)
    paid = sum(r.receipt.amount for r in receipts)
    assert paid > 0

    # Execute: settle up and close; the providers redeem what they are owed
    closing = agent.close()
    assert closing
    owed = {cid: agent.store.total_owed(cid) for cid in closing}
    wait_until("every provider to redeem", lambda: all(channels.channel(c).spent == owed[c] for c in closing), 120)

    # Assert: the channels paid exactly the receipts, and what comes back after the close delay
    # (Channels.withdraw: deposit − spent, tested in tests/contracts) leaves the wallet short by
    # exactly that. The clock is not moved here: the session chain is shared with other tests,
    # and an x402 authorization signed by the host's clock would look expired to a chain ahead.
    states = [channels.channel(c) for c in closing]
    assert all(s.payer == agent.address and s.closes_at > 0 for s in states)
    comes_back = sum(s.deposit - s.spent for s in states)
    assert before - (token.balance_of(agent.address) + comes_back) == paid == sum(owed.values())
    with pytest.raises(InvalidInput, match="cannot be withdrawn yet"):
        agent.withdraw(closing)  # the close delay has not passed
    agent.shutdown()


def test_a_spending_cap_refuses_before_anything_is_signed(network: Network, tmp_path: Path) -> None:
    agent = funded_agent(network, tmp_path, policy=SpendingPolicy(per_request=10, models=frozenset({MODEL})))
    client = openai.OpenAI(base_url=agent.base_url, api_key="unused", http_client=agent.http_client(), max_retries=0)

    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    with pytest.raises(openai.APIStatusError) as not_allowed:
        client.embeddings.create(model="minilm", input="the commons")

    assert refused.value.status_code == 402 and "per-request cap of 10" in str(refused.value)
    assert not_allowed.value.status_code in (402, 404)  # not in the allowed models (or not served by that name)
    assert agent.store.all_channels() == [] and agent.receipts() == []  # no channel opened, nothing signed
    agent.shutdown()

"""The agent client under a crowd (#31): 32 requests at once through one agent's async client
(its aiohttp path to the providers, its channels, vouchers and receipt checks, all in the
agent's process), and a few agents at once, against the shared network's providers: no
retries, every answer carries a receipt that verifies, and on every channel the agent's
cumulative voucher is exactly the sum of its receipts, to the unit."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import openai

from allmende.agent import Agent
from allmende.core import SignedReceipt
from tests.e2e.conftest import Network
from tests.e2e.test_agent_client import funded_agent, wait_until

MODEL = "allmende:tiny"
CROWD = 32


async def crowd(agent: Agent, requests: int, tag: str) -> list[Any]:
    client = openai.AsyncOpenAI(
        base_url=agent.base_url, api_key="unused", http_client=agent.async_http_client(), max_retries=0, timeout=120
    )
    async with client:
        try:
            return await asyncio.gather(*(
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"{tag} {i}: hello"}], max_tokens=8
                )
                for i in range(requests)
            ))  # fmt: skip
        finally:
            await agent.upstream.aclose()  # its aiohttp session belongs to this event loop


def check_books(agent: Agent, answers: list[Any]) -> None:
    """Every answer's receipt verifies and is one the agent paid; per (channel, model) the
    voucher the agent signs is the sum of its receipts there."""
    domain = agent.contracts.registry.receipt_domain()
    shown = []
    for answer in answers:
        view = (answer.model_extra or {})["allmende"]
        signed = SignedReceipt.from_json({**view, "amount": view["asked"]})
        signed.verify(domain)
        assert signed.receipt.amount > 0
        shown.append(signed.receipt)
    paid = [SignedReceipt.from_json(r).receipt for r in agent.receipts()]
    assert {r.request_id for r in shown} == {r.request_id for r in paid}
    assert len(paid) == len(answers)
    by_provider: dict[tuple[str, bytes], int] = defaultdict(int)
    for receipt in paid:
        by_provider[(receipt.provider.lower(), receipt.model_id)] += receipt.amount
    channels = {provider.lower(): channel_id for provider, channel_id, _ in agent.store.all_channels()}
    for (provider, model_id), amount in by_provider.items():
        owed, signed = agent.store.owed(channels[provider], model_id)
        assert owed == amount and signed <= owed, (provider, amount, owed, signed)
    assert sum(agent.store.total_owed(c) for c in channels.values()) == sum(r.amount for r in paid)


def settle_and_check(agent: Agent) -> list[bytes]:
    """Settle up and close: the voucher each provider now holds, and what it redeems on
    chain, is the sum of the agent's receipts from it, to the unit."""
    paid: dict[str, int] = defaultdict(int)
    for receipt in (SignedReceipt.from_json(r).receipt for r in agent.receipts()):
        paid[receipt.provider.lower()] += receipt.amount
    closing = agent.close()
    channels = agent.contracts.channels
    owners = {c: channels.channel(c).provider.lower() for c in closing}
    assert sorted(owners.values()) == sorted(paid)
    wait_until(
        "every provider to redeem the agent's vouchers",
        lambda: all(channels.channel(c).spent == paid[owners[c]] for c in closing),
        120,
    )
    return closing


def test_32_requests_at_once_through_one_agent_client(network: Network, tmp_path: Path) -> None:
    # Prepare
    agent = funded_agent(network, tmp_path)
    try:
        # Execute: 32 chat requests at once, no retries
        answers = asyncio.run(crowd(agent, CROWD, "crowd"))

        # Assert: 32 answers, each with a receipt that verifies; the vouchers pay exactly them
        assert len(answers) == CROWD and all(a.choices[0].message.content is not None for a in answers)
        check_books(agent, answers)
        settle_and_check(agent)
    finally:
        agent.shutdown()


def test_eight_agents_at_once_each_pay_their_own_receipts(network: Network, tmp_path: Path) -> None:
    # Prepare: eight agents, each with its own key and channels
    agents = [funded_agent(network, tmp_path / f"a{i}") for i in range(8)]
    try:
        # Execute: four requests at once from each, all agents at once (32 in flight)
        async def everyone() -> list[list[Any]]:
            return list(await asyncio.gather(*(crowd(agent, 4, f"agent {i}") for i, agent in enumerate(agents))))

        answers = asyncio.run(everyone())

        # Assert: each agent's books hold exactly its own four receipts
        for agent, own in zip(agents, answers, strict=True):
            check_books(agent, own)
    finally:
        for agent in agents:
            agent.shutdown()

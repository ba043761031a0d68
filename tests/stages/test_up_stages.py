"""`allmende up --stages 3`: the default chat model split into three pipeline stages over four
provider processes (`--provider-stages 0,1,1,2`: the middle stage has a spare), its stages
registered on chain, and the gateway's `/v1/chat/completions` answering through the chain,
with the official `openai` client.

One network for the module. Every answer is compared with the whole (unsharded) model's
greedy answer, computed in this process; the middle stage's provider is killed with SIGKILL
after some tokens of a stream, and the stream completes with the same text; every stage is
paid through its own channel, its vouchers redeemed on chain by its provider."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from openai import AsyncOpenAI, OpenAI
from typer.testing import CliRunner

from allmende.agent import Agent, SpendingPolicy
from allmende.api.canonical import checked
from allmende.api.stages import INFO_PATH
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.stages import registered_stages
from allmende.cli import app as cli
from allmende.core import SignedReceipt
from allmende.engine import DEFAULT_CHAT_MODEL, Engine, SamplingParams, collect
from allmende.engine.base import ChatPrompt
from allmende.node.supervisor import NetworkInfo
from allmende.payer.store import GatewayStore
from allmende.testing.network import start_network, stop_network
from tests.conftest import wait_for

MODEL = DEFAULT_CHAT_MODEL
MAX_TOKENS = 24
PROMPTS = (
    "What is the capital of France?",
    "Write two sentences about the sea.",
    "List three colours.",
)
LONG = "Tell me a short story about a lighthouse keeper."  # an answer longer than MAX_TOKENS
KEY = "open"  # the API key the tests use; "tight" has a budget of BUDGET units
BUDGET = 300
AUTH = {"authorization": f"Bearer {KEY}"}


@dataclass
class Staged:
    root: Path
    data: NetworkInfo

    @property
    def client(self) -> OpenAI:
        return OpenAI(base_url=self.data["gateway_url"], api_key=KEY, max_retries=0, timeout=300)

    @property
    def reader(self) -> Contracts:
        return Contracts(ChainClient(self.data["rpc_url"]), Deployment.load(Path(self.data["deployments"])))

    def stage_info(self) -> list[dict[str, Any]]:
        """Each live provider's /v1/stage/info, with its pid (providers in network.json order)."""
        rows = []
        for provider in self.data["providers"]:
            try:
                info = httpx.get(provider["url"] + INFO_PATH, timeout=5).json()
            except httpx.HTTPError:
                continue
            rows.append({**info, "pid": provider["pid"], "url": provider["url"]})
        return rows


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    root = tmp_path_factory.mktemp("up-stages")
    process, data = start_network(
        root,
        "--providers",
        "4",
        "--stages",
        "3",
        "--provider-stages",
        "0,1,1,2",  # a spare for the middle stage, which a test kills; one provider for each other stage
        "--provider-option=--redeem-threshold=1",  # each stage provider redeems its vouchers at once
        f"--gateway-option=--api-key={KEY}",
        "--gateway-option=--api-key=tight",
        f"--gateway-option=--budget=tight={BUDGET}",
        claim_models=False,
    )
    try:
        yield Staged(root, data)
    finally:
        stop_network(process)


@cache
def whole_answer(whole: Engine, question: str, max_tokens: int = MAX_TOKENS) -> tuple[str, int, str]:
    """(text, tokens, finish reason) of the whole model's greedy answer. Greedy, so computed once
    per question and length: the tests ask the same questions again (both kinds of answer, the
    kill test's and the agent's later requests), and each answer took seconds of CPU here."""
    prompt = whole.prompt_ids(ChatPrompt.of([{"role": "user", "content": question}]))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    done = asyncio.run(collect(whole.generate(prompt, params), len(prompt)))
    return done.text, done.completion_tokens, done.finish_reason


def ask(staged: Staged, question: str, stream: bool, max_tokens: int = MAX_TOKENS) -> tuple[str, int, str]:
    messages: Any = [{"role": "user", "content": question}]
    client = staged.client
    if not stream:
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)
        assert reply.usage is not None
        return reply.choices[0].message.content or "", reply.usage.completion_tokens, reply.choices[0].finish_reason
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, tokens, finish = "", 0, ""
    for chunk in chunks:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, tokens, finish


def test_the_stages_are_registered_and_offered_on_chain(staged: Staged) -> None:
    reader = staged.reader
    base = reader.models.model_by_name(MODEL)
    assert base is not None
    stages = sorted(registered_stages(reader, base), key=lambda s: s.range.start)
    assert [(s.range.start, s.range.end) for s in stages] == [(0, 10), (10, 20), (20, 30)]
    offered = [len(reader.registry.providers_of(s.stage_id)) for s in stages]
    assert offered == [1, 2, 1]  # the stage named for each provider
    ids = {s.stage_id_hex for s in stages}
    assert {row["stage"] for row in staged.stage_info()} == ids  # each provider serves what it offers
    models = [m.id for m in staged.client.models.list().data]
    assert models == [MODEL]  # the model by its name; its stages are no models a client asks for


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_greedy_answers_through_the_gateway_are_the_whole_models(staged: Staged, whole: Engine, stream: bool) -> None:
    for question in PROMPTS:
        assert ask(staged, question, stream) == whole_answer(whole, question), question


def owed_per_stage(staged: Staged) -> dict[tuple[bytes, bytes], int]:
    """What the gateway's store says it owes, per (channel, stage id)."""
    reader = staged.reader
    base = reader.models.model_by_name(MODEL)
    assert base is not None
    stage_ids = [s.stage_id for s in registered_stages(reader, base)]
    store = GatewayStore(staged.root / "run" / "gateway" / "gateway.db")
    return {
        (channel, stage_id): store.owed(channel, stage_id)[0]
        for _, channel, _ in store.all_channels()
        for stage_id in stage_ids
    }


def test_every_stage_is_paid_through_its_own_channel_and_redeemed(staged: Staged) -> None:
    reader = staged.reader
    base = reader.models.model_by_name(MODEL)
    assert base is not None
    stage_ids = [s.stage_id for s in registered_stages(reader, base)]
    store = GatewayStore(staged.root / "run" / "gateway" / "gateway.db")
    before = owed_per_stage(staged)
    ask(staged, PROMPTS[0], stream=False)
    after = owed_per_stage(staged)
    earned = {key: amount for key, amount in after.items() if amount > before.get(key, 0)}
    assert {stage_id for _, stage_id in earned} == set(stage_ids)  # every stage of this answer earned something
    assert len(earned) == 3  # one provider per stage, each on its own channel

    def redeemed() -> bool:
        return all(reader.channels.redeemed(channel, stage) >= amount for (channel, stage), amount in earned.items())

    wait_for("every stage provider redeemed its vouchers", redeemed, 90)
    assert reader.models.owner_of(base) == staged.data["accounts"]["deployer_and_treasury"]  # up registered them
    providers = {channel: provider for provider, channel, _ in store.all_channels()}
    for channel, _ in earned:
        assert reader.channels.earnings(to_checksum_address(providers[channel])) > 0  # its share, on chain


def test_a_stream_its_client_abandons_still_pays_every_stage_for_its_calls(staged: Staged) -> None:
    before = owed_per_stage(staged)
    body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}], "max_tokens": 40, "stream": True}
    pieces = 0
    with httpx.stream(
        "POST", staged.data["gateway_url"] + "/chat/completions", json=body, headers=AUTH, timeout=300
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            pieces += line.startswith("data: {") and '"content":"' in line
            if pieces == 3:
                break  # and hang up
    assert pieces == 3

    def every_stage_owed_more() -> bool:
        after = owed_per_stage(staged)
        return (
            len({stage for key, (_, stage) in zip(after, after, strict=True) if after[key] > before.get(key, 0)}) == 3
        )

    wait_for("the calls of the abandoned stream owed at every stage", every_stage_owed_more, 120)
    # and the session closed at every stage (a hang-up cancels the gateway's stream: the closing
    # must not be cancelled with it, or the stages keep the session's caches)
    wait_for("the abandoned session closed at every stage", partial(_no_sessions, staged.stage_info), 60)


def test_an_api_keys_budget_holds_on_a_staged_model(staged: Staged) -> None:
    """The key is charged exactly what the stages' receipts say (a position per stage, a draw
    at the last), and a request whose most cost would pass its budget is refused before any
    stage works for it."""
    store = GatewayStore(staged.root / "run" / "gateway" / "gateway.db")
    tight = OpenAI(base_url=staged.data["gateway_url"], api_key="tight", max_retries=0, timeout=300)
    messages: Any = [{"role": "user", "content": PROMPTS[0]}]
    assert store.spent("tight") == 0
    reply = tight.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert reply.usage is not None and reply.choices[0].finish_reason == "stop"
    prompt, answer = reply.usage.prompt_tokens, reply.usage.completion_tokens
    spent = store.spent("tight")
    assert spent == 3 * (prompt + answer) + (answer + 1)  # 3 stages at 1 unit a position; answer and EOS drawn
    most = 3 * (prompt + MAX_TOKENS) + MAX_TOKENS
    assert most <= BUDGET < spent + most
    with pytest.raises(openai.APIStatusError) as refused:
        tight.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert refused.value.status_code == 402
    assert store.spent("tight") == spent


def test_bad_requests_get_openai_errors(staged: Staged) -> None:
    reply = httpx.post(
        staged.data["gateway_url"] + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 3}},
        headers=AUTH,
        timeout=60,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "logit_bias"
    stage = staged.stage_info()[0]["stage"]
    reply = httpx.post(
        staged.data["gateway_url"] + "/chat/completions",
        json={"model": stage, "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
        timeout=60,
    )
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"


def test_the_middle_stage_killed_mid_stream_completes_the_stream(staged: Staged, whole: Engine) -> None:
    """The provider of the middle stage that holds the session is killed after 4 pieces of
    text: the gateway replaces it with the spare, which rebuilds the KV cache by replay, and
    the stream carries on with the whole model's text."""
    max_tokens = 40
    expected, tokens, _ = whole_answer(whole, LONG, max_tokens)
    assert tokens == max_tokens  # long enough to be cut in the middle
    middle = [row for row in staged.stage_info() if row["blocks"][:2] == [10, 20]]
    assert len(middle) == 2
    wait_for("earlier tests' sessions closed", partial(_no_sessions, staged.stage_info), 60)
    chunks = staged.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": LONG}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    text, before_kill, after_kill, killed = "", 0, 0, None
    for chunk in chunks:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if not piece:
            continue
        text += piece
        if killed is None:
            before_kill += 1
            if before_kill == 4:
                counts = [httpx.get(row["url"] + INFO_PATH, timeout=5).json()["sessions"] for row in middle]
                holding = [row for row, count in zip(middle, counts, strict=True) if count]
                assert len(holding) == 1, counts  # the one stage provider this stream goes through
                killed = holding[0]
                pid = int(killed["pid"])
                os.kill(pid, signal.SIGKILL)
                wait_for("the middle stage provider to die", partial(_dead, pid), 10)
        else:
            after_kill += 1
    assert killed is not None and before_kill == 4
    assert after_kill > 0  # the kill came mid-stream: text arrived after it
    assert text == expected
    spare = next(row for row in middle if row is not killed)
    # the session is closed there (the gateway closes it in a task of its own once the stream has
    # ended, so the client may see the end first)
    wait_for(
        "the spare to close the session",
        lambda: httpx.get(spare["url"] + INFO_PATH, timeout=5).json()["sessions"] == 0,
        30,
    )
    assert ask(staged, PROMPTS[1], stream=False) == whole_answer(whole, PROMPTS[1])  # later requests use the spare


def test_32_concurrent_clients_all_get_the_whole_models_answers(staged: Staged, whole: Engine) -> None:
    questions = [f"Count from {i} to {i + 3}." for i in range(8)]
    expected = {q: whole_answer(whole, q, 8) for q in questions}

    async def one(client: AsyncOpenAI, i: int) -> tuple[str, tuple[str, int, str]]:
        question = questions[i % len(questions)]
        messages: Any = [{"role": "user", "content": question}]
        if i % 2:
            reply = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
            assert reply.usage is not None
            content = reply.choices[0].message.content or ""
            return question, (content, reply.usage.completion_tokens, reply.choices[0].finish_reason)
        chunks = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, tokens, finish = "", 0, ""
        async for chunk in chunks:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return question, (text, tokens, finish)

    async def run() -> list[tuple[str, tuple[str, int, str]]]:
        client = AsyncOpenAI(base_url=staged.data["gateway_url"], api_key=KEY, max_retries=0, timeout=600)
        async with client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    answers = asyncio.run(run())
    assert len(answers) == 32
    for question, answer in answers:
        assert answer == expected[question], question


def test_an_agent_with_no_gateway_pays_each_stage_from_its_own_wallet(
    staged: Staged, whole: Engine, tmp_path: Path
) -> None:
    """The agent client (issue 31) routes a chain of stages itself: a fresh key funded by the
    faucet, no gateway in the path, each stage provider paid from the agent's own channels
    exactly what its receipts say, and its per-model cap counting what the stages were paid."""
    # Prepare: a fresh key with devnet dUSD; the agent serves the staged model in its own process
    key = Account.create()
    rpc = staged.data["rpc_url"]
    given = CliRunner().invoke(cli, ["faucet", key.address, "--network", rpc, "--alm", "0", "--usd", "50"])
    assert given.exit_code == 0, given.output
    secret = "0x" + bytes(key.key).hex()
    agent = Agent(key=secret, network=rpc, state_dir=tmp_path / "agent", stage_models=(MODEL,))
    client = OpenAI(base_url=agent.base_url, api_key="unused", http_client=agent.http_client(), max_retries=0)
    body: Any = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": MAX_TOKENS}

    # Execute
    reply = client.chat.completions.create(**body, temperature=0)

    # Assert: the whole model's greedy answer, one receipt per stage call, each verifying and
    # naming a registered stage; three channels, all the agent's, owing exactly the receipts
    assert reply.usage is not None
    got = (reply.choices[0].message.content or "", reply.usage.completion_tokens, reply.choices[0].finish_reason)
    assert got == whole_answer(whole, PROMPTS[1])
    base = staged.reader.models.model_by_name(MODEL)
    assert base is not None
    stage_ids = {s.stage_id for s in registered_stages(staged.reader, base)}
    domain = agent.contracts.registry.receipt_domain()
    receipts = [SignedReceipt.from_json(r) for r in agent.receipts()]
    for receipt in receipts:
        receipt.verify(domain)
    assert {r.receipt.model_id for r in receipts} == stage_ids
    paid = sum(r.receipt.amount for r in receipts)
    channels = [channel for _, channel, _ in agent.store.all_channels()]
    assert len(channels) == 3
    assert all(agent.contracts.channels.channel(c).payer == agent.address for c in channels)
    assert sum(agent.store.total_owed(c) for c in channels) == paid > 0

    # Execute: settle up; every stage provider redeems what the agent owes it
    closing = agent.close()
    agent.shutdown()
    owed = {(c, s): agent.store.owed(c, s)[0] for c in channels for s in stage_ids}
    reader = staged.reader

    # Assert: on chain, each (channel, stage) redeemed exactly what the agent's receipts owe
    wait_for(
        "every stage provider to redeem the agent's vouchers",
        lambda: all(reader.channels.redeemed(c, s) == amount for (c, s), amount in owed.items()),
        90,
    )
    assert set(closing) == set(channels)

    # Execute: the same wallet again, now with a cap on the model of what was paid plus one
    # request's most: the stages' receipts count against it, so the next request is refused
    again = Agent(key=secret, network=rpc, state_dir=tmp_path / "agent", stage_models=(MODEL,))
    offer, most = again.service.most_cost(checked("chat", body))
    capped = Agent(
        key=secret,
        network=rpc,
        state_dir=tmp_path / "agent",
        stage_models=(MODEL,),
        policy=SpendingPolicy(per_model={offer.name: paid + most - 1}),
    )
    again.shutdown()
    capped_client = OpenAI(base_url=capped.base_url, api_key="unused", http_client=capped.http_client(), max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        capped_client.chat.completions.create(**body, temperature=0)

    # Assert: refused before anything was signed (no new receipt)
    assert refused.value.status_code == 402
    assert "spending_cap_reached" in str(refused.value.body)
    assert len(capped.receipts()) == len(receipts)
    capped.shutdown()


def _no_sessions(rows: Callable[[], list[dict[str, Any]]]) -> bool:
    return all(row["sessions"] == 0 for row in rows())


def _dead(pid: int) -> bool:
    """Gone, or a zombie its parent (`up`) has not reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"

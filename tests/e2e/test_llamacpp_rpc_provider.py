"""`allmende up --provider-option=--llamacpp-rpc=A,B`: one provider on chain whose model's layers
run on two `ggml-rpc-server`s besides its own CPU, through the gateway with the official
`openai` client. The answers are the local engine's and their receipts pass the gateway's
check (same model id, same offer), also for 32 clients at once; a server killed afterwards fails the next request with a
clear error from the provider (503 `rpc_server_lost`, which the gateway reports, with no
other provider to fail over to), not a hang, and the provider process lives on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, collect, load_engine
from allmende.engine.llamacpp import LlamaCppEngine
from allmende.testing.network import start_network, stop_network
from allmende.testing.rpc_servers import RpcServer

QUESTIONS = ("What is the capital of France?", "Name three colours.")
CROWD = 32


async def crowd(gateway_url: str) -> tuple[list[ChatCompletion], int]:
    """CROWD chat requests at once (the official async client, no retries) and the most the
    gateway had in flight meanwhile (its /healthz, read every 20 ms)."""
    client = openai.AsyncOpenAI(base_url=gateway_url, api_key="unused", max_retries=0, timeout=300)
    peak, done = 0, asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        async with httpx.AsyncClient(timeout=5) as http:
            while not done.is_set():
                health = (await http.get(gateway_url.removesuffix("/v1") + "/healthz")).json()
                peak = max(peak, int(health["in_flight"]))
                await asyncio.sleep(0.02)

    async def one(i: int) -> ChatCompletion:
        return await client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=[{"role": "user", "content": f"{QUESTIONS[i % 2]} ({i})"}],
            max_tokens=8,
            temperature=0,
        )

    watcher = asyncio.create_task(watch())
    try:
        answers = await asyncio.gather(*(one(i) for i in range(CROWD)))
    finally:
        done.set()
        await watcher
        await client.close()
    return list(answers), peak


def test_a_provider_over_two_rpc_servers_serves_the_local_answers_and_reports_a_lost_server(tmp_path: Path) -> None:
    servers = [RpcServer(tmp_path / "a.log"), RpcServer(tmp_path / "b.log")]
    endpoints = ",".join(s.endpoint for s in servers)
    process, network = start_network(
        tmp_path / "up",
        "--providers",
        "1",
        "--model",
        DEFAULT_CHAT_MODEL,
        f"--provider-option=--llamacpp-rpc={endpoints}",
        "--provider-option=--llamacpp-threads=1",
    )
    try:
        client = openai.OpenAI(base_url=network["gateway_url"], api_key="unused", max_retries=0, timeout=120)
        local = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1, engine="llamacpp", threads=1)
        assert isinstance(local, LlamaCppEngine)
        params = SamplingParams(max_tokens=16, temperature=0.0)
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            reply = client.chat.completions.create(
                model=DEFAULT_CHAT_MODEL,
                messages=messages,
                max_tokens=16,
                temperature=0,  # type: ignore[arg-type]
            )
            prompt = local.prompt_ids(prompt_of("chat", {"messages": messages}))
            expected = asyncio.run(collect(local.generate(prompt, params), len(prompt)))
            assert reply.choices[0].message.content == expected.text
        provider = network["providers"][0]
        assert f"the others on RPC servers {endpoints.replace(',', ', ')}" in Path(provider["log"]).read_text()

        # a crowd: 32 clients at once, no retries, every one answered through the RPC servers
        answers, peak = asyncio.run(crowd(network["gateway_url"]))
        assert [a.choices[0].finish_reason in ("stop", "length") for a in answers] == [True] * CROWD
        assert all(a.choices[0].message.content and a.usage and a.usage.completion_tokens >= 1 for a in answers)
        assert peak >= CROWD // 2, f"the requests did not overlap (peak in flight at the gateway {peak})"

        servers[1].kill()
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(
                model=DEFAULT_CHAT_MODEL,
                messages=[{"role": "user", "content": QUESTIONS[0]}],
                max_tokens=16,
                temperature=0,
            )
        assert failed.value.status_code == 503 and "rpc_server_lost" in str(failed.value)
        assert httpx.get(f"{provider['url']}/healthz", timeout=5).status_code == 200  # alive, not aborted
    finally:
        stop_network(process)
        for server in servers:
            server.stop()

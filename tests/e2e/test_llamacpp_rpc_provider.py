"""`allmende up --provider-option=--llamacpp-rpc=A,B`: one provider on chain whose model's layers
run on two `ggml-rpc-server`s besides its own CPU, through the gateway with the official
`openai` client. The answers are the local engine's and their receipts pass the gateway's
check (same model id, same offer); a server killed afterwards fails the next request with a
clear error from the provider (503 `rpc_server_lost`, which the gateway reports, with no
other provider to fail over to), not a hang, and the provider process lives on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, collect, load_engine
from allmende.engine.llamacpp import LlamaCppEngine
from allmende.testing.network import start_network, stop_network
from allmende.testing.rpc_servers import RpcServer

QUESTIONS = ("What is the capital of France?", "Name three colours.")


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

"""`allmende status` on a running network, and a gateway that requires API keys."""

from __future__ import annotations

import openai
import pytest
from typer.testing import CliRunner

from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.node.supervisor import allmende_command, start
from tests.e2e.conftest import Network


def test_status_reads_the_network_from_chain(network: Network) -> None:
    done = CliRunner().invoke(app, ["status", "--state-dir", str(network.root)])  # in this process: ~1.5 s less CPU
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "treasury" in done.stdout and network.data["providers"][0]["address"][:10] in done.stdout


def test_gateway_with_api_keys_answers_401_for_a_wrong_key(network: Network) -> None:
    port = free_port()
    command = allmende_command(
        "gateway", "--rpc", network.data["rpc_url"], "--key", "devnet:8", "--deployments",
        network.data["deployments"], "--state-dir", str(network.root / "keyed"), "--port", str(port),
        "--api-key", "sk-right",
    )  # fmt: skip
    gateway = start(
        "keyed gateway", command, network.root / "keyed.log", f"http://127.0.0.1:{port}",
        ready=lambda health: health["providers"] > 0,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wrong = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.models.list()
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        right = openai.OpenAI(base_url=url, api_key="sk-right", max_retries=0)
        reply = right.chat.completions.create(
            model="allmende:tiny", messages=[{"role": "user", "content": "x"}], max_tokens=3
        )
        assert reply.usage.completion_tokens <= 3
    finally:
        gateway.stop()

"""Model names on a network started by `allmende up`: the providers that registered the
default models named them on chain, and a squatter cannot take those names over."""

from __future__ import annotations

import os

import openai
import pytest
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts
from allmende.chain.errors import ContractReverted
from allmende.cli import app
from tests.e2e.conftest import Network

SQUATTER = 7  # a devnet account `allmende up` gives no role in this network
TINY_ID = "0x11419bb2d012e4d1be2e2b08c0a5bf7989eee37483da38f27e1c13a8d3e9ab13"


def test_a_squatted_name_is_refused(network: Network) -> None:
    squatter = devnet_accounts(SQUATTER + 1)[SQUATTER]
    chain = Contracts(ChainClient(network.data["rpc_url"], squatter.key), Deployment.load(network.data["deployments"]))
    other = os.urandom(32)  # the squatter's own weights, registered under its own id
    chain.models.register(other, "MIT", 0)

    refused = []
    for squat in ("allmende:tiny", "allmende-t1ny", "minilm"):
        with pytest.raises(ContractReverted) as info:
            chain.models.set_name(other, squat)
        refused.append(info.value.reason)
    with pytest.raises(ContractReverted) as stranger:
        chain.models.set_name(bytes.fromhex(TINY_ID[2:]), "mine")  # renaming the real model
    by_cli = CliRunner().invoke(app, [  # in this process: no interpreter start-up, ~1.5 s less CPU
        "models", "name", "0x" + other.hex(), "Allmende:Tiny",
        "--key", f"devnet:{SQUATTER}", "--rpc", network.data["rpc_url"], "--deployments", network.data["deployments"],
    ])  # fmt: skip
    listed = {m.id: m.model_extra["allmende"]["model_id"] for m in network.client.models.list().data}
    with pytest.raises(openai.NotFoundError) as unserved:
        network.client.chat.completions.create(model="0x" + other.hex(), messages=[{"role": "user", "content": "hi"}])

    assert refused == ["models: name taken"] * 3
    assert stranger.value.reason == "models: not owner"
    assert by_cli.exit_code == 1 and isinstance(by_cli.exception, SystemExit), by_cli.output  # a refusal, no traceback
    assert f"belongs to model {TINY_ID}" in by_cli.stderr, by_cli.output
    assert chain.models.name_of(other) == "" and chain.models.model_by_name("allmende:tiny").hex() == TINY_ID[2:]
    assert listed["allmende:tiny"] == TINY_ID and len(listed) == 3  # tiny, minilm, smollm2
    assert unserved.value.status_code == 404

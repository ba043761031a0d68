"""The vault and the researcher's commands find the network as every command does, and a key that
cannot attest is refused before the evaluation spends ε."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.node.supervisor import spawn
from allmende.vault.datasets import load_table, write_table
from tests.vault.conftest import World

SPARE_ACCOUNT = 9  # no vault of the world uses it


def test_the_vault_finds_the_chain_in_the_deployments_file(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no --rpc and no $ALLMENDE_RPC: only the deployments file names the chain (a fresh
    # port, not the default 8545, where another devnet may listen)
    monkeypatch.delenv("ALLMENDE_RPC", raising=False)
    rows = np.random.default_rng().normal(size=(20, 3))
    data = write_table(world.root / "finds-the-chain.csv", ["a", "b", "c"], rows, (rows[:, 0] > 0).astype(int))
    port = free_port()

    # Execute
    command = [sys.executable, "-m", "allmende", "vault", "--key", f"devnet:{SPARE_ACCOUNT}", "--deployments",
               str(world.net.deployments), "--data", str(data), "--state-dir", str(world.root / "finds-the-chain"),
               "--port", str(port)]  # fmt: skip
    node = spawn("vault", command, world.root / "finds-the-chain.log", f"http://127.0.0.1:{port}")
    try:
        node.wait_healthy(60)
    finally:
        node.stop()

    # Assert: it registered its dataset on the deployments file's chain
    assert world.contracts["validator"].data.is_registered(load_table(data).dataset_id)


def test_attest_by_a_key_that_is_no_validator_spends_nothing(world: World) -> None:
    # Prepare: the coordinator (no validator) holds an evaluate grant on the held-out set
    coordinator = world.accounts["coordinator"]
    g = world.net.grant(world.vaults[0], coordinator.address, "evaluate", [world.base_id], 2.0, world.heldout_id)

    # Execute
    result = CliRunner().invoke(app, [
        "federated", "attest", "--vault", world.vaults[0].url, "--dataset", "0x" + world.heldout_id.hex(),
        "--grant", str(g), "--model", str(world.root / "base-model"), "--key", f"devnet:{coordinator.index}",
        "--rpc", world.net.rpc_url, "--deployments", str(world.net.deployments),
    ])  # fmt: skip

    # Assert: refused before the vault evaluated anything: no access, no ε spent
    assert result.exit_code == 1 and "is not an active validator" in result.output
    assert world.contracts["validator"].data.get_grant(g).epsilon_spent == 0

"""The data-custody world every vault test module shares (one per test package run):
anvil with the contracts, scikit-learn's digits split across 3 vault processes (CSV,
JSONL, Parquet), a held-out set in vault 0, a dataset with a one-row class in vault 2,
and a base model registered by its owner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from allmende.chain import Contracts
from allmende.chain.anvil import DevnetAccount
from allmende.cli import app
from allmende.testing.vaults import LocalVault, VaultNetwork, signed_post, start_vault_network
from allmende.vault.flower import FederatedConfig
from allmende.vault.model import ModelSpec, save_model, train

SPEC = ModelSpec(64, 10)
CONFIG = FederatedConfig(rounds=3, steps=25, lr=2.0, noise=2.0, clipping_norm=5.0, secagg=True)


@dataclass
class World:
    net: VaultNetwork
    contracts: dict[str, Contracts]  # by role
    accounts: dict[str, DevnetAccount]
    vaults: list[LocalVault]
    heldout_id: bytes
    heldout: tuple[np.ndarray, np.ndarray]
    rare_id: bytes  # vault 2: 9 classes of digits and a single row of class 9
    base_params: list[np.ndarray]
    base_id: bytes
    root: Path


__all__ = ["signed_post"]  # signed for the vault, dataset and grant, with a fresh nonce (allmende.testing.vaults)


def cli(net: VaultNetwork, *args: str) -> str:
    """A command line on this network's chain, run in this process by typer's runner (the same
    parsing, commands and exit codes; no interpreter start-up, which cost about 1.5 s of CPU a
    chain command and more where it imported torch, transformers and Flower again)."""
    done = CliRunner().invoke(app, [*args, "--rpc", net.rpc_url, "--deployments", str(net.deployments)])
    assert done.exit_code == 0, done.output + repr(done.exception)
    return done.stdout


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("vaults")
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    order = np.random.default_rng(7).permutation(len(y))
    x, y = x[order], y[order]
    public, heldout = (x[:60], y[:60]), (x[1400:], y[1400:])
    splits = [(x[i], y[i]) for i in np.array_split(np.arange(60, 1400), 3)]
    # vault 0 also holds the held-out set the validator evaluates on; vault 2 a dataset
    # whose class 9 is one row (the small group a differencing attack goes after)
    common, single = np.flatnonzero(splits[2][1] != 9)[:150], np.flatnonzero(splits[2][1] == 9)[:1]
    rare = np.concatenate([common, single])
    net = start_vault_network(
        root,
        splits,
        extra={0: [("heldout.csv", *heldout)], 2: [("rare.csv", splits[2][0][rare], splits[2][1][rare])]},
        vault_args=["--min-noise", str(CONFIG.noise), "--license", "CC-BY-NC-4.0"],
    )
    try:
        accounts = net.accounts
        roles = {"model_owner": accounts[1], "coordinator": accounts[2], "validator": accounts[3]}
        contracts = {r: net.contracts(a) for r, a in roles.items()}
        # the base model: trained on a small public slice, registered by its owner with a 5 % royalty
        base_params = train(SPEC, SPEC.init(0), public[0], public[1], steps=40, lr=1.0)
        base_id = save_model(root / "base-model", SPEC, base_params)
        contracts["model_owner"].models.register(base_id, "Apache-2.0", 500, [], [], "file://base-model")
        yield World(
            net,
            contracts,
            {**roles, **{f"vault{i}": v.account for i, v in enumerate(net.vaults)}},
            net.vaults,
            net.vaults[0].dataset_ids[1],
            heldout,
            net.vaults[2].dataset_ids[1],
            base_params,
            base_id,
            root,
        )
    finally:
        net.stop()


def owner_contracts(world: World, i: int) -> Contracts:
    return world.net.contracts(world.vaults[i].account)


def grant(
    world: World, i: int, grantee: str, template: str, models: list[bytes], epsilon: float, dataset: bytes | None = None
) -> int:
    return world.net.grant(world.vaults[i], grantee, template, models, epsilon, dataset)

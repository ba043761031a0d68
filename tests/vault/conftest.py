"""The data-custody world every vault test module shares (one per test package run):
anvil with the contracts, scikit-learn's digits split across 3 vault processes (CSV,
JSONL, Parquet), a held-out set in vault 0, a dataset with a one-row class in vault 2,
and a base model registered by its owner. The same vaults also hold the breast-cancer
datasets of test_cli_breast_cancer.py and test_raw_csv.py, which see them as networks of
their own (`World.breast_cancer`, `World.raw_csv`) instead of starting anvil and five more
vault processes (about 3 CPU s each) for them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from typer.testing import CliRunner

from allmende.chain import Contracts
from allmende.chain.anvil import DevnetAccount
from allmende.chain.bindings import ROLE_VALIDATOR
from allmende.cli import app
from allmende.testing.vaults import FORMATS, LocalVault, VaultNetwork, signed_post, start_vault_network
from allmende.vault.datasets import write_table
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
    breast_cancer: VaultNetwork  # scaled breast-cancer rows in 3 vaults, a held-out set in vault 0
    raw_csv: VaultNetwork  # raw (unscaled) breast-cancer rows in 2 vaults


def _breast_cancer_tables(bc: Path, raw: Path) -> dict[int, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Breast-cancer datasets for the world's vaults (names under its root), and beside them
    the held-out sets and public sample the two modules read: scaled, split across 3 vaults as
    CSV, JSONL and Parquet with a held-out Parquet in vault 0 (test_cli_breast_cancer.py); raw,
    as measured, across 2 vaults (test_raw_csv.py)."""
    x, y = load_breast_cancer(return_X_y=True)
    tables: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {0: [], 1: [], 2: []}
    scaled = (x - x.mean(0)) / x.std(0) / 4.0
    order = np.random.default_rng(3).permutation(len(y))
    sx, sy = scaled[order], y[order]
    for i, (part, suffix) in enumerate(zip(np.array_split(np.arange(110, len(y)), 3), FORMATS, strict=True)):
        tables[i].append((f"{bc.name}/data-{i}{suffix}", sx[part], sy[part]))
    tables[0].append((f"{bc.name}/heldout.parquet", sx[:110], sy[:110]))
    bc.mkdir(parents=True, exist_ok=True)
    np.save(bc / "heldout_x.npy", sx[:110])
    np.save(bc / "heldout_y.npy", sy[:110])
    rx, ry = x[order], y[order]  # raw: no scaling anywhere
    raw.mkdir(parents=True, exist_ok=True)
    np.save(raw / "heldout_x.npy", rx[:110])
    np.save(raw / "heldout_y.npy", ry[:110])
    write_table(raw / "public-sample.csv", [f"f{i}" for i in range(30)], rx[110 : 110 + RAW_PUBLIC],
                ry[110 : 110 + RAW_PUBLIC])  # fmt: skip
    for i, part in enumerate(np.array_split(np.arange(110 + RAW_PUBLIC, len(y)), 2)):
        tables[i].append((f"{raw.name}/data-{i}{FORMATS[i]}", rx[part], ry[part]))
    return tables


RAW_PUBLIC = 40  # rows of the raw breast-cancer data the researcher may use in the clear


def staked_validator(contracts: Contracts) -> Contracts:
    """`contracts`' account staked as a validator (once per chain, by whichever test asks first)."""
    if contracts.registry.role_of(contracts.client.address) != ROLE_VALIDATOR:
        contracts.token.approve(contracts.registry.address)
        contracts.registry.register(ROLE_VALIDATOR, "http://validator.invalid", b"\x01" * 32,
                                    contracts.params.get("min_validator_stake"))  # fmt: skip
    return contracts


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
    extra = _breast_cancer_tables(root / "breast-cancer", root / "raw-csv")
    extra[0].insert(0, ("heldout.csv", *heldout))
    extra[2].insert(0, ("rare.csv", splits[2][0][rare], splits[2][1][rare]))
    net = start_vault_network(
        root, splits, extra=extra, vault_args=["--min-noise", str(CONFIG.noise), "--license", "CC-BY-NC-4.0"]
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
            _sharing(net, root / "breast-cancer", BREAST_CANCER_FILES),
            _sharing(net, root / "raw-csv", [["data-0.csv"], ["data-1.jsonl"]]),
        )
    finally:
        net.stop()


BREAST_CANCER_FILES = [["data-0.csv", "heldout.parquet"], ["data-1.jsonl"], ["data-2.parquet"]]


def _sharing(net: VaultNetwork, root: Path, names: list[list[str]]) -> VaultNetwork:
    return net.sharing(root, [[root / name for name in held] for held in names])


def owner_contracts(world: World, i: int) -> Contracts:
    return world.net.contracts(world.vaults[i].account)


def grant(
    world: World, i: int, grantee: str, template: str, models: list[bytes], epsilon: float, dataset: bytes | None = None
) -> int:
    return world.net.grant(world.vaults[i], grantee, template, models, epsilon, dataset)

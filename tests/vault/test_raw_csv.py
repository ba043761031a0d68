"""The README's journey on raw (unstandardised) CSVs: two hospitals' vaults hold breast-cancer
rows as measured (areas in the thousands, smoothness in hundredths), the researcher's base model
standardises its inputs with the public sample's mean and deviation (`federated init --data`),
and SecAgg+ training through the CLI reaches at least 0.95 of centralised training's accuracy.
Each round's charge is reported per vault, read from the chain."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from allmende.cli import app
from allmende.testing.vaults import VaultNetwork
from allmende.vault.datasets import load_table
from allmende.vault.model import accuracy, load_model, train
from tests.vault.conftest import World


@pytest.fixture(scope="module")
def net(world: World) -> VaultNetwork:
    """The package world's vaults, seen as holding only the raw breast-cancer rows (the world
    writes them, 2 vaults' worth, with the public sample, public-sample.csv, and the held-out
    rows, heldout_x.npy and heldout_y.npy, beside them)."""
    return world.raw_csv


def cli(net: VaultNetwork, *args: str) -> str:
    """The README's command line, run in this process by typer's runner (the same parsing and
    commands; no interpreter start-up, about 1.5 s of CPU a call)."""
    chain = ["--rpc", net.rpc_url, "--deployments", str(net.deployments)]
    done = CliRunner().invoke(app, [*args, *chain])
    assert done.exit_code == 0, done.output + repr(done.exception)
    return " ".join(done.stdout.split())


def test_a_raw_csv_trains_a_model_as_good_as_centralised_training(net: VaultNetwork) -> None:
    # Prepare: the base model, standardising by the public sample, registered; each hospital grants
    owner, researcher = net.accounts[1], net.accounts[2]
    root = net.root
    said = cli(net, "federated", "init", "--out", str(root / "base"), "--data", str(root / "public-sample.csv"),
               "--register", "--key", f"devnet:{owner.index}")  # fmt: skip
    assert "standardising each input" in said
    spec, base, base_id = load_model(root / "base")
    vaults = []
    for v in net.vaults:
        granted = cli(net, "data", "grant", "--dataset", "0x" + v.dataset_id.hex(), "--grantee", researcher.address,
                      "--template", "federated_round", "--model", "0x" + base_id.hex(), "--epsilon", "32",
                      "--key", f"devnet:{v.account.index}")  # fmt: skip
        found = re.search(r"grant (\d+)", granted)
        assert found, granted
        vaults += ["--vault", f"{v.url},0x{v.dataset_id.hex()},{found.group(1)}"]

    # Execute: the README's step 4 (SecAgg+, 3 rounds × 25 steps, noise 4)
    trained = cli(net, "federated", "train", "--key", f"devnet:{researcher.index}", "--base", str(root / "base"),
                  "--out", str(root / "run"), *vaults, "--rounds", "3", "--steps", "25", "--noise", "4")  # fmt: skip

    # Assert: ≥ 0.95 of the same model trained centrally without privacy on both vaults' rows
    x_test, y_test = np.load(root / "heldout_x.npy"), np.load(root / "heldout_y.npy")
    rows = _rows(net)
    central = train(spec, base, np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]), 75, 2.0)
    federated = accuracy(spec, load_model(root / "run")[1], x_test, y_test)
    centralised = accuracy(spec, central, x_test, y_test)
    print(f"raw CSV: base {accuracy(spec, base, x_test, y_test):.4f}, federated {federated:.4f}, "
          f"centralised {centralised:.4f}, majority {max(y_test.mean(), 1 - y_test.mean()):.4f}")  # fmt: skip
    print(trained)
    assert federated >= 0.95 * centralised
    assert federated > max(y_test.mean(), 1 - y_test.mean()) + 0.2  # far above the majority share
    # what each round charged where, read from the chain: both vaults, every round
    for v in net.vaults:
        assert len(re.findall(rf"vault {re.escape(v.url)} \(grant \d+\) was charged ε \d+\.\d{{6}}", trained)) == 3


def _rows(net: VaultNetwork) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each vault's rows as its vault reads them (for the centralised comparison only)."""
    out = []
    for v in net.vaults:
        table = load_table(v.files[0])
        assert table.labels is not None
        out.append((table.features, table.labels))
    return out

"""The whole data-custody path through the CLI, as its users run it, on scikit-learn's
breast-cancer data across 3 vaults (the package world's, tests/vault/conftest.py): grants
(`allmende data grant`), training with plain FedAvg (`allmende federated train --no-secagg`),
a validator's held-out attestation (`federated attest`), registration (`federated register`),
the access log (`data log`), revocation (`data revoke`), and a vault restart that reconciles
its books with the chain."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from eth_utils import keccak
from typer.testing import CliRunner

from allmende.cli import app
from allmende.testing.vaults import VaultNetwork
from allmende.vault.model import ModelSpec, accuracy, load_model, save_model
from allmende.vault.node import reconcile
from allmende.vault.store import JobRow, VaultStore
from tests.vault.conftest import World, staked_validator

SPEC = ModelSpec(30, 2)


@pytest.fixture(scope="module")
def net(world: World) -> VaultNetwork:
    """The package world's vaults, seen as holding only the breast-cancer datasets (the world
    writes them: scaled, split across its 3 vaults, a held-out Parquet in vault 0, and the
    held-out rows beside them as heldout_x.npy and heldout_y.npy)."""
    return world.breast_cancer


def cli(net: VaultNetwork, *args: str, ok: bool = True) -> str:
    """The command line as a user types it, run in this process by typer's runner (the same
    parsing, commands and exit codes; no interpreter start-up, about 1.5 s of CPU a call): a
    refusal must be a clean exit with its message, never an unhandled exception."""
    chain = ["--rpc", net.rpc_url, "--deployments", str(net.deployments)]
    if args[:2] == ("federated", "train"):
        chain = []
    done = CliRunner().invoke(app, [*args, *chain])
    assert (done.exit_code == 0) == ok, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit), repr(done.exception)
    return done.stdout if ok else done.output  # errors go to stderr


def grant_id(output: str) -> int:
    found = re.search(r"grant (\d+)", output)
    assert found, output
    return int(found.group(1))


def test_train_attest_register_through_the_cli(net: VaultNetwork) -> None:
    owner, coordinator, validator = net.accounts[1], net.accounts[2], net.accounts[3]
    base = net.root / "base"
    base_id = save_model(base, SPEC, SPEC.init(1))
    net.contracts(owner).models.register(base_id, "MIT", 250, [], [], "")

    participants = []
    for v in net.vaults:
        said = cli(net, "data", "grant", "--dataset", "0x" + v.dataset_id.hex(), "--grantee", coordinator.address,
                   "--template", "federated_round", "--model", "0x" + base_id.hex(), "--days", "1",
                   "--epsilon", "40", "--key", f"devnet:{v.account.index}")  # fmt: skip
        participants.append(f"{v.url},0x{v.dataset_id.hex()},{grant_id(said)}")
    out = net.root / "trained"
    args = ["federated", "train", "--base", str(base), "--out", str(out), "--key", f"devnet:{coordinator.index}",
            "--rounds", "2", "--steps", "20", "--no-secagg"]  # fmt: skip
    for p in participants:
        args += ["--vault", p]
    cli(net, *args)
    spec, params, new_id = load_model(out)
    run = json.loads((out / "run.json").read_text())
    assert run["model_id"] == "0x" + new_id.hex() and len(run["round_seconds"]) == 2
    x_test, y_test = np.load(net.root / "heldout_x.npy"), np.load(net.root / "heldout_y.npy")
    assert accuracy(spec, params, x_test, y_test) > accuracy(SPEC, SPEC.init(1), x_test, y_test)
    assert accuracy(spec, params, x_test, y_test) > 0.85

    # the validator stakes, gets an evaluate grant on the held-out set, attests; then registration
    staked_validator(net.contracts(validator))
    heldout_id = net.vaults[0].dataset_ids[1]
    said = cli(net, "data", "grant", "--dataset", "0x" + heldout_id.hex(), "--grantee", validator.address,
               "--template", "evaluate", "--model", "0x" + new_id.hex(), "--epsilon", "1",
               "--key", f"devnet:{net.vaults[0].account.index}")  # fmt: skip
    cli(net, "federated", "attest", "--vault", net.vaults[0].url, "--dataset", "0x" + heldout_id.hex(),
        "--grant", str(grant_id(said)), "--model", str(out), "--key", f"devnet:{validator.index}")  # fmt: skip
    cli(net, "federated", "register", "--model", str(out), "--key", f"devnet:{coordinator.index}")
    record = net.reader().models.get(new_id)
    assert record.parents == [base_id] and record.datasets == [v.dataset_id for v in net.vaults]
    assert net.reader().models.royalty_info(new_id) == (owner.address, 250)

    # what a model owner or user reads with `allmende models`
    shown = cli(net, "models", "show", "0x" + new_id.hex())
    assert f"parent     0x{base_id.hex()}" in shown
    assert f"royalty    250 bps to {owner.address}" in shown
    assert "attested   accuracy = " in shown
    assert "0x" + new_id.hex()[:8] in cli(net, "models", "list")

    # the access log, as the CLI shows it: two rounds, each with the epsilon charged
    table = cli(net, "data", "log", "--dataset", "0x" + net.vaults[1].dataset_id.hex())
    assert table.count("0x" + base_id.hex()[:8]) == 2


def test_revoked_grant_stops_training(net: VaultNetwork) -> None:
    coordinator = net.accounts[2]
    base = net.root / "base-2"
    base_id = save_model(base, SPEC, SPEC.init(2))
    net.contracts(net.accounts[1]).models.register(base_id, "MIT", 0, [], [], "")
    participants = []
    for v in net.vaults:
        g = net.grant(v, coordinator.address, "federated_round", [base_id], 40.0)
        participants.append((v, g))
    v, g = participants[2]
    cli(net, "data", "revoke", str(g), "--key", f"devnet:{v.account.index}")
    args = ["federated", "train", "--base", str(base), "--out", str(net.root / "never"), "--key",
            f"devnet:{coordinator.index}", "--rounds", "1", "--no-secagg"]  # fmt: skip
    for vault, gid in participants:
        args += ["--vault", f"{vault.url},0x{vault.dataset_id.hex()},{gid}"]
    said = cli(net, *args, ok=False)
    assert "revoked" in said
    assert not (net.root / "never" / "weights.npz").exists()


def test_a_restarted_vault_reconciles_its_books_with_the_chain(net: VaultNetwork) -> None:
    v = net.vaults[1]
    g = net.grant(v, net.accounts[2].address, "aggregate", [], 5.0)
    vault = net.contracts(v.account)
    store = VaultStore(net.root / "reconcile" / "vault.db")
    logged, lost = keccak(text="logged-before-crash"), keccak(text="never-logged")
    for job in (logged, lost):
        store.begin(JobRow(job, g, v.dataset_id, "aggregate", b"\x00" * 32, b"\x01" * 32, 1_000_000, 0.5, None))
    vault.data.record_access(g, logged, b"\x00" * 32, b"\x01" * 32, 1_000_000)  # mined; then the "crash"
    assert store.spent(g) == (1.0, 2_000_000)

    reconcile(store, vault)

    assert [j.job_id for j in store.jobs()] == [logged]
    assert store.pending() == []
    assert store.spent(g) == (0.5, 1_000_000) and vault.data.get_grant(g).epsilon_spent == 1_000_000


def test_models_register_by_content_address(net: VaultNetwork) -> None:
    from allmende.core.manifest import model_id_of
    from allmende.engine import resolve_model_path

    said = cli(net, "models", "register", "allmende:tiny", "--license", "Apache-2.0", "--royalty-bps", "100",
               "--key", f"devnet:{net.accounts[1].index}")  # fmt: skip
    tiny_id = model_id_of(resolve_model_path("allmende:tiny")[0])
    assert "0x" + tiny_id.hex() in said
    assert net.reader().models.royalty_info(tiny_id) == (net.accounts[1].address, 100)
    again = cli(net, "models", "register", "allmende:tiny", "--license", "MIT", "--key",
                f"devnet:{net.accounts[2].index}", ok=False)  # fmt: skip
    assert "already registered" in again

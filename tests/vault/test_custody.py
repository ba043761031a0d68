"""Attacks on data custody by a grantee, each against real vault processes on anvil:
regenerating the training noise, training parameters the grant does not cover, deriving
a small group by differencing exact aggregates, and counting through evaluate for free."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from eth_utils import keccak
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitres
from typer.testing import CliRunner

from allmende.chain.anvil import DevnetAccount
from allmende.cli import app
from allmende.testing.vaults import LocalVault
from allmende.vault import flower
from allmende.vault.datasets import load_table
from allmende.vault.flower import HttpGrid, Participant, VaultRefused
from allmende.vault.model import model_id, train
from allmende.vault.service import model_payload
from tests.vault.conftest import CONFIG, SPEC, World, grant, signed_post

LR = 2.0


def send_round(
    world: World,
    vault: LocalVault,
    key: bytes,
    grant_id: int,
    run_id: int,
    params: list[np.ndarray],
    round_number: int = 1,
    extra: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """What a coordinator can do with Flower: send one vault one training round (plain FedAvg,
    no SecAgg+, one DP step) with parameters of its choice, claimed to be the granted base
    model, and read the update the vault returns."""
    config = {
        "round": 1, "base-model": "0x" + world.base_id.hex(), "inputs": SPEC.inputs,
        "classes": SPEC.classes, "hidden": SPEC.hidden, "steps": 1, "lr": LR, "noise": CONFIG.noise,
        "clipping_norm": CONFIG.clipping_norm, **(extra or {}),
    }  # fmt: skip
    grid = HttpGrid([Participant(vault.url, vault.dataset_id, grant_id)], key, run_id, round_number=round_number)
    with flower._identity:
        flower._set_identity(run_id, SUPERLINK_NODE_ID)
        content = fitins_to_recorddict(FitIns(ndarrays_to_parameters(params), config), keep_input=True)
        message = grid.create_message(content, MessageType.TRAIN, 1000, "1")
    try:
        reply = next(iter(grid.send_and_receive([message])))
    finally:
        grid.http.close()
    return parameters_to_ndarrays(recorddict_to_fitres(reply.content, keep_input=False).parameters)


def logged(world: World, dataset: bytes, grant_id: int) -> list[Any]:
    return [a for a in world.contracts["validator"].data.accesses(dataset) if a.grant_id == grant_id]


def test_a_coordinator_cannot_regenerate_the_training_noise(world: World) -> None:
    # Prepare: the coordinator holds a federated_round grant on vault 1; as the standard DP
    # adversary it knows every row there (the test reads the vault's file)
    coordinator: DevnetAccount = world.accounts["coordinator"]
    v = world.vaults[1]
    table = load_table(v.files[0])
    g = grant(world, 1, coordinator.address, "federated_round", [world.base_id], 10.0)

    # Execute: one DP step on the granted model, then regenerate the noise from everything the
    # coordinator saw (the job id on chain, the vault's address), as a seeded vault would draw it
    released = send_round(world, v, coordinator.key, g, 4242, world.base_params)
    (access,) = logged(world, v.dataset_id, g)
    seed = int.from_bytes(keccak(access.job_id + v.account.address.encode())[:4], "big")
    generator = torch.Generator().manual_seed(seed)
    regenerated = [torch.randn(p.shape, generator=generator, dtype=torch.float64).numpy() for p in world.base_params]
    noiseless = train(SPEC, world.base_params, table.features, table.labels, steps=1, lr=LR, clip=1.0)
    guess = [c - LR * n * CONFIG.noise / table.rows for c, n in zip(noiseless, regenerated, strict=True)]

    # Assert: subtracting the regenerated noise does not get the coordinator any closer to the
    # noiseless update than the released one is (with predictable noise it landed within 1e-7)
    def distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True))))

    noise_norm = distance(released, noiseless)
    assert noise_norm > 0.05  # the vault did add noise of the scale σ·lr/rows promises
    assert distance(released, guess) > 0.5 * noise_norm


def test_a_round_config_with_a_field_the_vault_does_not_honour_is_refused(world: World) -> None:
    # Prepare: a coordinator that believes it can narrow the rows a round trains on
    coordinator = world.accounts["coordinator"]
    v = world.vaults[1]
    g = grant(world, 1, coordinator.address, "federated_round", [world.base_id], 10.0)

    # Execute / Assert: refused before it trains (an ignored field is one the sender thinks was honoured)
    with pytest.raises(VaultRefused, match="takes no 'where'"):
        send_round(world, v, coordinator.key, g, 7101, world.base_params, extra={"where": "age > 83"})
    assert logged(world, v.dataset_id, g) == []
    assert world.contracts["validator"].data.get_grant(g).epsilon_spent == 0


def test_a_grantee_cannot_train_parameters_the_grant_does_not_cover(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    v = world.vaults[1]
    g = grant(world, 1, coordinator.address, "federated_round", [world.base_id], 10.0)
    zeros = [np.zeros_like(p) for p in world.base_params]

    # round 1 with parameters of the coordinator's choosing (all zeros), claimed as the base model
    with pytest.raises(VaultRefused, match="does not cover the parameters"):
        send_round(world, v, coordinator.key, g, 7001, zeros)
    assert logged(world, v.dataset_id, g) == []
    assert world.contracts["validator"].data.get_grant(g).epsilon_spent == 0

    # a later round must descend from the one this vault ran: the granted model trains, then
    # parameters swapped for arbitrary ones in the same run are refused
    send_round(world, v, coordinator.key, g, 7002, world.base_params)
    with pytest.raises(VaultRefused, match="previous round of run 7002"):
        send_round(world, v, coordinator.key, g, 7002, zeros, round_number=2)
    assert len(logged(world, v.dataset_id, g)) == 1


def test_a_grantee_cannot_derive_a_small_group_by_subtraction(world: World) -> None:
    # vault 2's rare dataset: classes 0-8 and one row of class 9
    analyst = world.accounts["coordinator"]
    v = world.vaults[2]
    g = grant(world, 2, analyst.address, "aggregate", [], 1.0, world.rare_id)
    columns = [f"f{i}" for i in range(64)]

    def ask(group_by: str | None) -> httpx.Response:
        query = {"template": "aggregate", "columns": columns, "group_by": group_by, "bins": 1, "range": [0, 1]}
        return signed_post(v.url, analyst.key, {
            **query, "dataset_id": "0x" + world.rare_id.hex(), "grant_id": g,
            "job_id": "0x" + keccak(text=f"{g}:{group_by}:{json.dumps(query)}").hex(),
        })  # fmt: skip

    # the attack: the total, then the per-label groups (class 9 withheld); total minus the
    # groups would be the single class-9 row, every feature exact
    total, per_label = ask(None), ask("label")
    assert per_label.status_code == 403 or total.status_code == 403  # exact answers are off by default
    assert logged(world, world.rare_id, g) == []

    # with the owner's consent the total is answered, and the per-label query is refused whole
    state_dir = str(world.root / "vault-2")
    consent = CliRunner().invoke(app, ["data", "exact-aggregates", str(g), "--state-dir", state_dir])  # in process
    assert consent.exit_code == 0 and f"grant {g} may ask for exact aggregates" in consent.stdout, consent.output
    total = ask(None)
    assert total.status_code == 200, total.text
    per_label = ask("label")
    assert per_label.status_code == 403 and per_label.json()["error"]["code"] == "differencing_refused"
    assert "subtraction" in per_label.json()["error"]["message"]
    assert len(logged(world, world.rare_id, g)) == 1


def test_a_grantee_cannot_count_through_evaluate_for_free(world: World) -> None:
    # a granted model that always says class 9: its accuracy × rows counts class 9's rows
    analyst = world.accounts["coordinator"]
    v = world.vaults[2]
    always_nine = [np.zeros((10, 64)), np.where(np.arange(10) == 9, 10.0, 0.0)]
    counter = model_id(SPEC, always_nine)
    free = grant(world, 2, analyst.address, "evaluate", [counter], 0.0, world.rare_id)
    paid = grant(world, 2, analyst.address, "evaluate", [counter], 1.0, world.rare_id)

    def evaluate(grant_id: int, job: str, epsilon: float | None) -> httpx.Response:
        body = {
            "template": "evaluate", "dataset_id": "0x" + world.rare_id.hex(), "grant_id": grant_id,
            "job_id": "0x" + keccak(text=job).hex(), "model": model_payload(SPEC, always_nine),
        }  # fmt: skip
        return signed_post(v.url, analyst.key, body if epsilon is None else {**body, "epsilon": epsilon})

    # with no budget there is nothing to count with, asked with or without an epsilon
    for n, epsilon in enumerate((None, 0.5)):
        reply = evaluate(free, f"free-count-{n}", epsilon)
        assert reply.status_code in (400, 403), reply.text
    assert logged(world, world.rare_id, free) == []

    # with a budget, each count is charged on chain until the budget is spent
    first = evaluate(paid, "paid-count-0", 0.5)
    assert first.status_code == 200, first.text
    assert first.json()["result"]["epsilon"] == 0.5
    assert world.contracts["validator"].data.get_grant(paid).epsilon_spent == 500_000
    again = evaluate(paid, "paid-count-1", 0.6)
    assert again.status_code == 403 and again.json()["error"]["code"] == "privacy_budget_exceeded"
    assert len(logged(world, world.rare_id, paid)) == 1


def test_a_new_grant_continues_a_run_only_on_the_lineage_it_covers(world: World) -> None:
    """A resumed run may take a round under a new grant of the same grantee and dataset (an
    owner topping up a spent budget) only if that grant covers the run's root model: a grant
    on some other model does not let the grantee keep training the base through the run."""
    coordinator = world.accounts["coordinator"]
    v = world.vaults[1]
    first = grant(world, 1, coordinator.address, "federated_round", [world.base_id], 10.0)
    released = send_round(world, v, coordinator.key, first, 7003, world.base_params)
    other_model = keccak(b"some other model")
    elsewhere = grant(world, 1, coordinator.address, "federated_round", [other_model], 10.0)

    with pytest.raises(VaultRefused, match="does not cover the parameters"):
        send_round(world, v, coordinator.key, elsewhere, 7003, released)
    assert logged(world, v.dataset_id, elsewhere) == []

    topped_up = grant(world, 1, coordinator.address, "federated_round", [world.base_id], 10.0)
    send_round(world, v, coordinator.key, topped_up, 7003, released)  # the base's lineage: it trains
    (access,) = logged(world, v.dataset_id, topped_up)
    assert access.model_id == world.base_id

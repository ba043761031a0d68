"""The data owner's and researcher's journey as the README tells it, through the CLI, on the
shared vault world (tests/vault/conftest.py): two vaults train in the default secure mode, a
run stopped by a spent budget keeps its rounds and resumes, one refusing vault costs the
others nothing (before and during a round), refusals are kept, bad inputs get one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import MessageType
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from typer.testing import CliRunner

from allmende.cli import app
from allmende.vault import flower
from allmende.vault.flower import FederatedConfig, HttpGrid, Participant, RoundRefused, VaultRefused, run_federated
from allmende.vault.model import load_model
from allmende.vault.store import VaultStore
from tests.vault.conftest import SPEC, World, grant, owner_contracts

ROUND = ["--steps", "2", "--noise", "2"]  # ε ≈ 7.8 for one round, ≈ 11.6 for two (zCDP composition)


def run_cli(world: World, *args: str, ok: bool = True) -> str:
    """`allmende …` as a user types it, run in this process by typer's runner (no interpreter
    start-up, which imports Flower and torch again); its output, stdout and stderr. An unhandled
    exception (a traceback) fails it, whether or not the command was to succeed."""
    result = CliRunner().invoke(app, list(args))
    assert (result.exit_code == 0) == ok, result.output + repr(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


def in_process(*args: str) -> tuple[int, str]:
    """The same command line, run in this process (no interpreter start-up: the suite's time)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def chain_cli(world: World, *args: str) -> str:
    code, said = in_process(*args, "--rpc", world.net.rpc_url, "--deployments", str(world.net.deployments))
    assert code == 0, said
    return said


def vault_arg(world: World, i: int, grant_id: int) -> list[str]:
    return ["--vault", f"{world.vaults[i].url},0x{world.vaults[i].dataset_id.hex()},{grant_id}"]


def accesses(world: World, i: int, grant_id: int) -> list[object]:
    return [a for a in world.contracts["validator"].data.accesses(world.vaults[i].dataset_id) if a.grant_id == grant_id]


def test_two_vaults_train_in_secure_mode_and_a_run_stopped_by_its_budget_resumes(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    out = world.root / "two-vaults"
    base = world.root / "base-model"
    said = chain_cli(world, "data", "grant", "--dataset", "0x" + world.vaults[0].dataset_id.hex(), "--grantee",
                   coordinator.address, "--template", "federated_round", "--model", "0x" + world.base_id.hex(),
                   "--epsilon", "10", "--key", f"devnet:{world.vaults[0].account.index}")  # fmt: skip
    first = [int(re.search(r"grant (\d+)", said).group(1)),  # type: ignore[union-attr]
             grant(world, 1, coordinator.address, "federated_round", [world.base_id], 10.0)]  # fmt: skip
    train = ["federated", "train", "--base", str(base), "--out", str(out), "--key", f"devnet:{coordinator.index}",
             "--rounds", "2", *ROUND]  # fmt: skip

    # secure mode (the default) with exactly two vaults; the budget holds one round, not two
    stopped = run_cli(world, *train, *vault_arg(world, 0, first[0]), *vault_arg(world, 1, first[1]), ok=False)

    assert "round 1 done" in stopped and "round 2 did not start" in stopped and "privacy budget" in stopped
    assert "rounds 1-1 are kept" in stopped
    state = json.loads((out / "run-state.json").read_text())
    assert state["rounds_done"] == 1
    _, params, round_one = load_model(out)
    assert load_model(out / "rounds" / "0001")[2] == round_one
    assert all(len(accesses(world, i, g)) == 1 for i, g in enumerate(first))  # round 1 charged once, round 2 never
    grants_shown = chain_cli(world, "data", "grants", "--grantee", coordinator.address)
    assert f"grant {first[0]} (active) federated_round" in grants_shown and "ε left 2.2" in grants_shown

    # the owners grant more, one on the base model, the other on the model of round 1 (as the
    # README offers); the run resumes where it stopped
    more = [grant(world, i, coordinator.address, "federated_round", [model], 10.0)
            for i, model in ((0, world.base_id), (1, round_one))]  # fmt: skip
    code, resumed = in_process("federated", "train", "--out", str(out), "--key", f"devnet:{coordinator.index}",
                      "--rounds", "2", "--resume", *ROUND, *vault_arg(world, 0, more[0]),
                      *vault_arg(world, 1, more[1]))  # fmt: skip

    assert code == 0 and "round 2 done" in resumed and "round 1 done" not in resumed
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] == state["run_id"] and len(run["round_seconds"]) == 2
    assert run["model_id"] == "0x" + load_model(out)[2].hex() != "0x" + round_one.hex()
    assert [len(accesses(world, i, g)) for i, g in enumerate(more)] == [1, 1]
    log = chain_cli(world, "data", "log", "--dataset", "0x" + world.vaults[1].dataset_id.hex())
    assert f"grant {more[1]} federated_round for {coordinator.address}" in log
    assert f"model 0x{round_one.hex()[:8]}" in log
    base_log = chain_cli(world, "data", "log", "--dataset", "0x" + world.vaults[0].dataset_id.hex())
    assert f"grant {more[0]} federated_round for {coordinator.address}  model 0x{world.base_id.hex()[:8]}" in base_log
    assert np.isfinite(np.concatenate([p.ravel() for p in params])).all()


def test_one_refusing_vault_costs_the_others_nothing(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    grants = [grant(world, i, coordinator.address, "federated_round", [world.base_id], 40.0) for i in range(3)]
    owner_contracts(world, 2).data.revoke(grants[2])
    args = ["federated", "train", "--base", str(world.root / "base-model"), "--out", str(world.root / "refused"),
            "--key", f"devnet:{coordinator.index}", "--rounds", "1", *ROUND, "--rpc", world.net.rpc_url,
            "--deployments", str(world.net.deployments)]  # fmt: skip
    for i, g in enumerate(grants):
        args += vault_arg(world, i, g)

    code, said = in_process(*args)

    assert code == 1 and "round 1 did not start" in said and "revoked" in said and world.vaults[2].url in said
    assert "read from the chain: round 1 charged no vault" in said  # the chain's word, not only the vaults'
    for i in (0, 1):  # the vaults that would have taken part: nothing trained, charged or logged
        assert accesses(world, i, grants[i]) == []
        assert world.contracts["validator"].data.get_grant(grants[i]).epsilon_spent == 0
        assert VaultStore(world.root / f"vault-{i}" / "vault.db").spent(grants[i]) == (0.0, 0)
    # the refusing vault kept the refusal: in its log of refusals and on /metrics
    code, refusals = in_process("data", "refusals", "--state-dir", str(world.root / "vault-2"))
    assert f"access_denied  /v1/rounds/check  from {coordinator.address}  grant {grants[2]}" in refusals
    metrics = httpx.get(world.vaults[2].url + "/metrics").text
    assert re.search(r'allmende_vault_refusals_total\{code="access_denied"\} [1-9]', metrics)


def test_an_unreachable_vault_costs_the_others_nothing(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    g = grant(world, 0, coordinator.address, "federated_round", [world.base_id], 40.0)
    gone = f"http://127.0.0.1:9,0x{world.vaults[1].dataset_id.hex()},{g}"  # port 9: nobody listens

    code, said = in_process("federated", "train", "--base", str(world.root / "base-model"), "--out",
                            str(world.root / "unreachable"), "--key", f"devnet:{coordinator.index}", "--rounds", "1",
                            *ROUND, *vault_arg(world, 0, g), "--vault", gone)  # fmt: skip

    assert code == 1 and "round 1 did not start" in said and "http://127.0.0.1:9 is unreachable" in said
    assert accesses(world, 0, g) == [] and world.contracts["validator"].data.get_grant(g).epsilon_spent == 0


def test_a_vault_failing_mid_round_costs_the_others_nothing(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    grants = [grant(world, i, coordinator.address, "federated_round", [world.base_id], 40.0) for i in (0, 1)]
    participants = [Participant(world.vaults[i].url, world.vaults[i].dataset_id, g) for i, g in enumerate(grants)]

    def revoke_after_the_check(round_number: int, answers: list[dict[str, object]]) -> None:
        owner_contracts(world, 1).data.revoke(grants[1])  # every vault said yes; then vault 1's owner revokes

    config = FederatedConfig(rounds=1, steps=2, noise=2.0)
    with pytest.raises(RoundRefused, match="failed and was aborted") as refused:
        run_federated(participants, coordinator.key, SPEC, world.base_params, world.base_id, config,
                      on_checked=revoke_after_the_check)  # fmt: skip

    assert refused.value.completed == 0
    assert "No vault was charged for it" in str(refused.value)  # every vault confirmed the abort
    assert accesses(world, 0, grants[0]) == []  # vault 0 trained, but its reservation was undone
    assert world.contracts["validator"].data.get_grant(grants[0]).epsilon_spent == 0
    store = VaultStore(world.root / "vault-0" / "vault.db")
    assert store.spent(grants[0]) == (0.0, 0)
    assert [j for j in store.pending() if j.grant_id == grants[0]] == []


def test_a_coordinator_cannot_lower_the_secagg_threshold_to_unmask_without_the_vault(world: World) -> None:
    # with fake vaults holding every other share, a threshold below the share count would let the
    # coordinator unmask this vault's update without its unmask reply, i.e. before it logs the round
    coordinator = world.accounts["coordinator"]
    g = grant(world, 0, coordinator.address, "federated_round", [world.base_id], 40.0)
    grid = HttpGrid([Participant(world.vaults[0].url, world.vaults[0].dataset_id, g)], coordinator.key, 77)
    setup = ConfigRecord({
        Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2,
        Key.CLIPPING_RANGE: 16.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0,
    })  # fmt: skip
    with flower._identity:  # Flower's messages read the run from its process-wide task identity
        flower._set_identity(77, SUPERLINK_NODE_ID)
        message = Message(RecordDict({"secaggplus_configs": setup}), 1000, MessageType.TRAIN, group_id="1")

    with pytest.raises(VaultRefused, match="every share is needed"):
        grid.push_messages([message])

    assert accesses(world, 0, g) == []


def test_a_researcher_makes_a_base_model_and_runs_aggregate_and_evaluate_jobs(world: World, tmp_path: Path) -> None:
    analyst = world.accounts["coordinator"]
    public = world.vaults[0].files[0]  # any labelled file the researcher may use in the clear
    code, said = in_process("federated", "init", "--out", str(tmp_path / "base"), "--data", str(public), "--steps", "5")
    assert code == 0, said
    spec, _, made = load_model(tmp_path / "base")
    assert (spec.inputs, spec.classes) == (SPEC.inputs, SPEC.classes) and f"0x{made.hex()}" in said
    code, said = in_process("federated", "init", "--out", str(tmp_path / "base"), "--data", str(public), "--steps",
                            "5", "--register", "--license", "MIT", "--key", f"devnet:{analyst.index}", "--rpc",
                            world.net.rpc_url, "--deployments", str(world.net.deployments))  # fmt: skip
    assert code == 0 and world.contracts["validator"].models.owner_of(made) == analyst.address, said

    v = world.vaults[1]
    g = grant(world, 1, analyst.address, "aggregate", [], 1.0)
    code, said = in_process("data", "aggregate", "--vault", v.url, "--dataset", "0x" + v.dataset_id.hex(), "--grant",
                            str(g), "--column", "f10", "--low", "0", "--high", "1", "--epsilon", "0.5", "--key",
                            f"devnet:{analyst.index}")  # fmt: skip
    assert code == 0 and '"mechanism": "discrete_laplace"' in said, said
    e = grant(world, 1, analyst.address, "evaluate", [made], 1.0)
    code, said = in_process("data", "evaluate", "--vault", v.url, "--dataset", "0x" + v.dataset_id.hex(), "--grant",
                            str(e), "--model", str(tmp_path / "base"), "--epsilon", "0.5", "--key",
                            f"devnet:{analyst.index}")  # fmt: skip
    assert code == 0 and "accuracy" in said, said
    code, said = in_process("data", "evaluate", "--vault", v.url, "--dataset", "0x" + v.dataset_id.hex(), "--grant",
                            str(e), "--model", str(tmp_path / "base"), "--epsilon", "0.6", "--key",
                            f"devnet:{analyst.index}")  # fmt: skip
    assert code == 1 and "privacy budget" in said and "Traceback" not in said


BAD_INPUTS = [
    ("a grantee that is no address", ["data", "grant", "--dataset", "0x" + "11" * 32, "--grantee", "0x1234",
     "--template", "aggregate", "--key", "devnet:4"], "'0x1234' is not an address"),
    ("a short dataset id", ["data", "log", "--dataset", "0x1234"], "is not a dataset id"),
    ("a short dataset id in a grant", ["data", "grant", "--dataset", "0xabc", "--grantee", "0x" + "22" * 20,
     "--template", "aggregate", "--key", "devnet:4"], "is not a dataset id"),
    ("a template that does not exist", ["data", "grant", "--dataset", "0x" + "11" * 32, "--grantee", "0x" + "22" * 20,
     "--template", "export", "--key", "devnet:4"], "must be one of"),
    ("a single vault", ["federated", "train", "--vault", "http://127.0.0.1:9,0x" + "11" * 32 + ",1", "--base", ".",
     "--out", "/tmp/never", "--key", "devnet:2"], "at least 2 vaults"),
    ("a vault without its grant", ["federated", "train", "--vault", "http://127.0.0.1:9,0x" + "11" * 32, "--out",
     "/tmp/never", "--key", "devnet:2"], "must be URL,DATASET_ID,GRANT_ID"),
    ("a vault with a short dataset id", ["federated", "train", "--vault", "http://127.0.0.1:9,0x12,1", "--out",
     "/tmp/never", "--key", "devnet:2"], "64 hex digits"),
    ("a base that is no model", ["federated", "train", "--vault", "http://a:9,0x" + "11" * 32 + ",1", "--vault",
     "http://b:9,0x" + "22" * 32 + ",2", "--base", "/nonexistent", "--out", "/tmp/never", "--key", "devnet:2"],
     "not a model folder"),
    ("resume without a run", ["federated", "train", "--out", "/nonexistent-run", "--key", "devnet:2", "--resume"],
     "no run to resume"),
    ("init without a shape", ["federated", "init", "--out", "/tmp/never"], "--inputs and --classes"),
    ("init registering without a key", ["federated", "init", "--out", "/tmp/never", "--inputs", "3", "--classes", "2",
     "--register"], "--register needs --key"),
    ("refusals without a vault", ["data", "refusals", "--state-dir", "/nonexistent"], "no vault database"),
    ("attest a folder that is no model", ["federated", "attest", "--vault", "http://127.0.0.1:9", "--dataset",
     "0x" + "11" * 32, "--grant", "1", "--model", "/nonexistent", "--key", "devnet:3"], "not a model folder"),
    ("register a folder that is no model", ["federated", "register", "--model", "/nonexistent", "--key", "devnet:2"],
     "not a model folder"),
    ("revoke grant 0", ["data", "revoke", "0", "--key", "devnet:4"], "0"),
    ("an infinite range", ["data", "aggregate", "--vault", "http://127.0.0.1:9", "--dataset", "0x" + "11" * 32,
     "--grant", "1", "--column", "f1", "--low=-inf", "--high=inf", "--epsilon", "1", "--key", "devnet:2"],
     "must be finite"),
    ("a grant with no budget", ["data", "grant", "--dataset", "0x" + "11" * 32, "--grantee", "0x" + "22" * 20,
     "--template", "aggregate", "--epsilon", "0", "--key", "devnet:4"], "a grant with no budget could run no job"),
    ("a grant of 9 seconds", ["data", "grant", "--dataset", "0x" + "11" * 32, "--grantee", "0x" + "22" * 20,
     "--template", "aggregate", "--days", "0.0001", "--key", "devnet:4"], "must be at least 60 s"),
    ("a federated grant shorter than a round", ["data", "grant", "--dataset", "0x" + "11" * 32, "--grantee",
     "0x" + "22" * 20, "--template", "federated_round", "--model", "0x" + "33" * 32, "--days", "0.01", "--key",
     "devnet:4"], "must last more than 1800 s"),
    ("more bins than a vault draws", ["data", "aggregate", "--vault", "http://127.0.0.1:9", "--dataset",
     "0x" + "11" * 32, "--grant", "1", "--column", "f1", "--bins", "500", "--key", "devnet:2"], "--bins"),
    ("more steps than a vault takes", ["federated", "train", "--out", "/tmp/never", "--key", "devnet:2", "--steps",
     "201"], "--steps"),
    ("a vanishing epsilon", ["data", "aggregate", "--vault", "http://127.0.0.1:9", "--dataset", "0x" + "11" * 32,
     "--grant", "1", "--column", "f1", "--low", "0", "--high", "1", "--epsilon", "1e-16", "--key", "devnet:2"],
     "[0.001, 100]"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "args", "expected"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_get_one_clear_line(name: str, args: list[str], expected: str) -> None:
    code, said = in_process(*args)
    assert code == 2, said
    assert expected in " ".join(said.split()) and "Traceback" not in said

"""Compute-to-data on anvil: scikit-learn's digits split across 3 vault processes
(CSV, JSONL, Parquet), federated training with Flower SecAgg+ and DP, a validator's
held-out attestation and the lineage on chain through the CLI."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from eth_utils import keccak
from typer.testing import CliRunner

from allmende.cli import app
from allmende.core.vault_requests import HEADER, JOB, ROUND_FIT
from allmende.testing.vaults import send, signed_request
from allmende.vault.datasets import load_table
from allmende.vault.flower import Participant, VaultRefused, run_federated
from allmende.vault.model import MICRO, accuracy, save_model
from allmende.vault.service import model_payload
from allmende.vault.store import VaultStore
from tests.vault.conftest import CONFIG, SPEC, World, cli, grant, owner_contracts, signed_post, staked_validator


def test_datasets_are_registered_by_their_vaults(world: World) -> None:
    data = world.contracts["validator"].data
    for v in world.vaults:
        record = data.dataset(v.dataset_id)
        assert record.owner == record.vault == v.account.address
        assert record.license == "CC-BY-NC-4.0"
        info = httpx.get(v.url + "/v1/info").json()
        assert info["vault"] == v.account.address
        assert "0x" + v.dataset_id.hex() in {d["dataset_id"] for d in info["datasets"]}


def test_federated_training_beats_the_base_model_and_lands_on_chain(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    grants = [grant(world, i, coordinator.address, "federated_round", [world.base_id], 100.0) for i in range(3)]
    participants = [Participant(v.url, v.dataset_id, g) for v, g in zip(world.vaults, grants, strict=True)]

    result = run_federated(participants, coordinator.key, SPEC, world.base_params, world.base_id, CONFIG)

    assert len(result.round_seconds) == CONFIG.rounds
    new_id = save_model(world.root / "federated-model", SPEC, result.params)
    x_test, y_test = world.heldout
    assert accuracy(SPEC, result.params, x_test, y_test) > accuracy(SPEC, world.base_params, x_test, y_test)

    # the access log is complete: one entry per round per vault, epsilon agrees with the vault's own books
    data = world.contracts["validator"].data
    for v, g in zip(world.vaults, grants, strict=True):
        log = [a for a in data.accesses(v.dataset_id) if a.grant_id == g]
        assert len(log) == CONFIG.rounds
        assert all(a.model_id == world.base_id and a.epsilon_spent > 0 for a in log)
        on_chain = data.get_grant(g)
        assert on_chain.epsilon_spent == sum(a.epsilon_spent for a in log) <= on_chain.epsilon_budget

    # a validator evaluates both models on the held-out set in vault 0 (the API), then attests
    # the new one with the CLI, as a validator would
    validator = world.accounts["validator"]
    vc = staked_validator(world.contracts["validator"])
    eval_grant = grant(world, 0, validator.address, "evaluate", [world.base_id, new_id], 6.0, world.heldout_id)
    scores = {}
    for name, params in (("base", world.base_params), ("federated", result.params)):
        job = keccak(text=f"heldout-{name}")
        reply = signed_post(world.vaults[0].url, validator.key, {
            "template": "evaluate", "dataset_id": "0x" + world.heldout_id.hex(), "grant_id": eval_grant,
            "job_id": "0x" + job.hex(), "model": model_payload(SPEC, params), "epsilon": 2.0,
        })  # fmt: skip
        assert reply.status_code == 200, reply.text
        scores[name] = reply.json()["result"]
    assert scores["federated"]["accuracy"] > scores["base"]["accuracy"]
    assert scores["federated"]["model_id"] == "0x" + new_id.hex()

    model_dir = world.root / "federated-model"
    (model_dir / "run.json").write_text(json.dumps({
        "model_id": "0x" + new_id.hex(), "base_model": "0x" + world.base_id.hex(),
        "datasets": ["0x" + v.dataset_id.hex() for v in world.vaults],
    }))  # fmt: skip
    coordinator_key = f"devnet:{coordinator.index}"
    refused = CliRunner().invoke(app, [
        "federated", "register", "--model", str(model_dir), "--key", coordinator_key,
        "--rpc", world.net.rpc_url, "--deployments", str(world.net.deployments),
    ])  # fmt: skip
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)  # a refusal, no traceback
    assert "0 attestation(s)" in refused.stdout  # not before a validator attested
    said = cli(world.net, "federated", "attest", "--vault", world.vaults[0].url, "--dataset",
               "0x" + world.heldout_id.hex(), "--grant", str(eval_grant), "--model", str(model_dir),
               "--key", f"devnet:{validator.index}", "--epsilon", "2")  # fmt: skip
    attested = float(re.search(r"accuracy (\d\.\d+)", said).group(1))  # type: ignore[union-attr]
    assert attested == pytest.approx(scores["federated"]["accuracy"], abs=0.05)  # a fresh ε-DP evaluation
    attestation = vc.data.attestations(new_id)[0]
    assert (attestation.validator, attestation.metric) == (validator.address, "accuracy")
    assert abs(attestation.value_ppm - attested * MICRO) <= 100
    # the attested report is the one the vault logged for that job
    logged = [a for a in vc.data.accesses(world.heldout_id) if a.job_id == attestation.job_id]
    assert logged and logged[0].result_hash == attestation.report_hash

    # the coordinator registers the new model as derived from the base, trained on the three datasets
    cli(world.net, "federated", "register", "--model", str(model_dir), "--key", coordinator_key)
    cc = world.contracts["coordinator"]
    record = cc.models.get(new_id)
    assert record.owner == coordinator.address
    assert record.parents == [world.base_id]
    assert record.datasets == [v.dataset_id for v in world.vaults]
    assert record.metadata_uri == "allmende-attestation:0x" + attestation.job_id.hex()
    assert cc.models.royalty_info(new_id) == (world.accounts["model_owner"].address, 500)


def test_a_job_over_budget_is_refused_before_it_runs(world: World) -> None:
    coordinator = world.accounts["coordinator"]
    tight = [grant(world, i, coordinator.address, "federated_round", [world.base_id], 1.0) for i in range(3)]
    before = [len(world.contracts["validator"].data.accesses(v.dataset_id)) for v in world.vaults]
    participants = [Participant(v.url, v.dataset_id, g) for v, g in zip(world.vaults, tight, strict=True)]
    with pytest.raises(VaultRefused, match="privacy budget"):
        run_federated(participants, coordinator.key, SPEC, world.base_params, world.base_id, CONFIG)
    after = [len(world.contracts["validator"].data.accesses(v.dataset_id)) for v in world.vaults]
    assert after == before  # nothing ran, nothing logged
    assert all(world.contracts["validator"].data.get_grant(g).epsilon_spent == 0 for g in tight)


def test_rows_never_leave(world: World) -> None:
    analyst = world.accounts["coordinator"]
    v = world.vaults[1]
    table = load_table(v.files[0])
    g = grant(world, 1, analyst.address, "aggregate", [], 1.0)

    def job(payload: dict[str, Any]) -> httpx.Response:
        base = {
            "dataset_id": "0x" + v.dataset_id.hex(),
            "grant_id": g,
            "job_id": "0x" + keccak(text=json.dumps(payload)).hex(),
        }
        return signed_post(v.url, analyst.key, {**base, **payload})

    for asks_rows in (
        {"template": "rows"},
        {"template": "export"},
        {"template": "sql", "query": "SELECT *"},
        {"template": "python", "code": "print(data)"},
    ):
        reply = job(asks_rows)
        assert reply.status_code == 403
        assert reply.json()["error"]["code"] == "template_not_allowed"

    # exact answers need the data owner's consent for this grant; then they are audited
    exact = {"template": "aggregate", "columns": ["f10"], "bins": 4, "range": [0, 1]}
    no_consent = job(exact)
    assert no_consent.status_code == 403 and "differential privacy" in no_consent.json()["error"]["message"]
    VaultStore(world.root / "vault-1" / "vault.db").allow_exact(g)
    stats = job(exact)
    assert stats.status_code == 200, stats.text
    groups = stats.json()["result"]["groups"]
    assert groups["all"]["count"] == table.rows == sum(groups["all"]["histogram"]["f10"])
    # grouping by a column where most values are rare would leave a small remainder: refused whole
    fine = job({"template": "aggregate", "columns": ["f10"], "group_by": "f5", "bins": 2, "range": [0, 1]})
    assert fine.status_code == 403 and fine.json()["error"]["code"] == "differencing_refused"

    # with an epsilon the answer is noised (discrete Laplace) and the epsilon is charged to the grant
    private = job({"template": "aggregate", "columns": ["f10"], "group_by": "label", "range": [0, 1], "epsilon": 0.5})
    assert private.status_code == 200, private.text
    assert private.json()["result"]["mechanism"] == "discrete_laplace"
    replay = job({"template": "aggregate", "columns": ["f10"], "group_by": "label", "range": [0, 1], "epsilon": 0.5})
    assert replay.status_code == 400 and "already used" in replay.json()["error"]["message"]  # same job id
    assert world.contracts["validator"].data.get_grant(g).epsilon_spent == 500_000
    over = job({"template": "aggregate", "columns": ["f10"], "range": [0, 1], "epsilon": 0.6})
    assert over.status_code == 403 and over.json()["error"]["code"] == "privacy_budget_exceeded"
    by_column = job({"template": "aggregate", "columns": ["f10"], "group_by": "f5", "range": [0, 1], "epsilon": 0.1})
    assert by_column.status_code == 400 and "label" in by_column.json()["error"]["message"]
    assert world.contracts["validator"].data.get_grant(g).epsilon_spent == 500_000

    # no output holds a row: no list of numbers in any answer equals any row's features
    rows = {tuple(np.round(r, 6)) for r in table.features}

    def vectors(obj: Any) -> Iterator[tuple[float, ...]]:
        if isinstance(obj, dict):
            for value in obj.values():
                yield from vectors(value)
        elif isinstance(obj, list):
            if obj and all(isinstance(n, (int, float)) for n in obj):
                yield tuple(round(float(n), 6) for n in obj)
            for value in obj:
                yield from vectors(value)

    for reply in (stats, fine, private):
        assert not any(vec in rows for vec in vectors(reply.json()))
        assert base64.b64encode(v.files[0].read_bytes()[:64]).decode() not in reply.text


def test_unsigned_forged_and_revoked_requests_are_refused(world: World) -> None:
    analyst, stranger = world.accounts["coordinator"], world.accounts["validator"]
    v = world.vaults[2]
    g = grant(world, 2, analyst.address, "aggregate", [], 0.0)
    payload = {
        "template": "aggregate",
        "dataset_id": "0x" + v.dataset_id.hex(),
        "grant_id": g,
        "columns": ["f30"],
        "job_id": "0x" + keccak(text="revoked-job").hex(),
    }
    unsigned = httpx.post(v.url + "/v1/jobs", json=payload)
    assert unsigned.status_code == 403 and "signed" in unsigned.json()["error"]["message"]
    old_style = httpx.post(v.url + "/v1/jobs", json=payload, headers={"x-allmende-signature": "0x" + "11" * 65})
    assert old_style.status_code == 403  # a signature over the body alone is no longer a request
    forged = signed_post(v.url, stranger.key, payload)  # a valid signature, but not the grantee's
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "access_denied"
    owner_contracts(world, 2).data.revoke(g)
    revoked = signed_post(v.url, analyst.key, payload)
    assert revoked.status_code == 403 and "revoked" in revoked.json()["error"]["message"]
    wrong_dataset = signed_post(v.url, analyst.key, {**payload, "dataset_id": "0x" + "11" * 32})
    assert wrong_dataset.status_code == 404
    not_json = send(signed_request(v.url, analyst.key, "/v1/jobs", JOB, b"\xff{", v.dataset_id, g))
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "bad_job"


HOSTILE_JOBS: list[tuple[str, Any, int, str]] = [
    ("not an object", [1, 2], 400, "bad_job"),
    ("no template", {}, 403, "template_not_allowed"),
    ("template is a number", {"template": 7}, 403, "template_not_allowed"),
    ("federated round over /v1/jobs", {"template": "federated_round"}, 403, "template_not_allowed"),
    ("dataset id not hex", {"template": "aggregate", "dataset_id": "0xzz", "job_id": "0x" + "11" * 32}, 400, "bad_job"),
    ("dataset id too short", {"template": "aggregate", "dataset_id": "0x1234", "job_id": "0x" + "11" * 32}, 400,
     "bad_job"),
    ("job id missing", {"template": "aggregate", "dataset_id": "DATASET"}, 400, "bad_job"),
    ("grant id negative", {"template": "aggregate", "dataset_id": "DATASET", "job_id": "JOB", "grant_id": -1}, 400,
     "bad_job"),
    ("grant id a string", {"template": "aggregate", "dataset_id": "DATASET", "job_id": "JOB", "grant_id": "1"}, 400,
     "bad_job"),
    ("grant that does not exist", {"template": "aggregate", "dataset_id": "DATASET", "job_id": "JOB",
     "grant_id": 10_000, "columns": ["f1"]}, 403, "access_denied"),
    ("evaluate without a model", {"template": "evaluate", "dataset_id": "DATASET", "job_id": "JOB",
     "grant_id": "GRANT"}, 400, "bad_job"),
    ("model weights not base64", {"template": "evaluate", "dataset_id": "DATASET", "job_id": "JOB", "grant_id": "GRANT",
     "model": {"spec": {"inputs": 64, "classes": 10}, "weights": "%%%"}}, 400, "bad_job"),
    ("model weights not an npz", {"template": "evaluate", "dataset_id": "DATASET", "job_id": "JOB", "grant_id": "GRANT",
     "model": {"spec": {"inputs": 64, "classes": 10}, "weights": base64.b64encode(b"junk").decode()}}, 400, "bad_job"),
    ("model spec absurd", {"template": "evaluate", "dataset_id": "DATASET", "job_id": "JOB", "grant_id": "GRANT",
     "model": {"spec": {"inputs": -1, "classes": 10**9}, "weights": ""}}, 400, "bad_job"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "payload", "status", "code"), HOSTILE_JOBS, ids=[h[0] for h in HOSTILE_JOBS])
def test_hostile_jobs_get_a_clear_4xx(world: World, name: str, payload: Any, status: int, code: str) -> None:
    v = world.vaults[1]
    coordinator = world.accounts["coordinator"]
    g = grant(world, 1, coordinator.address, "evaluate", [world.base_id], 1.0)  # the model is decoded after it
    placeholders = {"DATASET": "0x" + v.dataset_id.hex(), "JOB": "0x" + keccak(text=name).hex(), "GRANT": g}
    if isinstance(payload, dict):
        payload = {k: placeholders.get(x, x) if isinstance(x, str) else x for k, x in payload.items()}
    # signed by the grantee for its grant (or for the grant the body names, if it names one), so
    # that what is checked is the body
    named = payload.get("grant_id") if isinstance(payload, dict) else None
    envelope_grant = named if isinstance(named, int) and not isinstance(named, bool) and named > 0 else g
    reply = send(signed_request(v.url, coordinator.key, "/v1/jobs", JOB, json.dumps(payload).encode(), v.dataset_id,
                                envelope_grant))  # fmt: skip
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code
    assert reply.json()["error"]["message"]


def test_hostile_flower_messages_get_a_clear_4xx(world: World) -> None:
    v = world.vaults[0]
    coordinator = world.accounts["coordinator"]
    key = coordinator.key
    g = grant(world, 0, coordinator.address, "federated_round", [world.base_id], 1.0)
    garbage = b"\x08\x96\x01 this is not a flower message"

    def flower(body: bytes, dataset: bytes = v.dataset_id, grant_id: int = g) -> httpx.Request:
        return signed_request(v.url, key, "/v1/flower", ROUND_FIT, body, dataset, grant_id, run_id=1, round_number=1)

    protobuf = {"content-type": "application/x-protobuf"}
    cases = [
        (flower(garbage), {}, 400),
        (flower(b""), {}, 400),
        (flower(garbage), {HEADER: ""}, 403),  # unsigned
        (flower(garbage), {HEADER: "0x1234"}, 403),  # malformed
        (flower(garbage, grant_id=10_000), {}, 403),  # no such grant
        (flower(garbage, dataset=b"\x22" * 32), {}, 404),  # no such dataset here
    ]
    for request, hdrs, status in cases:
        reply = send(request, headers={**protobuf, **hdrs})
        assert reply.status_code == status, (hdrs, reply.text)
        assert reply.json()["error"]["message"]
    too_big = b"\x00" * (17 * 1024 * 1024)
    reply = httpx.post(v.url + "/v1/jobs", content=too_big, headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code == 413
    assert httpx.get(v.url + "/healthz").status_code == 200  # and it keeps serving

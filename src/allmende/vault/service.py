"""The vault's logic: check a job against its grant on chain, run its template next
to the data, log the access on chain, release the aggregate.

Order for every job: (1) the grant permits it now, for this grantee, template and
model, and the epsilon it will cost fits the budget, or it does not run; (2) it runs;
(3) the job and its epsilon are written to SQLite; (4) `record_access` is sent, and
only once it is mined is the result released. A refused `record_access` (budget spent
by a concurrent job, grant revoked meanwhile) withholds the result.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from eth_utils import keccak

from allmende.chain import Contracts
from allmende.chain.bindings import TEMPLATES as TEMPLATE_IDS
from allmende.chain.errors import ContractReverted
from allmende.vault.datasets import Table
from allmende.vault.errors import AccessDenied, BadJob, BudgetExceeded, TemplateNotAllowed, UnknownDataset
from allmende.vault.model import (
    ModelSpec,
    check_params,
    epsilon_of,
    micro_epsilon,
    model_id,
    params_from_bytes,
    params_to_bytes,
    rho_of,
    train,
)
from allmende.vault.store import JobRow, VaultStore
from allmende.vault.templates import TEMPLATES, aggregate, dp_aggregate, evaluate

log = logging.getLogger("allmende.vault")
ZERO_MODEL = b"\x00" * 32


@dataclass(frozen=True)
class VaultPolicy:
    # smallest group an aggregate may describe
    min_group: int = 10
    # the least noise (multiplier on the clipping norm) a training step may add
    min_noise: float = 1.0
    # per-row gradient clipping norm for DP training
    clip: float = 1.0
    # most gradient steps one federated round may take
    max_steps: int = 200
    # δ of the (ε, δ) the vault reports and charges
    delta: float = 1e-5
    # answer aggregates only with differential privacy (the request names its epsilon)
    dp_aggregates: bool = False


def canonical(result: dict[str, Any]) -> bytes:
    return json.dumps(result, sort_keys=True, separators=(",", ":")).encode()


class VaultService:
    def __init__(self, tables: list[Table], contracts: Contracts, store: VaultStore, policy: VaultPolicy) -> None:
        self.tables = {t.dataset_id: t for t in tables}
        self.contracts = contracts
        self.data = contracts.data
        self.store = store
        self.policy = policy
        self.address = contracts.client.address
        self._lock = threading.Lock()  # one charge at a time: the budget check and the charge are atomic

    def table(self, dataset_id: bytes) -> Table:
        table = self.tables.get(dataset_id)
        if table is None:
            raise UnknownDataset(f"this vault holds no dataset 0x{dataset_id.hex()}")
        return table

    def info(self) -> dict[str, Any]:
        return {
            "vault": self.address,
            "templates": list(TEMPLATES),
            "datasets": [t.describe() for t in self.tables.values()],
            "policy": {
                "min_group": self.policy.min_group,
                "min_noise": self.policy.min_noise,
                "clip": self.policy.clip,
                "max_steps": self.policy.max_steps,
                "delta": self.policy.delta,
                "dp_aggregates": self.policy.dp_aggregates,
            },
        }

    # ------------------------------------------------------------ grants

    def authorize(
        self, grant_id: int, signer: str, template: str, dataset_id: bytes, model: bytes, rho: float, extra: int = 0
    ) -> int:
        """Check the grant on chain; returns the epsilon (millionths) the job will be charged:
        the growth of ε from `rho` more zCDP, plus `extra` pure-ε millionths."""
        try:
            grant = self.data.get_grant(grant_id)
        except ContractReverted:
            raise AccessDenied(f"grant {grant_id} does not exist") from None
        if grant.dataset_id != dataset_id:
            raise AccessDenied(f"grant {grant_id} is for another dataset")
        if grant.grantee.lower() != signer.lower():
            raise AccessDenied(f"grant {grant_id} is for {grant.grantee}, not the signer {signer}")
        if grant.template != TEMPLATE_IDS[template]:
            raise AccessDenied(f"grant {grant_id} does not permit the {template} template")
        if grant.revoked:
            raise AccessDenied(f"grant {grant_id} was revoked")
        if grant.expires_at <= self.contracts.client.timestamp():
            raise AccessDenied(f"grant {grant_id} has expired")
        if template != "aggregate" and model not in grant.model_ids:
            raise AccessDenied(f"grant {grant_id} does not cover model 0x{model.hex()}")
        spent_rho, spent_micro = self.store.spent(grant_id)
        charge = extra
        if rho:
            # the growth of ε(ρ): these charges telescope to ε of all the grant's zCDP releases
            before = micro_epsilon(epsilon_of(spent_rho, self.policy.delta))
            charge += micro_epsilon(epsilon_of(spent_rho + rho, self.policy.delta)) - before
        if max(spent_micro, grant.epsilon_spent) + charge > grant.epsilon_budget:
            left = grant.epsilon_budget - max(spent_micro, grant.epsilon_spent)
            raise BudgetExceeded(
                f"privacy budget exceeded: this job costs ε = {charge / 1e6:.6f}, grant {grant_id} has "
                f"{left / 1e6:.6f} left; it did not run"
            )
        return charge

    def charge_and_log(
        self,
        grant_id: int,
        job_id: bytes,
        dataset_id: bytes,
        template: str,
        model: bytes,
        result: bytes,
        rho: float,
        charge: int,
    ) -> str:
        """Write the job, then log its access on chain; raises (and forgets it) if the chain refuses."""
        result_hash = keccak(result)
        self.store.begin(JobRow(job_id, grant_id, dataset_id, template, model, result_hash, charge, rho, None))
        try:
            sent = self.data.record_access(grant_id, job_id, model, result_hash, charge)
        except ContractReverted as exc:
            self.store.forget(job_id)
            if "budget" in exc.reason:
                raise BudgetExceeded(f"the chain refused the access: {exc.reason}") from None
            raise AccessDenied(f"the chain refused the access: {exc.reason}") from None
        self.store.logged(job_id, sent.tx_hash)
        log.info("job 0x%s (%s) logged in %s, epsilon %d/1e6", job_id.hex()[:12], template, sent.tx_hash, charge)
        return sent.tx_hash

    # -------------------------------------------------------------- jobs

    def run_job(self, body: dict[str, Any], signer: str) -> dict[str, Any]:
        """Evaluate or aggregate (federated rounds arrive through Flower)."""
        template = body.get("template")
        if template not in ("evaluate", "aggregate"):
            hint = " (it runs through `allmende federated`)" if template == "federated_round" else ""
            raise TemplateNotAllowed(
                f"template {template!r} is not allowed here{hint}: this vault runs only "
                f"{', '.join(TEMPLATES)}; raw rows never leave"
            )
        dataset_id = parse_bytes32(body.get("dataset_id"), "dataset_id")
        job_id = parse_bytes32(body.get("job_id"), "job_id")
        grant_id = body.get("grant_id")
        if not isinstance(grant_id, int) or isinstance(grant_id, bool) or grant_id <= 0:
            raise BadJob("'grant_id' must be a positive integer")
        table = self.table(dataset_id)
        model, extra = ZERO_MODEL, 0
        if template == "evaluate":
            spec, params = parse_model(body.get("model"))
            model = model_id(spec, params)
        else:
            query = self._aggregate_query(body)
            if query["epsilon"] is not None:
                extra = micro_epsilon(query["epsilon"])
        with self._lock:
            charge = self.authorize(grant_id, signer, template, dataset_id, model, 0.0, extra=extra)
            if template == "evaluate":
                result = evaluate(table, spec, params, self.policy.min_group)
            elif query["epsilon"] is None:
                result = aggregate(
                    table, query["columns"], query["group_by"], query["bins"], query["range"], self.policy.min_group
                )
            else:
                rng = np.random.default_rng(secrets.randbits(128))
                result = dp_aggregate(
                    table, query["columns"], query["group_by"], query["bins"], query["range"],
                    self.policy.min_group, query["epsilon"], rng,
                )  # fmt: skip
            result = {
                "template": template,
                "dataset_id": "0x" + dataset_id.hex(),
                "model_id": "0x" + model.hex(),
                **result,
            }
            tx = self.charge_and_log(grant_id, job_id, dataset_id, template, model, canonical(result), 0.0, charge)
        return {"result": result, "result_hash": "0x" + keccak(canonical(result)).hex(), "access_tx": tx}

    def _aggregate_query(self, body: dict[str, Any]) -> dict[str, Any]:
        """The aggregate template's parameters, checked before anything runs."""
        value_range = body.get("range")
        if value_range is not None and not (
            isinstance(value_range, list)
            and len(value_range) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
        ):
            raise BadJob("'range' must be [low, high]")
        bins = body.get("bins", 10)
        if not isinstance(bins, int) or isinstance(bins, bool):
            raise BadJob("'bins' must be an integer")
        group_by = body.get("group_by")
        if group_by is not None and not isinstance(group_by, str):
            raise BadJob("'group_by' must be a column name")
        columns = body.get("columns")
        if not isinstance(columns, list):
            raise BadJob("'columns' must be a list of column names")
        epsilon = body.get("epsilon")
        if epsilon is None and self.policy.dp_aggregates:
            raise BadJob("this vault answers aggregates only with differential privacy: send 'epsilon'")
        if epsilon is not None:
            if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not 0 < epsilon <= 100:
                raise BadJob("'epsilon' must be a number in (0, 100]")
            if value_range is None:
                raise BadJob("with 'epsilon', 'range' is required (values are clipped to it)")
        return {
            "columns": columns,
            "group_by": group_by,
            "bins": bins,
            "range": (float(value_range[0]), float(value_range[1])) if value_range else None,
            "epsilon": None if epsilon is None else float(epsilon),
        }

    def train_round(
        self,
        grant_id: int,
        signer: str,
        dataset_id: bytes,
        base_model: bytes,
        job_id: bytes,
        spec: ModelSpec,
        params: list[np.ndarray],
        steps: int,
        lr: float,
        noise: float,
    ) -> tuple[list[np.ndarray], int, int]:
        """One federated round's local training with DP; returns (params, rows, epsilon charged)."""
        table = self.table(dataset_id)
        if table.labels is None or spec.inputs != len(table.columns):
            raise BadJob("the model does not fit this dataset (inputs or labels)")
        if not 1 <= steps <= self.policy.max_steps:
            raise BadJob(f"a round takes 1 to {self.policy.max_steps} steps")
        noise = max(noise, self.policy.min_noise)  # the vault, not the requester, sets the floor
        rho = rho_of(steps, noise)
        with self._lock:
            charge = self.authorize(grant_id, signer, "federated_round", dataset_id, base_model, rho)
            seed = int.from_bytes(keccak(job_id + self.address.encode())[:4], "big")
            out = train(spec, params, table.features, table.labels, steps, lr, self.policy.clip, noise, seed)
            self.charge_and_log(
                grant_id, job_id, dataset_id, "federated_round", base_model, params_to_bytes(out), rho, charge
            )
        return out, table.rows, charge


def parse_bytes32(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadJob(f"'{name}' must be a 0x-prefixed 32-byte hex string")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise BadJob(f"'{name}' is not hex") from None
    if len(raw) != 32:
        raise BadJob(f"'{name}' must be 32 bytes")
    return raw


def parse_model(data: object) -> tuple[ModelSpec, list[np.ndarray]]:
    """{"spec": {...}, "weights": base64 of an .npz}: what a job sends as its model."""
    if not isinstance(data, dict):
        raise BadJob('\'model\' must be {"spec": {...}, "weights": base64 npz}')
    try:
        spec = ModelSpec.from_json(data.get("spec"))
        params = params_from_bytes(base64.b64decode(str(data.get("weights", "")), validate=True))
        check_params(spec, params)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BadJob(f"'model' is not usable: {exc}") from None
    return spec, params


def model_payload(spec: ModelSpec, params: list[np.ndarray]) -> dict[str, Any]:
    return {"spec": spec.to_json(), "weights": base64.b64encode(params_to_bytes(params)).decode()}

"""The vault's logic: check a job against its grant on chain, run its template next
to the data, log the access on chain, release the aggregate.

Order for every job: (1) the grant permits it now, for this grantee, template and
model, and the epsilon it will cost fits the budget, or it does not run; (2) it runs;
(3) the job and its epsilon are written to SQLite; (4) `record_access` is sent, and
only once it is mined is the result released. A refused `record_access` (budget spent
by a concurrent job, grant revoked meanwhile) withholds the result.

A secure federated round (SecAgg+) is all or nothing across vaults: the coordinator
first asks every vault `check_round` (the same checks, nothing run); each vault then
trains and only *reserves* the charge (its update leaves masked); once every vault has
trained, the coordinator asks every vault `prepare_round` (the grant still valid at the
chain's next block, the charge within budget) and only then for the unmask shares, when
`commit_round` logs the charge on chain (and the unmasking needs every vault's shares).
A round that fails anywhere before that is aborted: `abort_round` (or, if the coordinator
vanished, `RESERVATION_TTL`, or a restart) undoes the reservations, nothing is logged.
Charges follow `allmende.core.privacy`: computed when logged, from what is logged only.

What the vault releases is private by default: evaluate and aggregate answers are
ε-DP (the request names ε, which is charged), federated rounds are DP-GD. All noise
comes from `os.urandom` (`allmende.vault.noise`). Exact aggregates run only for grants
whose data owner enabled them (`allmende data exact-aggregates`), and only while the
differencing audit (`allmende.vault.audit`) finds no small group they would isolate.
A federated round trains only parameters its grant covers: a granted model id, or one
step of at most the clipping norm from the parameters this vault trained from in the
run's previous round (a FedAvg mean of clipped updates moves them no further).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from eth_utils import keccak

from allmende.chain import Contracts
from allmende.chain.bindings import TEMPLATES as TEMPLATE_IDS
from allmende.chain.bindings import GrantRecord
from allmende.chain.client import SentTransaction
from allmende.chain.errors import ContractReverted, TransactionFailed
from allmende.core.vault_requests import VaultRequest
from allmende.vault.audit import initial_cells, refine, smallest_cell
from allmende.vault.datasets import Table
from allmende.vault.errors import (
    AccessDenied,
    BadJob,
    BudgetExceeded,
    ChainUnconfirmed,
    DifferencingRefused,
    ParametersNotGranted,
    TemplateNotAllowed,
    UnknownDataset,
)
from allmende.vault.jobs import (
    canonical,
    check_finite,
    job_header,
    matches_request,
    only_fields,
    parse_epsilon,
    round_check_fields,
)
from allmende.vault.lora_service import LoraRounds
from allmende.vault.model import (
    ModelSpec,
    check_params,
    micro_epsilon,
    model_id,
    params_from_bytes,
    params_to_bytes,
    rho_of,
    shapes_of,
    train,
)
from allmende.vault.store import JobRow, RoundRow, VaultStore
from allmende.vault.templates import TEMPLATES, aggregate, dp_aggregate, evaluate
from allmende.vault.text import TextDataset

log = logging.getLogger("allmende.vault")
ZERO_MODEL = b"\x00" * 32
RESERVATION_TTL = 900.0  # seconds a secure round's charge stays reserved without an unmask or abort
ROUND_WINDOW = 2 * int(RESERVATION_TTL)  # seconds a grant must outlive a round's check (and its training)
MAX_LOGGED = 300  # characters of a refusal's message that reach the log and the refusals table
_MODEL = "model"
JOB_FIELDS = {
    "evaluate": frozenset({"template", "dataset_id", "grant_id", "job_id", _MODEL, "epsilon"}),
    "aggregate": frozenset({"template", "dataset_id", "grant_id", "job_id", "columns", "group_by", "bins", "range",
                            "epsilon"}),
}  # fmt: skip
ROUND_CHECK_FIELDS = frozenset({"dataset_id", "grant_id", "run_id", _MODEL, "steps", "noise", "clipping_norm"})
ROUND_ABORT_FIELDS = frozenset({"dataset_id", "grant_id", "run_id", "round"})
SPEC_FIELDS = frozenset({"inputs", "hidden", "classes", "shift", "scale"})


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
    # the largest update norm (Flower's clipping norm) a federated round may release
    max_update_norm: float = 5.0
    # a later round's parameters may be this fraction of the clipping norm further than it
    # (SecAgg+ quantisation); Flower's central noise (`--server-noise`) needs more
    step_slack: float = 0.01
    # evaluate clips each row's loss to this before summing (the loss sum's sensitivity)
    loss_clip: float = 5.0


class VaultService:
    def __init__(
        self,
        tables: list[Table],
        contracts: Contracts,
        store: VaultStore,
        policy: VaultPolicy,
        texts: list[TextDataset] | None = None,
        models: dict[bytes, Path] | None = None,
    ) -> None:
        self.tables = {t.dataset_id: t for t in tables}
        # text datasets and the base LMs (id → folder) of the LoRA and LM-evaluate templates
        self.lora = LoraRounds(self, texts or [], models or {})
        self.contracts = contracts
        self.data = contracts.data
        self.store = store
        self.policy = policy
        self.address = contracts.client.address
        self.random_bytes = os.urandom  # every DP draw; never seeded from a request
        self._lock = threading.Lock()  # one charge at a time: the budget check and the charge are atomic

    def table(self, dataset_id: bytes) -> Table:
        table = self.tables.get(dataset_id)
        if table is None:
            raise UnknownDataset(f"this vault holds no dataset 0x{dataset_id.hex()}")
        return table

    def holds(self, dataset_id: bytes) -> None:
        """UnknownDataset unless this vault holds the dataset (a table or a text dataset)."""
        if dataset_id not in self.lora.texts:
            self.table(dataset_id)

    def info(self) -> dict[str, Any]:
        return {
            "vault": self.address,
            "chain_id": self.contracts.client.chain_id,
            "data_contract": self.data.address,  # with chain_id, the domain requests are signed under
            "templates": list(TEMPLATES),
            "datasets": [t.describe() for t in self.tables.values()] + [t.describe() for t in self.lora.texts.values()],
            "language_models": ["0x" + m.hex() for m in self.lora.models],
            "policy": {
                "min_group": self.policy.min_group,
                "min_noise": self.policy.min_noise,
                "clip": self.policy.clip,
                "max_steps": self.policy.max_steps,
                "delta": self.policy.delta,
                "max_update_norm": self.policy.max_update_norm,
                "step_slack": self.policy.step_slack,
                "loss_clip": self.policy.loss_clip,
                "exact_aggregates": "per grant, if the data owner enabled them",
                "noise": "os.urandom; discrete Laplace and discrete Gaussian",
            },
        }

    # ------------------------------------------------------------ grants

    def grantee_of(self, grant_id: int) -> str | None:
        """The grant's grantee on chain, None if there is no such grant."""
        if grant_id <= 0:
            return None
        try:
            return self.data.get_grant(grant_id).grantee
        except ContractReverted:
            return None

    def grant_for(self, grant_id: int, signer: str, template: str, dataset_id: bytes) -> GrantRecord:
        """The grant, if it lets `signer` run `template` on this dataset now (not revoked or
        expired); AccessDenied otherwise. Asked before any model bytes are decoded."""
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
        now = self.chain_time()
        if grant.expires_at <= now:
            raise AccessDenied(
                f"grant {grant_id} has expired (at {grant.expires_at}, the chain's next block is at {now}); "
                "its data owner can grant again"
            )
        return grant

    def chain_time(self) -> int:
        """The time the chain will record for the next transaction (its pending block's), not the
        latest block's: on an idle chain the latest block can be long past."""
        client = self.contracts.client
        try:
            pending = int(client.rpc(lambda: client.w3.eth.get_block("pending")["timestamp"], "pending block"))
        except Exception:  # an endpoint without a pending block: the latest block's, or the clock's
            pending = 0
        return max(pending, client.timestamp() + 1)

    def lasts_the_round(self, grant: GrantRecord, grant_id: int) -> None:
        """A secure round is logged at its unmask, up to `RESERVATION_TTL` after it trained: a grant
        that expires before then could expire between the check and the logging, at one vault and
        not another. Refused before anything runs."""
        now = self.chain_time()
        if grant.expires_at <= now + ROUND_WINDOW:
            raise AccessDenied(
                f"grant {grant_id} expires in {max(grant.expires_at - now, 0)} s, before a round started now is "
                f"sure to be logged (a round needs {ROUND_WINDOW} s of a grant's time); its data owner can "
                "grant again for longer"
            )

    def authorize(
        self,
        grant_id: int,
        signer: str,
        template: str,
        dataset_id: bytes,
        model: bytes,
        rho: float,
        extra: int = 0,
        lineage: str = "",
    ) -> int:
        """Check the grant on chain; returns the epsilon (millionths) the job will be charged:
        the growth of ε from `rho` more zCDP, plus `extra` pure-ε millionths. `lineage`
        explains, for a federated round, why its parameters did not descend from a round."""
        grant = self.grant_for(grant_id, signer, template, dataset_id)
        if template != "aggregate" and model not in grant.model_ids:
            if template == "federated_round":
                raise ParametersNotGranted(
                    f"grant {grant_id} does not cover the parameters sent (model 0x{model.hex()}): a round "
                    f"trains only a model the grant covers{lineage}; nothing ran and nothing was logged"
                )
            raise AccessDenied(f"grant {grant_id} does not cover model 0x{model.hex()}")
        self.expire_reservations()
        self.settle(grant_id)
        ledger = self.store.ledger(grant_id)
        delta = self.policy.delta
        # charged from what is logged only (a reservation undone later changes no charge), checked
        # against the budget as if every open reservation were logged too (allmende.core.privacy)
        charge = ledger.charge(rho, delta, extra)
        worst = ledger.worst_case(rho, delta, extra, chain_spent=grant.epsilon_spent)
        if worst > grant.epsilon_budget:
            left = ledger.left(grant.epsilon_budget, delta, grant.epsilon_spent)
            cost = worst - ledger.worst_case(0.0, delta, chain_spent=grant.epsilon_spent)
            held = ledger.worst_case(0.0, delta) - ledger.logged_micro
            reserved = (
                f" ({held / 1e6:.6f} of its ε is held by rounds that trained here and were neither logged nor "
                f"aborted; they are undone within {RESERVATION_TTL / 60:.0f} minutes)"
                if held > 0
                else ""
            )
            raise BudgetExceeded(
                f"privacy budget exceeded: this job costs ε = {cost / 1e6:.6f}, grant {grant_id} has "
                f"{max(left, 0) / 1e6:.6f} left of {grant.epsilon_budget / 1e6:.6f}{reserved}; it did not run"
            )
        return charge

    def settle(self, grant_id: int) -> None:
        """A job of this grant written but not marked logged (its `record_access` was sent and its
        answer lost): if the chain has it, mark it logged, so the next charge counts it."""
        for job in self.store.in_flight(grant_id):
            if self.data.job_logged(job.dataset_id, job.job_id):
                self.store.logged(job.job_id, "recovered")

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
        round_row: RoundRow | None = None,
        cells: np.ndarray | None = None,
    ) -> str:
        """Write the job, then log its access on chain; raises (and forgets it) if the chain refuses."""
        result_hash = keccak(result)
        job = JobRow(job_id, grant_id, dataset_id, template, model, result_hash, charge, rho, None)
        try:
            self.store.begin(job, round_row, cells)
        except sqlite3.IntegrityError:
            raise BadJob(f"job id 0x{job_id.hex()} was already used; send a fresh one") from None
        sent = self._record(job)
        self.store.logged(job_id, sent.tx_hash)
        log.info("job 0x%s (%s) logged in %s, epsilon %d/1e6", job_id.hex()[:12], template, sent.tx_hash, charge)
        return sent.tx_hash

    def _record(self, job: JobRow) -> SentTransaction:
        """Log a written job's access on chain. A refusal (in the estimate, or a revert when mined:
        the grant expired or was revoked by the block that took it) forgets the job and raises a
        clear AccessDenied or BudgetExceeded, kept in the vault's refusals; a transaction not
        confirmed in time leaves the job open (`settle` or a restart finds out) and releases nothing."""
        try:
            return self.data.record_access(job.grant_id, job.job_id, job.model_id, job.result_hash, job.epsilon_micro)
        except ContractReverted as exc:
            reason = exc.reason
        except TransactionFailed as exc:
            if "reverted" not in str(exc) or self.data.job_logged(job.dataset_id, job.job_id):
                raise ChainUnconfirmed(
                    f"the chain did not confirm the access in time ({str(exc)[:120]}); nothing was released, and "
                    "the vault settles the charge with the chain before its next job on this grant"
                ) from None
            reason = self._why_refused(job.grant_id)
        self.store.forget(job.job_id)
        if "budget" in reason:
            raise BudgetExceeded(f"the chain refused the access: {reason}; nothing was released") from None
        raise AccessDenied(f"the chain refused the access: {reason}; nothing was released or charged") from None

    def _why_refused(self, grant_id: int) -> str:
        """Why the chain reverted an access under this grant, as far as its state tells."""
        grant = self.data.get_grant(grant_id)
        if grant.revoked:
            return f"grant {grant_id} was revoked"
        block = self.contracts.client.timestamp()
        if grant.expires_at <= block:
            return f"grant {grant_id} expired at {grant.expires_at}, before the block that took the access ({block})"
        return (
            f"grant {grant_id}'s access reverted when mined (budget {grant.epsilon_budget / 1e6:.6f}, spent "
            f"{grant.epsilon_spent / 1e6:.6f})"
        )

    # -------------------------------------------------------------- jobs

    def run_job(self, body: dict[str, Any], signer: str, request: VaultRequest | None = None) -> dict[str, Any]:
        """Evaluate or aggregate (federated rounds arrive through Flower). `request` is the signed
        request the body came with: its grant and dataset must be the body's."""
        template = body.get("template")
        if template not in ("evaluate", "aggregate"):
            hint = " (it runs through `allmende federated`)" if template == "federated_round" else ""
            shown = repr(template) if len(repr(template)) <= 40 else repr(template)[:40] + "…"
            raise TemplateNotAllowed(
                f"template {shown} is not allowed here{hint}: this vault runs only "
                f"{', '.join(TEMPLATES)}; raw rows never leave"
            )
        if template == "evaluate" and "lora" in body:  # a language model with an adapter, on a text dataset
            return self.lora.evaluate(body, signer, request)
        only_fields(body, JOB_FIELDS[template], f"a {template} job")
        dataset_id, job_id, grant_id = job_header(body, request)
        table = self.table(dataset_id)
        model, epsilon = ZERO_MODEL, None
        if template == "evaluate":
            self.grant_for(grant_id, signer, template, dataset_id)  # before any model bytes are decoded
            spec, params = parse_model(body.get("model"), inputs=len(table.columns))
            model = model_id(spec, params)
            epsilon = parse_epsilon(body.get("epsilon"), "evaluate releases noisy counts and a noisy loss")
        else:
            query = self._aggregate_query(body)
            epsilon = query["epsilon"]
        extra = 0 if epsilon is None else micro_epsilon(epsilon)
        cells = None
        with self._lock:
            charge = self.authorize(grant_id, signer, template, dataset_id, model, 0.0, extra=extra)
            if template == "evaluate":
                assert epsilon is not None
                result = evaluate(
                    table, spec, params, self.policy.min_group, epsilon, self.policy.loss_clip, self.random_bytes
                )
            elif epsilon is None:
                if not self.store.exact_allowed(grant_id):
                    raise AccessDenied(
                        f"grant {grant_id} answers aggregates only with differential privacy: send 'epsilon' "
                        "(exact aggregates need the data owner's consent for this grant: "
                        "`allmende data exact-aggregates`)"
                    )
                result, partitions = aggregate(
                    table, query["columns"], query["group_by"], query["bins"], query["range"], self.policy.min_group
                )
                before = self.store.cells(dataset_id)
                cells = refine(initial_cells(table.rows) if before is None else before, partitions)
                if 0 < smallest_cell(cells) < self.policy.min_group:
                    raise DifferencingRefused(
                        f"refused: with the exact answers already given on this dataset, this one would let a "
                        f"group of fewer than {self.policy.min_group} rows be derived by subtraction (from the "
                        "total or another answer); ask with 'epsilon' instead. Nothing was released or charged."
                    )
            else:
                result = dp_aggregate(
                    table, query["columns"], query["group_by"], query["bins"], query["range"],
                    self.policy.min_group, epsilon, self.random_bytes,
                )  # fmt: skip
            result = {
                "template": template,
                "dataset_id": "0x" + dataset_id.hex(),
                "model_id": "0x" + model.hex(),
                **result,
            }
            check_finite(result)  # before the access is logged: a result that cannot be released is not charged
            tx = self.charge_and_log(
                grant_id, job_id, dataset_id, template, model, canonical(result), 0.0, charge, cells=cells
            )
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
        if value_range is not None and not all(math.isfinite(v) for v in value_range):
            raise BadJob("'range' must be finite numbers")
        bins = body.get("bins", 10)
        if not isinstance(bins, int) or isinstance(bins, bool):
            raise BadJob("'bins' must be an integer")
        group_by = body.get("group_by")
        if group_by is not None and not isinstance(group_by, str):
            raise BadJob("'group_by' must be a column name")
        columns = body.get("columns")
        if not isinstance(columns, list):
            raise BadJob("'columns' must be a list of column names")
        epsilon = None if body.get("epsilon") is None else parse_epsilon(body.get("epsilon"), "")
        if epsilon is not None and value_range is None:
            raise BadJob("with 'epsilon', 'range' is required (values are clipped to it)")
        return {
            "columns": columns,
            "group_by": group_by,
            "bins": bins,
            "range": (float(value_range[0]), float(value_range[1])) if value_range else None,
            "epsilon": epsilon,
        }

    def _round_plan(
        self,
        grant_id: int,
        signer: str,
        dataset_id: bytes,
        run_id: int,
        spec: ModelSpec,
        params: list[np.ndarray],
        steps: int,
        noise: float,
        update_norm: float,
    ) -> tuple[bytes, float, int, float]:
        """What a round would be: (granted root model, ρ, ε charge in millionths, noise), or the
        refusal it gets. Call with the lock held."""
        table = self.table(dataset_id)
        if table.labels is None or spec.inputs != len(table.columns):
            raise BadJob("the model does not fit this dataset (inputs or labels)")
        if not 1 <= steps <= self.policy.max_steps:
            raise BadJob(f"a round takes 1 to {self.policy.max_steps} steps")
        if not 0 < update_norm <= self.policy.max_update_norm:
            raise BadJob(f"the clipping norm must be in (0, {self.policy.max_update_norm}] (this vault's limit)")
        try:
            check_params(spec, params)
        except ValueError as exc:
            raise BadJob(str(exc)) from None
        noise = max(noise, self.policy.min_noise)  # the vault, not the requester, sets the floor
        rho = rho_of(steps, noise, sum(int(np.size(p)) for p in params))
        spec_json = json.dumps(spec.to_json(), sort_keys=True)
        digest = model_id(spec, params)
        root, why = digest, ""
        parent = self.store.last_round(grant_id, run_id)
        if parent is None and digest not in self.data.get_grant(grant_id).model_ids:
            parent = self._continued_round(grant_id, run_id)  # a new grant on the run's lineage
        if parent is not None and parent.spec == spec_json:
            if digest == parent.released_hash:
                root = parent.root_model
            else:
                previous = params_from_bytes(parent.input)
                step = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(params, previous, strict=True))))
                if step <= parent.clip * (1.0 + self.policy.step_slack) + 1e-9:
                    root = parent.root_model
                else:
                    why = (
                        f", or parameters within {parent.clip:g} of those this vault trained from in the "
                        f"previous round of run {run_id} (these are {step:.4g} away)"
                    )
        elif parent is None:
            why = f" (run {run_id} has no earlier round here to descend from)"
        else:
            why = f" (the model spec differs from that of run {run_id}'s previous round)"
        charge = self.authorize(grant_id, signer, "federated_round", dataset_id, root, rho, lineage=why)
        return root, rho, charge, noise

    def _continued_round(self, grant_id: int, run_id: int) -> RoundRow | None:
        """The round a run resumed under a new grant descends from: the last round this vault
        ran in the run, if it ran under an earlier grant of the same grantee on the same
        dataset (an owner tops up a spent budget with a new grant, on the base model or on the
        last round's). The new grant must still cover that round's root model (`authorize`
        checks it), so no grant reaches beyond the lineage its owner allowed."""
        latest = self.store.last_round_in_run(run_id)
        if latest is None or latest.grant_id == grant_id:
            return None
        before, now = self.data.get_grant(latest.grant_id), self.data.get_grant(grant_id)
        if (before.grantee.lower(), before.dataset_id) != (now.grantee.lower(), now.dataset_id):
            return None  # another party's run: nothing to descend from
        return latest

    def check_round(
        self,
        grant_id: int,
        signer: str,
        dataset_id: bytes,
        run_id: int,
        spec: ModelSpec,
        params: list[np.ndarray],
        steps: int,
        noise: float,
        update_norm: float,
    ) -> dict[str, Any]:
        """Would this vault run this round now? The same checks as `train_round` (grant, expiry,
        revocation, lineage, budget), nothing trained, charged or logged. A coordinator asks every
        vault before any of them trains."""
        with self._lock:
            _, _, charge, _ = self._round_plan(
                grant_id, signer, dataset_id, run_id, spec, params, steps, noise, update_norm
            )
            grant = self.data.get_grant(grant_id)
            self.lasts_the_round(grant, grant_id)
            left = self.store.ledger(grant_id).left(grant.epsilon_budget, self.policy.delta, grant.epsilon_spent)
        return {"epsilon_micro": charge, "left_micro": left, "expires_at": grant.expires_at}

    def check_round_request(self, body: dict[str, Any], signer: str, request: VaultRequest) -> dict[str, Any]:
        """`check_round` for a signed round check: its fields strictly, the grant before the model."""
        only_fields(body, ROUND_CHECK_FIELDS, "a round check")
        grant, run, steps, noise, clip, dataset_id = round_check_fields(body)
        matches_request(request, dataset_id, grant, run)
        table = self.table(dataset_id)
        self.grant_for(grant, signer, "federated_round", dataset_id)  # before any model bytes are decoded
        spec, params = parse_model(body.get("model"), inputs=len(table.columns))
        return self.check_round(grant, signer, dataset_id, run, spec, params, steps, float(noise), float(clip))

    def train_round(
        self,
        grant_id: int,
        signer: str,
        dataset_id: bytes,
        run_id: int,
        spec: ModelSpec,
        params: list[np.ndarray],
        steps: int,
        lr: float,
        noise: float,
        update_norm: float,
        reserve: bool = False,
        round_number: int = 0,
    ) -> tuple[list[np.ndarray], int, int]:
        """One federated round's local training with DP; returns (params, rows, epsilon charged).

        `params` must be a model the grant covers, or descend from the round this vault ran
        last in this run (`run_id`): its own released parameters, or at most `update_norm`
        of that round (the bound Flower's client-side clipping put on every vault's update,
        so on their mean) from the parameters it trained from. Anything else is refused
        before it trains, with nothing charged or logged.

        With `reserve` (SecAgg+: the update leaves masked, and only the unmask stage, which
        needs every vault, can reveal it) the charge is reserved in the vault's books and
        logged on chain by `commit_round`, or undone by `abort_round`; without it (plain
        FedAvg releases the update as it is) it is logged before the update leaves."""
        table = self.table(dataset_id)
        with self._lock:
            root, rho, charge, noise = self._round_plan(
                grant_id, signer, dataset_id, run_id, spec, params, steps, noise, update_norm
            )
            assert table.labels is not None  # _round_plan refused an unlabelled dataset
            if reserve:  # logged up to RESERVATION_TTL from now: the grant must last that long
                self.lasts_the_round(self.data.get_grant(grant_id), grant_id)
            out = train(spec, params, table.features, table.labels, steps, lr, self.policy.clip, noise,
                        self.random_bytes)  # fmt: skip
            digest = model_id(spec, params)
            released = model_id(spec, out)
            job_id = keccak(b"federated_round" + dataset_id + digest + secrets.token_bytes(16))
            spec_json = json.dumps(spec.to_json(), sort_keys=True)
            lineage = RoundRow(grant_id, run_id, root, spec_json, digest, params_to_bytes(params), update_norm,
                               released)  # fmt: skip
            if reserve:
                result_hash = keccak(params_to_bytes(out))
                job = JobRow(job_id, grant_id, dataset_id, "federated_round", root, result_hash, charge, rho, None)
                self.store.begin(job, lineage, reserve_for=signer, round_number=round_number)
                log.info("round %d of run %d reserved ε %d/1e6 on grant %d", round_number, run_id, charge, grant_id)
            else:
                self.charge_and_log(
                    grant_id, job_id, dataset_id, "federated_round", root, params_to_bytes(out), rho, charge, lineage
                )
        return out, table.rows, charge

    def commit_round(self, grant_id: int, run_id: int, round_number: int, signer: str) -> list[str]:
        """Every vault of the round trained (the coordinator asks for the unmask shares): log the
        signer's reserved round of this grant and run on chain. A refusal there undoes it and raises."""
        txs = []
        with self._lock:
            self.expire_reservations()  # a reservation past its time is undone, never logged late
            jobs = self.store.reserved(grant_id, run_id, round_number, signer)
            if not jobs:
                # unmasking without a reservation would reveal an update nobody paid ε for
                raise AccessDenied(
                    f"round {round_number} of run {run_id} is not reserved on grant {grant_id} (aborted or expired)"
                )
            self.settle(grant_id)
            for job in jobs:
                # the charge is the growth of ε over what is logged now, not over what was logged or
                # reserved when it trained: undone reservations never discount a charge
                charge = self.store.ledger(grant_id).charge(job.rho, self.policy.delta)
                self.store.set_charge(job.job_id, charge)
                job = replace(job, epsilon_micro=charge)
                sent = self._record(job)
                self.store.logged(job.job_id, sent.tx_hash)
                txs.append(sent.tx_hash)
                log.info(
                    "round of run %d logged in %s, grant %d, epsilon %d/1e6",
                    run_id, sent.tx_hash, grant_id, job.epsilon_micro,
                )  # fmt: skip
        return txs

    def prepare_round(self, grant_id: int, dataset_id: bytes, run_id: int, round_number: int,
                      signer: str) -> dict[str, Any]:  # fmt: skip
        """Would this vault log its reserved round now? The first phase of a secure round's log:
        the coordinator asks every vault once all of them trained, and sends the unmask (which
        logs) only if all say yes, so a grant revoked or expired while the vaults trained stops
        the round before any vault logs it. Nothing is logged or changed here."""
        with self._lock:
            grant = self.grant_for(grant_id, signer, "federated_round", dataset_id)
            self.expire_reservations()
            jobs = self.store.reserved(grant_id, run_id, round_number, signer)
            if not jobs:
                raise AccessDenied(
                    f"round {round_number} of run {run_id} is not reserved on grant {grant_id} (aborted or expired)"
                )
            self.settle(grant_id)
            ledger = self.store.ledger(grant_id)
            charge = sum(ledger.charge(j.rho, self.policy.delta) for j in jobs)
            if max(ledger.logged_micro, grant.epsilon_spent) + charge > grant.epsilon_budget:
                raise BudgetExceeded(
                    f"grant {grant_id} cannot take this round's ε {charge / 1e6:.6f}: the chain has "
                    f"{grant.epsilon_spent / 1e6:.6f} of {grant.epsilon_budget / 1e6:.6f} spent"
                )
        return {"epsilon_micro": charge, "expires_at": grant.expires_at}

    def abort_round(self, grant_id: int, run_id: int, round_number: int, signer: str) -> int:
        """The round failed elsewhere: forget the signer's reservation of this round of this grant
        and run (nothing was revealed: SecAgg+ unmasks nothing without every vault). Returns how many."""
        with self._lock:
            jobs = self.store.reserved(grant_id, run_id, round_number, signer)
            for job in jobs:
                self.store.forget(job.job_id)
        if jobs:
            log.info("round %d of run %d aborted: %d reservation(s) on grant %d undone", round_number, run_id,
                     len(jobs), grant_id)  # fmt: skip
        return len(jobs)

    def expire_reservations(self, ttl: float = RESERVATION_TTL) -> None:
        """Undo reservations whose coordinator never asked to unmask or abort within `ttl`."""
        for job_id in self.store.stale_reservations(time.time() - ttl):
            self.store.forget(job_id)
            log.info("reservation 0x%s expired; its charge is undone", job_id.hex()[:12])

    def refused(self, path: str, exc: Exception, signer: str | None, grant_id: int | None,
                dataset_id: bytes | None) -> None:  # fmt: skip
        """Count and log a refused request (`/metrics`, `allmende data refusals`)."""
        code = getattr(exc, "code", "internal_error")
        message = str(exc) if len(str(exc)) <= MAX_LOGGED else str(exc)[:MAX_LOGGED] + "…"  # log lines stay short
        log.warning(
            "refused %s from %s (grant %s, dataset %s): %s: %s",
            path, signer or "an unknown signer", grant_id if grant_id is not None else "-",
            "0x" + dataset_id.hex()[:12] if dataset_id else "-", code, message,
        )  # fmt: skip
        self.store.refused(path, code, message, signer, grant_id, dataset_id)


def parse_model(data: object, inputs: int | None = None) -> tuple[ModelSpec, list[np.ndarray]]:
    """{"spec": {...}, "weights": base64 of an .npz}: what a job sends as its model. The spec is
    checked first (its fields, its size, `inputs` where the dataset fixes them), then the archive
    against the shapes the spec needs before anything is inflated (`params_from_bytes`)."""
    if not isinstance(data, dict) or set(data) != {"spec", "weights"}:
        raise BadJob('\'model\' must be {"spec": {...}, "weights": base64 npz}')
    try:
        if not isinstance(data["spec"], dict) or not set(data["spec"]) <= SPEC_FIELDS:
            raise ValueError("the spec takes inputs, hidden, classes, shift and scale only")
        spec = ModelSpec.from_json(data["spec"])
        if inputs is not None and spec.inputs != inputs:
            raise ValueError(f"the model takes {spec.inputs} inputs; the dataset has {inputs} feature columns")
        shapes = shapes_of(spec)
        params = params_from_bytes(base64.b64decode(str(data["weights"]), validate=True), shapes)
        check_params(spec, params)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BadJob(f"'model' is not usable: {str(exc)[:200]}") from None
    return spec, params


def model_payload(spec: ModelSpec, params: list[np.ndarray]) -> dict[str, Any]:
    return {"spec": spec.to_json(), "weights": base64.b64encode(params_to_bytes(params)).decode()}

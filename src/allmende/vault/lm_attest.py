"""A validator attests a LoRA fine-tune's held-out metric on chain (`allmende federated lora-attest`).

The tabular path (`allmende federated attest`) sends the model itself to the vault. A LoRA
fine-tune is the granted base model plus an adapter: the vault's LM evaluate template
(`allmende.vault.lora_service`) loads its own copy of the base and runs the adapter on the
held-out text, and releases only a DP-noised mean loss (and, asked, an exact-match share). The
model that is attested is the merged folder a `federated lora` run wrote: its id is what
`register_derived` records and what providers serve. So the validator checks, in order:

1. **Before anything is charged**, that its key is an active staked validator (the chain refuses
   any other key's attestation, so the evaluation's ε would be wasted), and that the run's
   merged model *is* the base plus the run's adapter: it merges them itself and compares model
   ids. A folder whose weights are not those of the adapter the vault evaluates would otherwise
   be attested with a metric it never earned.
2. **Before attesting**, that the vault's answer is the report the vault logged: it hashes to
   the result hash the answer names, it is of this adapter, base model and dataset, and the
   chain's access log holds that result hash for the job. An answer changed on its way (a proxy,
   a tampered connection) is refused; its ε is spent, nothing is attested.

The attestation is the same `Data.attest` call as the tabular path's (the model id, the job, the
metric in millionths, the report hash). The report is written next to the run
(`attestation-<job>.json`), so that anyone can hold an attested value against the access log
(`check_attestation`): the chain alone cannot, it never sees the report.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from eth_utils import keccak

from allmende.chain.bindings import ROLE_VALIDATOR, AttestationRecord, Contracts
from allmende.core.manifest import model_id_of
from allmende.vault.errors import VaultError
from allmende.vault.jobs import canonical
from allmende.vault.lora import AdapterModel, LoraSpec
from allmende.vault.lora_service import adapter_hash, adapter_payload
from allmende.vault.model import MICRO, params_from_bytes

ADAPTER = "adapter.npz"
SPEC = "lora.json"
# the attested metric -> the field of the vault's LM evaluate result it is read from
METRICS = {"heldout_loss": "mean_loss", "perplexity": "perplexity", "exact_match": "exact_match"}


class AttestationRefused(VaultError):
    """The validator did not attest: a key that cannot, a run folder that is not what it claims,
    or a vault answer that is not the report the vault logged."""

    code = "attestation_refused"


@dataclass(frozen=True)
class LmAttestation:
    model_id: bytes  # the merged model attested
    job_id: bytes
    metric: str
    value_ppm: int
    report: dict[str, Any]  # the vault's result, as logged (its hash is the report hash)
    report_hash: bytes
    access_tx: str


@dataclass(frozen=True)
class LoraRun:
    spec: LoraSpec
    params: list[np.ndarray]
    model_id: bytes  # the merged model's id (run.json, checked against the folder and the merge)


def load_run(run: Path) -> tuple[LoraSpec, list[np.ndarray], bytes]:
    """The spec, adapter and merged model id a `federated lora` run folder holds (AttestationRefused
    when a part is missing or unreadable)."""
    try:
        spec = LoraSpec.from_json(json.loads((run / SPEC).read_text()))
        params = params_from_bytes((run / ADAPTER).read_bytes())
        model_id = bytes.fromhex(str(json.loads((run / "run.json").read_text())["model_id"]).removeprefix("0x"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AttestationRefused(f"{run} is not a `federated lora` run folder: {str(exc)[:200]}") from None
    return spec, params, model_id


def check_run(run: Path, base_path: Path) -> LoraRun:
    """The run's merged model is the base plus the run's adapter: the folder's id is run.json's, and
    merging the adapter into `base_path` here gives the same id. Raises AttestationRefused."""
    spec, params, model_id = load_run(run)
    base_id = model_id_of(base_path)
    if base_id != spec.base_model:
        raise AttestationRefused(
            f"the run adapts base model 0x{spec.base_model.hex()}; the base given is 0x{base_id.hex()}"
        )
    if not (run / "model").is_dir() or model_id_of(run / "model") != model_id:
        raise AttestationRefused(f"{run / 'model'} is not the model run.json names (0x{model_id.hex()})")
    model = AdapterModel(base_path, spec)
    with tempfile.TemporaryDirectory() as scratch:
        merged = model_id_of(model.save_merged(params, Path(scratch) / "model"))
    if merged != model_id:
        raise AttestationRefused(
            f"the run's model 0x{model_id.hex()} is not its base with its adapter merged (that is 0x{merged.hex()}): "
            "nothing was evaluated or charged"
        )
    return LoraRun(spec, [np.asarray(p, dtype=np.float32) for p in params], model_id)


def check_report(contracts: Contracts, dataset_id: bytes, job_id: bytes, report: object, report_hash: bytes) -> None:
    """`report` hashes to `report_hash` and the dataset's access log holds that hash for `job_id`."""
    if not isinstance(report, dict) or keccak(canonical(report)) != report_hash:
        raise AttestationRefused("the vault's result does not hash to the result hash it names")
    logged = [a for a in contracts.data.accesses(dataset_id) if a.job_id == job_id]
    if not logged:
        raise AttestationRefused(f"the access log of 0x{dataset_id.hex()} holds no job 0x{job_id.hex()}")
    if logged[0].result_hash != report_hash:
        raise AttestationRefused(
            f"the vault logged report 0x{logged[0].result_hash.hex()} for job 0x{job_id.hex()}, not the one "
            f"received (0x{report_hash.hex()}): the answer was changed on its way; nothing attested"
        )


def check_attestation(contracts: Contracts, attestation: AttestationRecord, dataset_id: bytes,
                      report: dict[str, Any]) -> None:  # fmt: skip
    """Anyone's check of an LM attestation against its published report: the report is the one the
    vault logged for the attested job, and the attested value is the report's (AttestationRefused)."""
    check_report(contracts, dataset_id, attestation.job_id, report, attestation.report_hash)
    field = METRICS.get(attestation.metric)
    if field is None or not isinstance(report.get(field), (int, float)):
        raise AttestationRefused(f"the report holds no {attestation.metric}")
    if attestation.value_ppm != round(float(report[field]) * MICRO):
        raise AttestationRefused(
            f"the attested {attestation.metric} {attestation.value_ppm / MICRO:g} is not the report's {report[field]:g}"
        )


def attest_lora(
    contracts: Contracts,
    key: bytes,
    vault_url: str,
    dataset_id: bytes,
    grant_id: int,
    run: Path,
    base_path: Path,
    epsilon: float,
    metric: str = "heldout_loss",
) -> LmAttestation:
    """Evaluate a run's adapter inside the vault holding the held-out text and attest the metric
    on chain for the run's merged model, after the checks in this module's docstring."""
    from allmende.vault.auth import post_job

    if metric not in METRICS:
        raise AttestationRefused(f"the metric is one of {', '.join(METRICS)}")
    me = contracts.client.address
    if contracts.registry.role_of(me) != ROLE_VALIDATOR or not contracts.registry.is_active(me):
        raise AttestationRefused(
            f"{me} is not an active validator in Registry, so the chain would refuse its attestation; nothing was "
            "evaluated or charged. Attest with a staked validator's key (`allmende validator` registers one)"
        )
    lora = check_run(run, base_path)
    job_id = keccak(lora.model_id + dataset_id + int(time.time() * 1e6).to_bytes(8, "big"))
    payload = {
        "template": "evaluate", "dataset_id": "0x" + dataset_id.hex(), "grant_id": grant_id,
        "job_id": "0x" + job_id.hex(), "lora": lora.spec.to_json(), "adapter": adapter_payload(lora.params),
        "epsilon": epsilon, **({"exact_match": True} if metric == "exact_match" else {}),
    }  # fmt: skip
    try:
        reply = post_job(vault_url, key, payload)  # signed for this vault, dataset and grant, once
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise AttestationRefused(f"the vault at {vault_url} is unreachable ({exc.__class__.__name__})") from None
    if reply.status_code != 200:
        raise AttestationRefused(f"the vault refused ({reply.status_code}): {reply.text[:300]}")
    try:
        answer = reply.json()
        report, report_hash = answer["result"], bytes.fromhex(str(answer["result_hash"]).removeprefix("0x"))
    except (ValueError, KeyError, TypeError):
        raise AttestationRefused("the vault's answer is not an evaluation result") from None
    check_report(contracts, dataset_id, job_id, report, report_hash)
    expected = {
        "template": "evaluate",
        "dataset_id": "0x" + dataset_id.hex(),
        "model_id": "0x" + lora.spec.base_model.hex(),
        "adapter": "0x" + adapter_hash(lora.params).hex(),
    }
    if any(report.get(k) != v for k, v in expected.items()):
        raise AttestationRefused("the vault's report is of another template, dataset, base model or adapter")
    value = report.get(METRICS[metric])
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 2**64 / MICRO:
        raise AttestationRefused(f"the vault's report holds no usable {metric}")
    value_ppm = round(float(value) * MICRO)
    contracts.data.attest(lora.model_id, job_id, metric, value_ppm, report_hash)
    record = {
        "model_id": "0x" + lora.model_id.hex(),
        "dataset_id": "0x" + dataset_id.hex(),
        "job_id": "0x" + job_id.hex(),
        "metric": metric,
        "value_ppm": value_ppm,
        "report_hash": "0x" + report_hash.hex(),
        "report": report,
    }
    (run / f"attestation-{job_id.hex()[:16]}.json").write_text(json.dumps(record, indent=2) + "\n")
    return LmAttestation(lora.model_id, job_id, metric, value_ppm, report, report_hash, str(answer.get("access_tx")))

"""The coordinator of a federated LoRA run: rounds across a fixed set of ≥ 3 vaults, under
Flower's SecAgg+ with a reconstruction threshold below the number of vaults, so that a round
completes while up to a third of the vaults drop out (`allmende.vault.lora_service` has the
vault's side and the guarantee).

Each round: every vault is asked first (`POST /v1/rounds/check` with the run's members, the
LoRA spec and the adapter); the round starts if at least the threshold agree. Then Flower's
`SecAggPlusWorkflow` (one share per vault, threshold `threshold_for(n)`) with `FedAvg` behind
`DifferentialPrivacyClientSideFixedClipping` (each vault clips its update) runs over `HttpGrid`
with dropouts tolerated: a vault that fails a stage gets no further message of the round. Each
vault logs its ε on chain as its masked update leaves; the aggregate is the weighted mean of
exactly those updates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp.grid import Grid

from allmende.core.vault_requests import ROUND_CHECK
from allmende.vault.flower import (
    HttpGrid,
    Participant,
    RoundRefused,
    VaultRefused,
    _identity,
    _post,
    _refusal,
    _set_identity,
    abort_round,
    addresses_of,
)
from allmende.vault.lora import LoraSpec
from allmende.vault.lora_service import MIN_VAULTS, adapter_payload, threshold_for

QUANTIZATION_RANGE = 2**24  # SecAgg+'s levels over [-clipping_range, clipping_range] (n·levels < 2³²)
CLIPPING_RANGE = 4.0  # the largest adapter value (times its vault's weight) SecAgg+ carries exactly


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ with dropouts at the setup stage tolerated. Flower keeps a node that did not
    answer the setup among the sampled ones, so the unmask names it dropped and asks the others
    for shares of its key, which nobody holds (it never shared keys): every vault refuses and the
    round fails. Such a node took no part in any mask; it is forgotten after the setup."""

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = bool(super().setup_stage(grid, context, state))
        state.sampled_node_ids = set(state.active_node_ids)
        for neighbours in state.nid_to_neighbours.values():
            neighbours &= state.active_node_ids
        return ok


@dataclass(frozen=True)
class LoraRunConfig:
    rounds: int = 3
    steps: int = 4  # local DP-SGD steps per round
    lr: float = 2.0
    noise: float = 1.0  # vault-side noise multiplier (the vault may raise it)
    clipping_norm: float = 1.0  # Flower: each vault clips its adapter update to this L2 norm


@dataclass(frozen=True)
class LoraRoundDone:
    round: int
    params: list[np.ndarray]
    seconds: float
    aggregated: tuple[str, ...]  # the vaults (URLs) whose masked updates are in the aggregate
    dropped: dict[str, str]  # vault URL -> why it dropped out of the round (or refused its check)
    charged_micro: dict[str, int]  # vault URL -> the ε it logged on chain for the round (millionths)


@dataclass
class LoraResult:
    params: list[np.ndarray]
    run_id: int
    rounds: list[LoraRoundDone] = field(default_factory=list)


def _rows(participants: list[Participant]) -> int:
    """The most rows any member's dataset holds (public: `/v1/info`), SecAgg+'s largest weight."""
    most = 1
    for p in participants:
        try:
            info = httpx.get(p.url.rstrip("/") + "/v1/info", timeout=30).json()
            rows = [int(d["rows"]) for d in info["datasets"] if d["dataset_id"] == "0x" + p.dataset_id.hex()]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            continue
        most = max([most, *rows])
    return most


def check_lora_round(
    participants: list[Participant],
    key: bytes,
    run_id: int,
    spec: LoraSpec,
    params: list[np.ndarray],
    config: LoraRunConfig,
    round_number: int,
    addresses: dict[str, Any],
) -> dict[str, str]:
    """Ask every vault whether it would run the round; returns those that would not (URL -> why).
    Raises RoundRefused if fewer than the threshold would."""
    members = [["0x" + p.dataset_id.hex(), p.grant_id] for p in participants]
    adapter = adapter_payload(params)

    def ask(p: Participant) -> str | None:
        payload = {
            "dataset_id": "0x" + p.dataset_id.hex(), "grant_id": p.grant_id, "run_id": run_id,
            "lora": spec.to_json(), "adapter": adapter, "members": members, "steps": config.steps,
            "noise": config.noise, "clipping_norm": config.clipping_norm,
        }  # fmt: skip
        try:
            with httpx.Client(timeout=120.0) as http:
                r = _post(http, key, addresses[p.url], p, "/v1/rounds/check", ROUND_CHECK, payload, run_id,
                          round_number)  # fmt: skip
        except VaultRefused as exc:
            return str(exc)
        return None if r.status_code == 200 else _refusal(p, r)

    with ThreadPoolExecutor(len(participants)) as pool:
        answers = list(pool.map(ask, participants))
    refused = {p.url: a for p, a in zip(participants, answers, strict=True) if a is not None}
    if len(participants) - len(refused) < threshold_for(len(participants)):
        raise RoundRefused(
            f"round {round_number} did not start: " + "; ".join(refused.values()) + ". No vault trained or was charged",
            round_number,
            round_number - 1,
        )
    return refused


def run_federated_lora(
    participants: list[Participant],
    key: bytes,
    spec: LoraSpec,
    initial: list[np.ndarray],
    config: LoraRunConfig,
    *,
    run_id: int | None = None,
    first_round: int = 1,
    on_round: Callable[[LoraRoundDone], None] | None = None,
    on_stage: Callable[[int, str], None] | None = None,
) -> LoraResult:
    """Rounds `first_round`..`config.rounds` of federated LoRA; returns the aggregated adapter.
    A round completes while at least `threshold_for(n)` vaults take part to its end."""
    n = len(participants)
    if n < MIN_VAULTS:
        raise VaultRefused(f"federated LoRA needs at least {MIN_VAULTS} vaults (a majority threshold below n)")
    run_id = int.from_bytes(uuid4().bytes[:6], "big") if run_id is None else run_id
    addresses = addresses_of(participants)
    max_weight = float(_rows(participants))
    params = [np.asarray(p, dtype=np.float32) for p in initial]
    result = LoraResult(params, run_id)
    for round_number in range(first_round, config.rounds + 1):
        refused = check_lora_round(participants, key, run_id, spec, params, config, round_number, addresses)
        started = time.perf_counter()
        grid = HttpGrid(participants, key, run_id, round_number=round_number, addresses=addresses)
        grid.dropouts = True
        grid.on_stage = on_stage
        grid.dropped.update(refused)
        grid.left_out.update(refused)  # not sampled: only the vaults that said yes take part
        try:
            params, charged = _one_lora_round(grid, n, spec, params, config, max_weight, run_id, round_number)
        except BaseException as exc:
            abort_round(participants, key, run_id, round_number, addresses)
            if isinstance(exc, VaultRefused):
                raise RoundRefused(
                    f"round {round_number} failed: {exc}. Vaults whose masked update had left were charged: "
                    f"{', '.join(sorted(grid.sent_update)) or 'none'}",
                    round_number,
                    round_number - 1,
                ) from None
            raise
        finally:
            grid.http.close()
        done = LoraRoundDone(
            round_number,
            params,
            time.perf_counter() - started,
            tuple(sorted(grid.sent_update)),
            dict(grid.dropped),
            charged,
        )
        result.params = params
        result.rounds.append(done)
        if on_round is not None:
            on_round(done)
    return result


def _one_lora_round(
    grid: HttpGrid,
    n: int,
    spec: LoraSpec,
    params: list[np.ndarray],
    config: LoraRunConfig,
    max_weight: float,
    run_id: int,
    round_number: int,
) -> tuple[list[np.ndarray], dict[str, int]]:
    final: dict[str, Any] = {}

    class Recording(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            final["charged"] = {
                grid.nodes[int(proxy.node_id)].url: int(res.metrics.get("epsilon_micro", 0)) for proxy, res in results
            }
            return super().aggregate_fit(server_round, results, [])

    class Clipped(DifferentialPrivacyClientSideFixedClipping):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            final["parameters"] = out[0]
            return out

    def fit_config(server_round: int) -> dict[str, Any]:
        return {"round": round_number, "base-model": "0x" + spec.base_model.hex(), "lora": json.dumps(spec.to_json()),
                "steps": config.steps, "lr": config.lr, "noise": config.noise}  # fmt: skip

    threshold = threshold_for(n)
    live = len(grid.get_node_ids())  # the vaults whose check said yes (at least the threshold)
    strategy = Clipped(
        Recording(
            fraction_fit=1.0,
            min_fit_clients=live,
            min_available_clients=live,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            initial_parameters=ndarrays_to_parameters(params),
            on_fit_config_fn=fit_config,
            accept_failures=True,
        ),
        noise_multiplier=0.0,
        clipping_norm=config.clipping_norm,
        num_sampled_clients=live,
    )
    workflow = _SecAggPlus(
        num_shares=n,  # one share per vault of the run, as the vaults check, however many take part
        reconstruction_threshold=threshold,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        max_weight=max_weight,
    )
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    with _identity:
        _set_identity(run_id, SUPERLINK_NODE_ID)
    app(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    aggregated: Parameters | None = final.get("parameters")
    if aggregated is None:
        dropped = "; ".join(f"{u}: {w}" for u, w in grid.dropped.items()) or "none"
        raise VaultRefused(
            f"round {round_number} did not complete: fewer than {threshold} of {n} vaults took part to its end "
            f"(dropped: {dropped})"
        )
    return [np.asarray(a, dtype=np.float32) for a in parameters_to_ndarrays(aggregated)], final.get("charged", {})

"""Federated training across vaults with Flower: its SecAgg+ secure aggregation and its
differential-privacy components, over HTTP between the coordinator and the vaults.

Coordinator: Flower's legacy ServerApp workflow (`DefaultWorkflow`, with
`SecAggPlusWorkflow` as the fit workflow for secure aggregation), `FedAvg` wrapped in
`DifferentialPrivacyClientSideFixedClipping` (clients clip their update to
`clipping_norm`, the server adds Gaussian noise to the aggregate). Vault: a Flower
`ClientApp` with `secaggplus_mod` and `fixedclipping_mod` whose local training is
the vault's DP-GD template, checked against the grant and logged on chain each round.

Transport: Flower's own messages, serialised as Flower's protobuf, one HTTP POST per
message to the vault's `/v1/flower` (signed by the coordinator's key), in parallel
across vaults. (Flower's own deployment runtime, SuperLink + SuperNodes, polls every
3 s, which makes a SecAgg+ round take about a minute; this transport carries the same
messages without it.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp.grid import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from allmende.vault.auth import HEADER, sign_body
from allmende.vault.errors import VaultError
from allmende.vault.model import ModelSpec

log = logging.getLogger("allmende.vault.flower")
logging.getLogger("flwr").setLevel(logging.WARNING)
_identity = threading.Lock()  # Flower reads the current run from a process-wide TaskIdentity


def _set_identity(run_id: int, node_id: int) -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, node_id


# ------------------------------------------------------------------ vault side


class VaultFlower:
    """Runs Flower messages for one vault; keeps one Flower Context per run (SecAgg+ state)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._contexts: dict[int, Context] = {}

    def handle(self, body: bytes, signer: str, grant_id: int, dataset_id: bytes) -> bytes:
        proto = ProtoMessage()
        proto.ParseFromString(body)
        message = message_from_proto(proto)
        run_id = int(message.metadata.run_id)
        node_id = int(message.metadata.dst_node_id)
        service = self.service

        class VaultClient(NumPyClient):
            def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:  # type: ignore[type-arg]
                spec = ModelSpec.from_json(
                    {"inputs": config["inputs"], "classes": config["classes"], "hidden": config.get("hidden", 0)}
                )
                # the vault checks the parameters themselves against the grant, not the
                # coordinator's word ("base-model" in the config is informational only)
                out, rows, charge = service.train_round(
                    grant_id,
                    signer,
                    dataset_id,
                    run_id,
                    spec,
                    parameters,
                    int(config["steps"]),
                    float(config["lr"]),
                    float(config["noise"]),
                    float(config[KEY_CLIPPING_NORM]),
                )
                return out, rows, {"epsilon_micro": charge}

        # SecAgg+ stages carry their own config record; a plain FedAvg round has none
        secure = "secaggplus_configs" in message.content.config_records
        mods: list[Any] = [secaggplus_mod, fixedclipping_mod] if secure else [fixedclipping_mod]
        app = ClientApp(client_fn=lambda _ctx: VaultClient().to_client(), mods=mods)
        with _identity:
            _set_identity(run_id, node_id)
            context = self._contexts.setdefault(
                run_id, Context(run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
            )
            reply = app(message, context)
            reply.metadata.__dict__["_src_node_id"] = node_id
            return bytes(message_to_proto(reply).SerializeToString())

    def forget(self, run_id: int) -> None:
        self._contexts.pop(run_id, None)


# ------------------------------------------------------------ coordinator side


class VaultRefused(VaultError):
    """A vault refused a round (grant, budget, bad input); the run stops."""

    code = "vault_refused"


@dataclass(frozen=True)
class Participant:
    url: str  # the vault's base URL
    dataset_id: bytes
    grant_id: int


class HttpGrid(Grid):
    """Flower Grid whose nodes are vaults reached over HTTP."""

    def __init__(self, participants: list[Participant], key: bytes, run_id: int, timeout: float = 300.0) -> None:
        self.nodes = {1000 + i: p for i, p in enumerate(participants)}
        self.key = key
        self._run = Run.create_empty(run_id=run_id)
        self.http = httpx.Client(timeout=timeout)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages = 0
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver every message (in parallel, one POST each) and keep the replies for `pull_messages`."""
        batch = []
        for m in messages:
            message_id = str(uuid4())
            m.metadata.__dict__["_message_id"] = message_id
            m.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            batch.append((message_id, bytes(message_to_proto(m).SerializeToString()), int(m.metadata.dst_node_id)))
        with ThreadPoolExecutor(max(1, len(batch))) as pool:
            replies = list(pool.map(lambda item: self._deliver(item[1], item[2]), batch))
        for (message_id, payload, _), raw in zip(batch, replies, strict=True):
            self.bytes_sent += len(payload)
            self.bytes_received += len(raw)
            self.messages += 2
            proto = ProtoMessage()
            proto.ParseFromString(raw)
            self._replies[message_id] = message_from_proto(proto)
        return [message_id for message_id, _, _ in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to these messages (each handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def _deliver(self, payload: bytes, node: int) -> bytes:
        p = self.nodes[node]
        headers = {
            HEADER: sign_body(self.key, payload),
            "content-type": "application/x-protobuf",
            "x-allmende-grant": str(p.grant_id),
            "x-allmende-dataset": "0x" + p.dataset_id.hex(),
        }
        r = self.http.post(p.url.rstrip("/") + "/v1/flower", content=payload, headers=headers)
        if r.status_code != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise VaultRefused(f"vault {p.url} refused the round ({r.status_code}): {message}")
        return r.content

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@dataclass
class FederatedResult:
    params: list[np.ndarray]
    round_seconds: list[float]
    bytes_sent: int
    bytes_received: int
    messages: int
    epsilon_micro: dict[int, int] = field(default_factory=dict)  # per round: the most any vault was charged


@dataclass(frozen=True)
class FederatedConfig:
    rounds: int = 5
    steps: int = 30  # local DP-GD steps per round
    lr: float = 2.0
    noise: float = 1.0  # vault-side noise multiplier (the vault may raise it)
    clipping_norm: float = 5.0  # Flower: clients clip their update to this L2 norm
    server_noise: float = 0.0  # Flower: noise multiplier of the aggregate (central DP)
    secagg: bool = True


def run_federated(
    participants: list[Participant],
    key: bytes,
    spec: ModelSpec,
    initial: list[np.ndarray],
    base_model: bytes,
    config: FederatedConfig,
) -> FederatedResult:
    """Run `config.rounds` rounds across the vaults; returns the aggregated model."""
    if len(participants) < 2:
        raise ValueError("federated training needs at least 2 vaults")
    run_id = int.from_bytes(uuid4().bytes[:6], "big")
    n = len(participants)
    marks: list[float] = []
    final: dict[str, Any] = {}
    charges: dict[int, int] = {}

    class Recording(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if failures:
                raise VaultRefused(f"round {server_round}: {len(failures)} vault(s) failed: {failures[0]}")
            out = super().aggregate_fit(server_round, results, failures)
            marks.append(time.perf_counter())
            charges[server_round] = int(out[1].get("epsilon_micro", 0))  # fit_metrics_aggregation_fn: the most
            return out

    def fit_config(server_round: int) -> dict[str, Any]:
        return {
            "round": server_round,
            "base-model": "0x" + base_model.hex(),
            "inputs": spec.inputs,
            "classes": spec.classes,
            "hidden": spec.hidden,
            "steps": config.steps,
            "lr": config.lr,
            "noise": config.noise,
        }

    class Noised(DifferentialPrivacyClientSideFixedClipping):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            final["parameters"] = out[0]
            return out

    strategy = Noised(
        Recording(
            fraction_fit=1.0,
            min_fit_clients=n,
            min_available_clients=n,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=fit_config,
            fit_metrics_aggregation_fn=lambda metrics: {
                "epsilon_micro": max((int(m.get("epsilon_micro", 0)) for _, m in metrics), default=0)
            },
        ),
        noise_multiplier=config.server_noise,
        clipping_norm=config.clipping_norm,
        num_sampled_clients=n,
    )
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=config.rounds), strategy=strategy)
        fit = (
            SecAggPlusWorkflow(
                num_shares=n if n % 2 else n - 1 if n > 3 else n,
                reconstruction_threshold=max(2, n - 1),
                clipping_range=16.0,
                quantization_range=2**22,
                max_weight=100_000.0,
            )
            if config.secagg
            else None
        )
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    grid = HttpGrid(participants, key, run_id)
    with _identity:
        _set_identity(run_id, SUPERLINK_NODE_ID)
    started = time.perf_counter()
    try:
        app(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    finally:
        grid.http.close()
    aggregated: Parameters | None = final.get("parameters")
    if aggregated is None or len(marks) != config.rounds:
        raise VaultRefused("the federated run did not complete")
    params = parameters_to_ndarrays(aggregated)
    rounds, last = [], started
    for mark in marks:
        rounds.append(mark - last)
        last = mark
    return FederatedResult(params, rounds, grid.bytes_sent, grid.bytes_received, grid.messages, charges)

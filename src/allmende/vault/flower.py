"""Federated training across vaults with Flower: its SecAgg+ secure aggregation and its
differential-privacy components, over HTTP between the coordinator and the vaults.

Coordinator: Flower's legacy ServerApp workflow (`DefaultWorkflow`, with
`SecAggPlusWorkflow` as the fit workflow for secure aggregation), `FedAvg` wrapped in
`DifferentialPrivacyClientSideFixedClipping` (clients clip their update to
`clipping_norm`, the server adds Gaussian noise to the aggregate). Vault: a Flower
`ClientApp` with `secaggplus_mod` and `fixedclipping_mod` whose local training is
the vault's DP-GD template, checked against the grant and logged on chain each round.

Rounds are all or nothing (see `run_federated`): every vault is asked before any trains,
SecAgg+ runs with every vault's shares needed to unmask, every vault is asked to prepare
(`HttpGrid.prepare`: would it log now?) once all trained, and a vault logs its charge on
chain only when the unmask stage comes after that; a failed round is aborted at every vault
and costs none of them ε. One Flower round per call, so each
completed round can be saved and a run resumed.

Transport: Flower's own messages, serialised as Flower's protobuf, one HTTP POST per
message to the vault's `/v1/flower`, in parallel across vaults. Each is a signed request
(`allmende.vault.auth`) for that vault, that stage, the grant, the dataset, the run and the
round, with a fresh nonce: a vault runs each stage of a round once, in order, for the grantee
that set the round up, and an abort is a signed request of its own. (Flower's own
deployment runtime, SuperLink + SuperNodes, polls every 3 s, which makes a SecAgg+ round
take about a minute; this transport carries the same messages without it.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx
import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp.grid import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from allmende.core.vault_requests import (
    ROUND_ABORT,
    ROUND_CHECK,
    ROUND_FIT,
    ROUND_MASKED_VECTORS,
    ROUND_PREPARE,
    ROUND_SETUP,
    ROUND_SHARE_KEYS,
    ROUND_UNMASK,
)
from allmende.vault.auth import Admitted, VaultAddress, signed_headers
from allmende.vault.errors import AccessDenied, BadJob, VaultError, VaultRequestRefused
from allmende.vault.lora_service import key_digest, sign_keys, spec_from_config
from allmende.vault.model import ModelSpec
from allmende.vault.rounds import RoundBook, RoundKey, RoundState

log = logging.getLogger("allmende.vault.flower")
logging.getLogger("flwr").setLevel(logging.WARNING)
_identity = threading.Lock()  # Flower reads the current run from a process-wide TaskIdentity


def _set_identity(run_id: int, node_id: int) -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, node_id


# ------------------------------------------------------------------ vault side


# what a round's fit config may hold: the coordinator's fields and Flower's clipping norm
FIT_CONFIG = frozenset(
    {"round", "base-model", "inputs", "classes", "hidden", "standardize", "steps", "lr", "noise", "lora",
     KEY_CLIPPING_NORM}
)  # fmt: skip
KEY_SIGNATURE = "x-allmende-secagg-signature"  # a vault's signature of its SecAgg+ keys (setup reply)
KEY_SIGNATURES = "x-allmende-secagg-keys"  # every vault's, by node id, sent with the share-keys stage
_STAGES = {
    Stage.SETUP: ROUND_SETUP,
    Stage.SHARE_KEYS: ROUND_SHARE_KEYS,
    Stage.COLLECT_MASKED_VECTORS: ROUND_MASKED_VECTORS,
    Stage.UNMASK: ROUND_UNMASK,
}


def stage_of(message: Message) -> str:
    """The operation a Flower message asks for: a SecAgg+ stage, or a plain FedAvg fit."""
    if message.metadata.message_type != MessageType.TRAIN:
        raise BadJob(f"this vault runs only train messages, not {message.metadata.message_type[:40]!r}")
    records = message.content.config_records
    if "secaggplus_configs" not in records:
        return ROUND_FIT
    stage = _STAGES.get(records["secaggplus_configs"].get("stage"))  # type: ignore[arg-type]
    if stage is None:
        raise BadJob("not a SecAgg+ stage this vault knows")
    return stage


class VaultFlower:
    """Runs Flower messages for one vault. Each round's stages are checked against the signed
    request (the stage, the run, the round) and the round's own history (`RoundBook`), and its
    SecAgg+ state is the round's, keyed by (grantee, grant, run, round)."""

    def __init__(self, service: Any, book: RoundBook | None = None) -> None:
        self.service = service
        self.book = book or RoundBook()

    def handle(
        self, body: bytes, admitted: Admitted, key_signatures: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """Run one stage; returns the reply and its headers (a setup reply carries this vault's
        signature of its SecAgg+ keys). `key_signatures` is the share-keys stage's header."""
        request, signer = admitted.request, admitted.signer
        grant_id, dataset_id, round_number = request.grant_id, request.dataset_id, request.round
        proto = ProtoMessage()
        proto.ParseFromString(body)
        message = message_from_proto(proto)
        stage = stage_of(message)
        if stage != request.operation:
            raise VaultRequestRefused(f"the message is a {stage} stage; the request was signed for {request.operation}")
        run_id = int(message.metadata.run_id)
        if run_id != request.run_id:
            raise VaultRequestRefused(
                f"the message is for run {run_id}; the request was signed for run {request.run_id}"
            )
        node_id = int(message.metadata.dst_node_id)
        service = self.service
        secure = stage != ROUND_FIT
        lora = service.lora
        members = lora.members_of(signer, grant_id, run_id)
        if members is not None and not secure:
            raise AccessDenied(
                "a LoRA run's updates leave only masked (SecAgg+); this vault sends no update in the clear"
            )

        class VaultClient(NumPyClient):
            def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:  # type: ignore[type-arg]
                unknown = sorted(set(config) - FIT_CONFIG)
                if unknown:  # an ignored key is one a coordinator thinks was honoured
                    shown = ", ".join(repr(str(k)[:40]) for k in unknown[:5])
                    raise BadJob(f"a round's config takes no {shown} (it takes {', '.join(sorted(FIT_CONFIG))})")
                if "lora" in config or members is not None:
                    if "lora" not in config or members is None or not secure:
                        raise AccessDenied("a LoRA round runs under SecAgg+ after its check, and only as one")
                    out, rows, charge = lora.train(
                        grant_id, signer, dataset_id, run_id, spec_from_config(config["lora"]),
                        [np.asarray(p, dtype=np.float32) for p in parameters], int(config["steps"]),
                        float(config["lr"]), float(config["noise"]), float(config[KEY_CLIPPING_NORM]),
                        request.round,
                    )  # fmt: skip
                    return out, rows, {"epsilon_micro": charge}
                fields = {"inputs": config["inputs"], "classes": config["classes"], "hidden": config.get("hidden", 0)}
                if "standardize" in config:  # the model standardises its inputs: {"shift": [..], "scale": [..]}
                    standardize = json.loads(str(config["standardize"]))
                    if not isinstance(standardize, dict) or set(standardize) != {"shift", "scale"}:
                        raise BadJob('\'standardize\' must be {"shift": [...], "scale": [...]}')
                    fields.update(standardize)
                spec = ModelSpec.from_json(fields)
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
                    reserve=secure,
                    round_number=round_number,
                )
                return out, rows, {"epsilon_micro": charge}

        if stage == ROUND_SETUP:
            # the charge waits for the unmask stage only if nothing can be unmasked without this
            # vault's own share: a coordinator (with fake vaults holding the other shares) that asked
            # for fewer than all shares could unmask this vault's update without ever asking it
            setup = message.content.config_records["secaggplus_configs"]
            shares, threshold = setup.get(Key.SHARE_NUMBER, 0), setup.get(Key.THRESHOLD, 0)
            if members is not None:  # a LoRA run: its vaults fixed on chain, a majority threshold
                lora.check_setup(members, shares, threshold)
            elif not isinstance(shares, int) or not isinstance(threshold, int) or threshold < 2 or threshold != shares:
                raise AccessDenied(
                    f"this vault takes part in SecAgg+ only when every share is needed to unmask "
                    f"(threshold = shares); this run asks {threshold!r} of {shares!r}"
                )
        if stage == ROUND_SHARE_KEYS:
            records = message.content.config_records["secaggplus_configs"]
            keys = {int(k): (bytes(v[0]), bytes(v[1])) for k, v in records.items() if k != Key.STAGE}  # type: ignore[index,arg-type]
            try:
                signatures = json.loads(key_signatures) if key_signatures else None
            except ValueError:
                signatures = None
            lora.check_signed_keys(admitted, keys, signatures, node_id)
        if stage == ROUND_UNMASK:
            records = message.content.config_records["secaggplus_configs"]
            lora.check_unmask(records.get(Key.ACTIVE_NODE_ID_LIST), records.get(Key.DEAD_NODE_ID_LIST), node_id)
        mods: list[Any] = [secaggplus_mod, fixedclipping_mod] if secure else [fixedclipping_mod]
        app = ClientApp(client_fn=lambda _ctx: VaultClient().to_client(), mods=mods)

        def run(state: RoundState) -> bytes:
            if state.context is None:
                state.context = Context(run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(),
                                        run_config={})  # fmt: skip
            with _identity:
                _set_identity(run_id, node_id)
                reply = app(message, state.context)
            if reply.has_error():
                raise BadJob(f"the {stage} stage failed: {str(reply.error.reason)[:200]}")
            reply.metadata.__dict__["_src_node_id"] = node_id
            if stage == ROUND_SETUP:  # sign this vault's keys of this round with its registered key
                out = reply.content.config_records["secaggplus_configs"]
                pk1, pk2 = bytes(out[Key.PUBLIC_KEY_1]), bytes(out[Key.PUBLIC_KEY_2])  # type: ignore[arg-type]
                client = service.contracts.client
                digest = key_digest(client.chain_id, service.data.address, run_id, round_number, node_id, pk1, pk2)
                headers[KEY_SIGNATURE] = sign_keys(client.account.key, digest)
            return bytes(message_to_proto(reply).SerializeToString())

        headers: dict[str, str] = {}
        return self.run_stage(admitted, run, charged_when_sent=members is not None), headers

    def run_stage(
        self, admitted: Admitted, work: Callable[[RoundState], bytes], charged_when_sent: bool = False
    ) -> bytes:
        """Run the signed stage of its round with `work` (Flower's client app), or raise
        StageRefused: once, in order, after the round's own setup here. An unmask stage logs the
        round's reserved charge on chain after its work passed Flower's checks and before its
        reply (the shares) leaves; a stage that fails ends the round."""
        request, signer = admitted.request, admitted.signer
        key = RoundKey(signer.lower(), request.grant_id, request.run_id, request.round)
        state = self.book.begin(key, request.operation)
        try:
            raw = work(state)
            if request.operation == ROUND_UNMASK and not charged_when_sent:  # a LoRA round logged as it trained
                # every vault trained (the coordinator unmasks only then, and needs every vault's
                # shares to): log this vault's reserved round on chain before its shares leave
                self.service.commit_round(request.grant_id, request.run_id, request.round, signer)
        except BaseException:
            self.book.fail(key)
            raise
        self.book.complete(key)
        return raw

    def abort(self, admitted: Admitted) -> dict[str, Any]:
        """The grantee's signed abort of one round: no stage of it runs here afterwards, and its
        reservation (if it trained and did not unmask) is undone. Answers how many reservations
        were undone, and whether the round had finished here (its charge logged on chain)."""
        request, signer = admitted.request, admitted.signer
        logged = self.book.abort(RoundKey(signer.lower(), request.grant_id, request.run_id, request.round))
        undone = int(self.service.abort_round(request.grant_id, request.run_id, request.round, signer))
        return {"undone": undone, "logged": logged}


# ------------------------------------------------------------ coordinator side


class VaultRefused(VaultError):
    """A vault refused a round (grant, budget, bad input) or could not be reached; the run stops."""

    code = "vault_refused"


class RoundRefused(VaultRefused):
    """Round `round` did not run or did not finish; the `completed` rounds before it stand."""

    code = "round_refused"

    def __init__(self, message: str, round: int, completed: int) -> None:
        super().__init__(message)
        self.round = round
        self.completed = completed


@dataclass(frozen=True)
class Participant:
    url: str  # the vault's base URL
    dataset_id: bytes
    grant_id: int


def addresses_of(participants: list[Participant]) -> dict[str, VaultAddress]:
    """Each vault's address and signing domain (its `/v1/info`), by URL."""
    out = {}
    for p in participants:
        try:
            out[p.url] = VaultAddress.of(p.url)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise VaultRefused(f"vault {p.url} is unreachable or not a vault ({exc.__class__.__name__})") from None
    return out


def _post(
    http: httpx.Client,
    key: bytes,
    to: VaultAddress,
    p: Participant,
    path: str,
    operation: str,
    payload: dict[str, Any],
    run_id: int,
    round_number: int,
) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        **signed_headers(key, to, operation, body, p.dataset_id, p.grant_id, run_id, round_number),
    }
    try:
        return http.post(p.url.rstrip("/") + path, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise VaultRefused(f"vault {p.url} is unreachable ({exc.__class__.__name__}: {exc})") from None


def _refusal(p: Participant, r: httpx.Response) -> str:
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = r.text[:200]
    return f"vault {p.url} (grant {p.grant_id}) refused ({r.status_code}): {message}"


class HttpGrid(Grid):
    """Flower Grid whose nodes are vaults reached over HTTP."""

    def __init__(
        self,
        participants: list[Participant],
        key: bytes,
        run_id: int,
        timeout: float = 300.0,
        round_number: int = 1,
        addresses: dict[str, VaultAddress] | None = None,
    ) -> None:
        self.nodes = {1000 + i: p for i, p in enumerate(participants)}
        self.key = key
        self.run_id = run_id
        self.round_number = round_number
        self.addresses = addresses if addresses is not None else addresses_of(participants)
        self._run = Run.create_empty(run_id=run_id)
        self.http = httpx.Client(timeout=timeout)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages = 0
        self._replies: dict[str, Message] = {}
        self.on_stage: Callable[[int, str], None] | None = None  # called before each stage is sent (tests)
        # a LoRA round: a vault that fails a stage drops out (SecAgg+ goes on while `threshold` remain),
        # no prepare phase (each vault logged its charge as its masked update left)
        self.dropouts = False
        self.dropped: dict[str, str] = {}  # vault URL -> why it dropped out
        # vaults left out of the round from its start (a LoRA round's check refused them): Flower
        # never samples them. SecAgg+ cannot drop a node before share keys: a sampled node that
        # fails the setup is still named dead in the unmask, and nobody holds shares of it.
        self.left_out: set[str] = set()
        self.signatures: dict[int, str] = {}  # node -> its vault's signature of its SecAgg+ keys
        self.sent_update: set[str] = set()  # vaults whose masked update reached the coordinator

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
        return [node for node, p in self.nodes.items() if p.url not in self.left_out]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver every message (in parallel, one POST each) and keep the replies for `pull_messages`."""
        batch = []
        for m in messages:
            message_id = str(uuid4())
            m.metadata.__dict__["_message_id"] = message_id
            m.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            payload = bytes(message_to_proto(m).SerializeToString())
            batch.append((message_id, payload, int(m.metadata.dst_node_id), stage_of(m)))
        stages = {stage for _, _, _, stage in batch}
        for stage in sorted(stages):
            if self.on_stage is not None:
                self.on_stage(self.round_number, stage)
        if ROUND_UNMASK in stages and not self.dropouts:
            self.prepare()  # no vault logs (unmasks) unless every vault would
        with ThreadPoolExecutor(max(1, len(batch))) as pool:
            replies = list(pool.map(lambda item: self._deliver(item[1], item[2], item[3]), batch))
        for (message_id, payload, _, _), raw in zip(batch, replies, strict=True):
            if raw is None:  # dropped out: no reply, and SecAgg+ counts it dead
                continue
            self.bytes_sent += len(payload)
            self.bytes_received += len(raw)
            self.messages += 2
            proto = ProtoMessage()
            proto.ParseFromString(raw)
            self._replies[message_id] = message_from_proto(proto)
        return [message_id for message_id, _, _, _ in batch]

    def prepare(self) -> None:
        """The first phase of a secure round's log: every vault, once all trained, is asked whether
        it would log its reserved round now (its grant not revoked or expired at the chain's next
        block, the ε within its budget). Any refusal stops the round before any vault logs."""

        def ask(p: Participant) -> str | None:
            payload = {"dataset_id": "0x" + p.dataset_id.hex(), "grant_id": p.grant_id, "run_id": self.run_id,
                       "round": self.round_number}  # fmt: skip
            try:
                r = _post(self.http, self.key, self.addresses[p.url], p, "/v1/rounds/prepare", ROUND_PREPARE,
                          payload, self.run_id, self.round_number)  # fmt: skip
            except VaultRefused as exc:
                return str(exc)
            self.messages += 2
            self.bytes_sent += len(r.request.content)
            self.bytes_received += len(r.content)
            return None if r.status_code == 200 else _refusal(p, r)

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            refusals = [said for said in pool.map(ask, self.nodes.values()) if said is not None]
        if refusals:
            raise VaultRefused("before any vault logged it: " + "; ".join(refusals))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to these messages (each handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def _deliver(self, payload: bytes, node: int, stage: str) -> bytes | None:
        """One stage's message to one vault, signed for that vault, stage, grant, dataset, run and
        round. A failure raises VaultRefused, or with `dropouts` records the vault as dropped (None)."""
        p = self.nodes[node]
        headers = {
            "content-type": "application/x-protobuf",
            **signed_headers(self.key, self.addresses[p.url], stage, payload, p.dataset_id, p.grant_id, self.run_id,
                             self.round_number),
        }  # fmt: skip
        if stage == ROUND_SHARE_KEYS and self.signatures:
            headers[KEY_SIGNATURES] = json.dumps({str(n): sig for n, sig in self.signatures.items()})
        try:
            r = self.http.post(p.url.rstrip("/") + "/v1/flower", content=payload, headers=headers)
        except httpx.HTTPError as exc:
            why = f"vault {p.url} is unreachable ({exc.__class__.__name__}: {exc})"
        else:
            if r.status_code == 200:
                if stage == ROUND_MASKED_VECTORS:
                    self.sent_update.add(p.url)
                if stage == ROUND_SETUP and KEY_SIGNATURE in r.headers:
                    self.signatures[node] = r.headers[KEY_SIGNATURE]
                return r.content
            why = _refusal(p, r)
        if not self.dropouts:
            raise VaultRefused(why)
        self.dropped[p.url] = f"{stage}: {why}"
        log.warning("vault %s dropped out of round %d at %s", p.url, self.round_number, why)
        return None

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@dataclass(frozen=True)
class RoundDone:
    """A completed round: the aggregated parameters after it and what it cost."""

    round: int
    params: list[np.ndarray]
    seconds: float
    epsilon_micro: int  # the most any vault was charged for it


@dataclass
class FederatedResult:
    params: list[np.ndarray]
    round_seconds: list[float]
    bytes_sent: int
    bytes_received: int
    messages: int
    epsilon_micro: dict[int, int] = field(default_factory=dict)  # per round: the most any vault was charged
    run_id: int = 0


@dataclass(frozen=True)
class FederatedConfig:
    rounds: int = 5
    steps: int = 30  # local DP-GD steps per round
    lr: float = 2.0
    noise: float = 1.0  # vault-side noise multiplier (the vault may raise it)
    clipping_norm: float = 5.0  # Flower: clients clip their update to this L2 norm
    server_noise: float = 0.0  # Flower: noise multiplier of the aggregate (central DP)
    secagg: bool = True


def secagg_workflow() -> SecAggPlusWorkflow:
    """SecAgg+ with every vault holding a share of every other's secrets and all of them needed
    to unmask (shares and threshold as fractions: 1.0 of the vaults). It works from 2 vaults up
    (an integer `num_shares` must exceed 2 in Flower), and no aggregate can be revealed unless every
    vault of the round hands out its shares: a round is all or nothing."""
    return SecAggPlusWorkflow(
        num_shares=1.0,
        reconstruction_threshold=1.0,
        clipping_range=16.0,
        quantization_range=2**22,
        max_weight=100_000.0,
    )


def check_round(
    participants: list[Participant],
    key: bytes,
    run_id: int,
    spec: ModelSpec,
    params: list[np.ndarray],
    config: FederatedConfig,
    round_number: int = 1,
    completed: int = 0,
    addresses: dict[str, VaultAddress] | None = None,
) -> list[dict[str, Any]]:
    """Ask every vault, in parallel, whether it would run this round (grant, expiry, revocation,
    lineage, budget); raises `RoundRefused` naming every vault that would not. Nothing runs."""
    from allmende.vault.service import model_payload  # the vault's own wire form of a model

    model = model_payload(spec, params)
    to = addresses if addresses is not None else addresses_of(participants)

    def ask(p: Participant) -> dict[str, Any] | str:
        payload = {
            "dataset_id": "0x" + p.dataset_id.hex(), "grant_id": p.grant_id, "run_id": run_id, "model": model,
            "steps": config.steps, "noise": config.noise, "clipping_norm": config.clipping_norm,
        }  # fmt: skip
        try:
            with httpx.Client(timeout=60.0) as http:
                r = _post(http, key, to[p.url], p, "/v1/rounds/check", ROUND_CHECK, payload, run_id, round_number)
        except VaultRefused as exc:
            return str(exc)
        if r.status_code != 200:
            return _refusal(p, r)
        # what the check cost on the wire, for the run's byte and message counts
        return {**r.json(), "_sent": len(r.request.content), "_received": len(r.content)}

    with ThreadPoolExecutor(len(participants)) as pool:
        answers = list(pool.map(ask, participants))
    refusals = [a for a in answers if isinstance(a, str)]
    if refusals:
        raise RoundRefused(
            f"round {round_number} did not start: " + "; ".join(refusals) + ". No vault trained or was charged for it",
            round_number,
            completed,
        )
    return [a for a in answers if isinstance(a, dict)]


def abort_round(
    participants: list[Participant],
    key: bytes,
    run_id: int,
    round_number: int,
    addresses: dict[str, VaultAddress] | None = None,
) -> list[str]:
    """Best effort: tell every vault the round failed (a signed abort of this run and round), so
    that it undoes its reservation now (a vault that misses this undoes it after
    `RESERVATION_TTL`, or at its next start). Returns what the researcher must know: the vaults
    that had logged the round (their unmask ran) and those that did not confirm the abort."""

    def tell(p: Participant) -> str | None:
        try:
            to = addresses[p.url] if addresses is not None else VaultAddress.of(p.url)
            payload = {"dataset_id": "0x" + p.dataset_id.hex(), "grant_id": p.grant_id, "run_id": run_id,
                       "round": round_number}  # fmt: skip
            with httpx.Client(timeout=30.0) as http:
                r = _post(http, key, to, p, "/v1/rounds/abort", ROUND_ABORT, payload, run_id, round_number)
            if r.status_code != 200:
                log.warning("the vault at %s refused the abort: %s", p.url, _refusal(p, r))
                return f"vault {p.url} did not confirm the abort (it undoes its reservation within 15 minutes)"
            if r.json().get("logged"):
                return f"vault {p.url} had logged the round on chain (its update or unmask shares had left)"
            return None
        except (VaultRefused, httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("could not abort the round at %s: %s", p.url, exc)
            return f"vault {p.url} did not confirm the abort (it undoes its reservation within 15 minutes)"

    with ThreadPoolExecutor(len(participants)) as pool:
        return [said for said in pool.map(tell, participants) if said is not None]


def run_federated(
    participants: list[Participant],
    key: bytes,
    spec: ModelSpec,
    initial: list[np.ndarray],
    base_model: bytes,
    config: FederatedConfig,
    *,
    run_id: int | None = None,
    first_round: int = 1,
    on_checked: Callable[[int, list[dict[str, Any]]], None] | None = None,
    on_round: Callable[[RoundDone], None] | None = None,
    on_stage: Callable[[int, str], None] | None = None,
) -> FederatedResult:
    """Run rounds `first_round`..`config.rounds` across the vaults; returns the aggregated model.

    Each round is all or nothing: every vault is asked first (`check_round`) and nothing runs
    unless all of them would; in secure mode a vault's charge is logged only once every vault
    has trained (`VaultService.commit_round`), and a round that fails is aborted everywhere.
    `on_checked(round, answers)` runs once every vault said yes, `on_round` after each round
    (the CLI saves it there, so that a run can resume: pass the same `run_id` and the next
    `first_round` with the last round's parameters as `initial`). A refusal raises
    `RoundRefused` with the number of rounds completed."""
    if len(participants) < 2:
        raise VaultRefused("federated training needs at least 2 vaults")
    run_id = int.from_bytes(uuid4().bytes[:6], "big") if run_id is None else run_id
    n = len(participants)
    try:
        addresses = addresses_of(participants)
    except VaultRefused as exc:
        raise RoundRefused(
            f"round {first_round} did not start: {exc}. No vault trained or was charged for it",
            first_round,
            first_round - 1,
        ) from None
    params = initial
    result = FederatedResult(params, [], 0, 0, 0, {}, run_id)
    for round_number in range(first_round, config.rounds + 1):
        answers = check_round(
            participants, key, run_id, spec, params, config, round_number, round_number - 1, addresses
        )
        result.messages += 2 * len(answers)
        result.bytes_sent += sum(int(a.pop("_sent")) for a in answers)
        result.bytes_received += sum(int(a.pop("_received")) for a in answers)
        if on_checked is not None:
            on_checked(round_number, answers)
        started = time.perf_counter()
        grid = HttpGrid(participants, key, run_id, round_number=round_number, addresses=addresses)
        grid.on_stage = on_stage
        try:
            aggregated, charge = _one_round(grid, n, spec, params, base_model, config, round_number, run_id)
        except BaseException as exc:  # Ctrl-C too: the vaults undo their reservations now
            unsure = abort_round(participants, key, run_id, round_number, addresses)
            if isinstance(exc, VaultRefused):
                charged = "; ".join(unsure) if unsure else "No vault was charged for it"
                raise RoundRefused(
                    f"round {round_number} failed and was aborted: {exc}. {charged}",
                    round_number,
                    round_number - 1,
                ) from None
            raise
        finally:
            grid.http.close()
        params = aggregated
        seconds = time.perf_counter() - started
        result.params = params
        result.round_seconds.append(seconds)
        result.epsilon_micro[round_number] = charge
        result.bytes_sent += grid.bytes_sent
        result.bytes_received += grid.bytes_received
        result.messages += grid.messages
        if on_round is not None:
            on_round(RoundDone(round_number, params, seconds, charge))
    return result


def _one_round(
    grid: HttpGrid,
    n: int,
    spec: ModelSpec,
    params: list[np.ndarray],
    base_model: bytes,
    config: FederatedConfig,
    round_number: int,
    run_id: int,
) -> tuple[list[np.ndarray], int]:
    """One Flower round (SecAgg+ or plain FedAvg, client-side clipping and server noise)."""
    final: dict[str, Any] = {}

    class Recording(FedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if failures:
                raise VaultRefused(f"round {round_number}: {len(failures)} vault(s) failed: {failures[0]}")
            out = super().aggregate_fit(server_round, results, failures)
            final["charge"] = int(out[1].get("epsilon_micro", 0))  # fit_metrics_aggregation_fn: the most
            return out

    standardize = {}  # Flower's config values are scalars: the standardisation travels as one JSON string
    if spec.shift is not None and spec.scale is not None:
        standardize["standardize"] = json.dumps({"shift": list(spec.shift), "scale": list(spec.scale)})

    def fit_config(server_round: int) -> dict[str, Any]:
        return {
            "round": round_number,
            "base-model": "0x" + base_model.hex(),
            "inputs": spec.inputs,
            "classes": spec.classes,
            "hidden": spec.hidden,
            **standardize,
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
            initial_parameters=ndarrays_to_parameters(params),
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
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        DefaultWorkflow(fit_workflow=secagg_workflow() if config.secagg else None)(grid, legacy)

    with _identity:
        _set_identity(run_id, SUPERLINK_NODE_ID)
    app(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    aggregated: Parameters | None = final.get("parameters")
    if aggregated is None:
        raise VaultRefused(f"round {round_number} did not complete (a vault dropped out)")
    return parameters_to_ndarrays(aggregated), int(final.get("charge", 0))

"""Federated LoRA rounds and LM evaluation in a vault: the run's vaults fixed on chain, rounds
that survive dropouts, ε charged when a vault's masked update leaves.

A LoRA run differs from a tabular one (`allmende.vault.service`) in what lets a round complete
without every vault:

- **The run's vaults are fixed on chain.** The coordinator's round check names every member of
  the run as (dataset, grant); the vault checks each on chain (the grant exists, is the
  signer's, for the federated template on that dataset, covers the base model, not revoked; the
  dataset is registered, with a vault key that no other member has) and keeps the set for the
  run: a later round naming another set is refused. Every vault signs its SecAgg+ public keys
  with its registered key (`key_digest`); in the share-keys stage a vault takes part only if the
  keys it is given are exactly one signed set per member (`check_signed_keys`): a coordinator
  cannot add a vault of its own, nor swap a member's keys for its own.
- **SecAgg+ with a threshold below the number of vaults.** A vault accepts a setup with one share
  per member (`shares` = members) and a threshold `t` with 2·t > shares (and t ≥ 2): a round
  completes while `t` vaults remain (up to a third may drop out, `threshold_for`). In the unmask
  stage a vault reveals, for each other vault, either the share of its mask seed (active) or of
  its key (dropped), never both (`check_unmask`), so reconstructing one vault's update alone
  needs t vaults colluding with the coordinator, and the strict majority rules out telling two
  disjoint groups different stories.
- **ε is charged when the masked update leaves.** With a threshold below the number of vaults, a
  sent masked update can be unmasked (as part of the sum) without its vault's further help, so
  the vault logs its charge on chain *before* its masked vector leaves (the tabular template
  waits for its unmask). A vault that drops out before that stage is charged nothing; a round
  completes with exactly the masked updates that reached the coordinator, whose vaults are
  exactly those charged for the round.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from allmende.chain.bindings import TEMPLATES as TEMPLATE_IDS
from allmende.chain.errors import ContractReverted
from allmende.core.vault_requests import VaultRequest
from allmende.vault.errors import AccessDenied, BadJob, ParametersNotGranted, UnknownDataset
from allmende.vault.jobs import (
    canonical,
    check_finite,
    job_header,
    matches_request,
    only_fields,
    parse_bytes32,
    parse_epsilon,
    round_check_fields,
)
from allmende.vault.lora import AdapterModel, LoraSpec, adapter_distance, check_adapter, is_zero_adapter, perplexity
from allmende.vault.model import MAX_PARAMETERS, micro_epsilon, params_from_bytes, params_to_bytes, rho_of
from allmende.vault.noise import discrete_laplace
from allmende.vault.store import RoundRow
from allmende.vault.text import TextDataset

MIN_VAULTS = 3  # a threshold below the number of vaults with a strict majority needs three
MAX_VAULTS = 64
MAX_LOADED = 2  # base models with adapters a vault keeps loaded at once (least recently loaded goes first)
LORA_CHECK_FIELDS = frozenset(
    {"dataset_id", "grant_id", "run_id", "lora", "adapter", "members", "steps", "noise", "clipping_norm"}
)
LM_EVALUATE_FIELDS = frozenset(
    {"template", "dataset_id", "grant_id", "job_id", "lora", "adapter", "epsilon", "exact_match"}
)
LOSS_GRID_BITS = 16  # evaluate sums clipped losses in multiples of loss_clip·2⁻¹⁶


def threshold_for(vaults: int) -> int:
    """SecAgg+'s reconstruction threshold for a run of `vaults`: up to a third may drop out, and
    it stays a strict majority (2·t > vaults), which the vaults check."""
    return vaults - vaults // 3


def key_digest(chain_id: int, data_contract: str, run_id: int, round_number: int, node_id: int, pk1: bytes,
               pk2: bytes) -> bytes:  # fmt: skip
    """What a vault signs over its SecAgg+ public keys of one round."""
    return keccak(
        b"allmende secagg keys"
        + chain_id.to_bytes(32, "big")
        + bytes.fromhex(data_contract.removeprefix("0x"))
        + run_id.to_bytes(32, "big")
        + round_number.to_bytes(32, "big")
        + node_id.to_bytes(32, "big", signed=True)
        + keccak(pk1)
        + keccak(pk2)
    )


def sign_keys(key: bytes, digest: bytes) -> str:
    return "0x" + bytes(Account.sign_message(encode_defunct(primitive=digest), key).signature).hex()


def signer_of_keys(digest: bytes, signature: str) -> str:
    try:
        return str(Account.recover_message(encode_defunct(primitive=digest), signature=signature))
    except Exception:  # a malformed signature recovers nobody
        return ""


@dataclass(frozen=True)
class Member:
    dataset_id: bytes
    grant_id: int
    vault: str  # the dataset's registered vault key (checksummed)


def adapter_from_payload(data: object, model: AdapterModel) -> list[np.ndarray]:
    """An adapter sent as base64 of an .npz (float64 arrays), checked against the shapes the spec
    needs before anything is inflated."""
    if not isinstance(data, str):
        raise BadJob("'adapter' must be base64 of the adapter's .npz")
    if model.size > MAX_PARAMETERS:
        raise BadJob(f"the adapter has more than {MAX_PARAMETERS} parameters, the most a vault decodes")
    try:
        params = params_from_bytes(base64.b64decode(data, validate=True), model.shapes)
        check_adapter(model, params)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BadJob(f"'adapter' is not usable: {str(exc)[:200]}") from None
    return [p.astype(np.float32) for p in params]


def adapter_hash(params: list[np.ndarray]) -> bytes:
    """The adapter's identity as a round's input: its float32 arrays (how a round trains it) hashed."""
    return keccak(params_to_bytes([np.asarray(p, dtype=np.float32) for p in params]))


def adapter_payload(params: list[np.ndarray]) -> str:
    return base64.b64encode(params_to_bytes(params)).decode()


class LoraRounds:
    """The LoRA side of a vault: its base models (id → folder), text datasets, each run's members."""

    def __init__(self, service: Any, texts: list[TextDataset], models: dict[bytes, Path]) -> None:
        self.service = service
        self.texts = {t.dataset_id: t for t in texts}
        self.models = models
        self._adapters: dict[str, AdapterModel] = {}
        self._examples: dict[tuple[str, bytes], list[Any]] = {}
        self._members: dict[tuple[str, int, int], tuple[Member, ...]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lookups

    def text(self, dataset_id: bytes) -> TextDataset:
        text = self.texts.get(dataset_id)
        if text is None:
            raise UnknownDataset(f"this vault holds no text dataset 0x{dataset_id.hex()}")
        return text

    def adapter(self, spec: LoraSpec) -> AdapterModel:
        """The base model this vault holds under the spec's id, with the spec's adapters (cached)."""
        path = self.models.get(spec.base_model)
        if path is None:
            raise BadJob(f"this vault holds no base model 0x{spec.base_model.hex()} (it serves `--lm` models only)")
        with self._lock:
            model = self._adapters.get(spec.canonical())
            if model is None:
                try:
                    model = AdapterModel(path, spec)
                except ValueError as exc:
                    raise BadJob(str(exc)) from None
                while len(self._adapters) >= MAX_LOADED:  # each holds a copy of its base: a grantee sending
                    oldest = next(iter(self._adapters))  # many specs must not fill the vault's memory
                    del self._adapters[oldest]
                    self._examples = {k: v for k, v in self._examples.items() if k[0] != oldest}
                self._adapters[spec.canonical()] = model
        return model

    def examples(self, model: AdapterModel, text: TextDataset) -> list[Any]:
        key = (model.spec.canonical(), text.dataset_id)
        if key not in self._examples:
            self._examples[key] = [model.encode(r) for r in text.rows]
        return self._examples[key]

    def members_of(self, signer: str, grant_id: int, run_id: int) -> tuple[Member, ...] | None:
        return self._members.get((signer.lower(), grant_id, run_id))

    # ------------------------------------------------------------ the run's vaults

    def _check_members(self, raw: object, signer: str, dataset_id: bytes, grant_id: int,
                       spec: LoraSpec) -> tuple[Member, ...]:  # fmt: skip
        """Every member of the run, checked on chain; this vault's own dataset and grant among them."""
        if not isinstance(raw, list) or not MIN_VAULTS <= len(raw) <= MAX_VAULTS:
            raise BadJob(f"'members' must list the run's {MIN_VAULTS} to {MAX_VAULTS} vaults as [dataset_id, grant_id]")
        data = self.service.data
        members = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[1], int)
                or isinstance(item[1], bool)
            ):
                raise BadJob("each member is [dataset_id, grant_id]")

            ds, gid = parse_bytes32(item[0], "members' dataset_id"), item[1]
            try:
                grant = data.get_grant(gid)
                record = data.dataset(ds)
            except ContractReverted:
                raise AccessDenied(
                    f"member (0x{ds.hex()[:12]}…, grant {gid}) is not a granted, registered dataset"
                ) from None
            if (
                grant.dataset_id != ds
                or grant.grantee.lower() != signer.lower()
                or grant.template != TEMPLATE_IDS["federated_round"]
                or grant.revoked
                or spec.base_model not in grant.model_ids
                or record.owner.lower() == signer.lower()  # the grantee's own dataset would be a vault it runs
            ):
                raise AccessDenied(
                    f"member (0x{ds.hex()[:12]}…, grant {gid}) is not a live federated grant of the signer on that "
                    "dataset for this base model, owned by another party: a run's vaults are the registered vaults of "
                    "datasets others granted it"
                )
            members.append(Member(ds, gid, record.vault))
        if len({m.dataset_id for m in members}) != len(members) or len({m.vault.lower() for m in members}) != len(
            members
        ):
            raise AccessDenied("a run names each dataset once, and each vault key once")
        if (dataset_id, grant_id) not in {(m.dataset_id, m.grant_id) for m in members}:
            raise AccessDenied("the run's members do not include this vault's own dataset and grant")
        if not any(m.vault.lower() == self.service.address.lower() for m in members if m.dataset_id == dataset_id):
            raise AccessDenied("this vault is not the registered vault of its dataset")
        return tuple(sorted(members, key=lambda m: (m.dataset_id, m.grant_id)))

    def check_signed_keys(self, admitted: Any, keys: dict[int, tuple[bytes, bytes]], signatures: object,
                          own_node: int) -> None:  # fmt: skip
        """Share-keys stage: the keys are exactly one set per member of the run, each signed by
        that member's registered vault key for this run, round and node."""
        request, signer = admitted.request, admitted.signer
        members = self.members_of(signer, request.grant_id, request.run_id)
        if members is None:
            return  # not a LoRA run: tabular rounds need every vault's shares instead
        if not isinstance(signatures, dict):
            raise AccessDenied("a LoRA round's share-keys stage carries each vault's signature of its keys")
        if len(keys) > len(members):
            raise AccessDenied(f"the round shares keys among {len(keys)} nodes; the run has {len(members)} vaults")
        vaults = {m.vault.lower() for m in members}
        seen = set()
        chain_id, contract = self.service.contracts.client.chain_id, self.service.data.address
        for node, (pk1, pk2) in keys.items():
            digest = key_digest(chain_id, contract, request.run_id, request.round, node, pk1, pk2)
            who = signer_of_keys(digest, str(signatures.get(str(node), "")))
            if who.lower() not in vaults or who.lower() in seen:
                raise AccessDenied(
                    f"node {node}'s SecAgg+ keys are not signed by a vault of this run (a coordinator cannot add "
                    "or impersonate a vault)"
                )
            seen.add(who.lower())
        if own_node not in keys:
            raise AccessDenied("this vault's own keys are missing from the round")

    @staticmethod
    def check_setup(members: tuple[Member, ...], shares: object, threshold: object) -> None:
        if not isinstance(shares, int) or not isinstance(threshold, int):
            raise AccessDenied("a SecAgg+ setup names integer shares and threshold")
        if shares != len(members) or threshold < 2 or 2 * threshold <= shares or threshold > shares:
            raise AccessDenied(
                f"this vault takes part in a LoRA round only with one share per vault of the run ({len(members)}) "
                f"and a threshold that is a strict majority of them; this round asks {threshold} of {shares}"
            )

    @staticmethod
    def check_unmask(active: object, dead: object, own_node: int) -> None:
        """A vault reveals one kind of share per node: never both the mask seed's and the key's."""
        if not isinstance(active, list) or not isinstance(dead, list):
            raise AccessDenied("an unmask names its active and dropped nodes")
        if len(set(active)) != len(active) or len(set(dead)) != len(dead) or set(active) & set(dead):
            raise AccessDenied("an unmask that names a node twice (active and dropped) is refused: it would reveal "
                               "both shares of that node's update")  # fmt: skip
        if own_node not in active:
            raise AccessDenied("an unmask sent to this vault must count it active")

    # ------------------------------------------------------------ rounds

    def plan(
        self,
        grant_id: int,
        signer: str,
        dataset_id: bytes,
        run_id: int,
        spec: LoraSpec,
        params: list[np.ndarray],
        steps: int,
        noise: float,
        update_norm: float,
        round_number: int,
    ) -> tuple[float, int, float]:
        """(ρ, ε charge in millionths, noise) of a round, or its refusal. Call with the service lock held."""
        policy = self.service.policy
        if not 1 <= steps <= policy.max_steps:
            raise BadJob(f"a round takes 1 to {policy.max_steps} steps")
        if not 0 < update_norm <= policy.max_update_norm:
            raise BadJob(f"the clipping norm must be in (0, {policy.max_update_norm}] (this vault's limit)")
        model = self.adapter(spec)
        noise = max(noise, policy.min_noise)
        rho = rho_of(steps, noise, model.size)
        parent = self.service.store.last_round(grant_id, run_id)
        if parent is None:
            if not is_zero_adapter(model, params):
                raise ParametersNotGranted(
                    "the first round of a run trains from the zero adapter (every lora_B zero: exactly the granted "
                    "base model); nothing ran and nothing was logged"
                )
        elif parent.spec != spec.canonical():
            raise ParametersNotGranted(f"the LoRA spec differs from that of run {run_id}'s previous round")
        else:
            step = adapter_distance(params, params_from_bytes(parent.input))
            if step > parent.clip * (1.0 + policy.step_slack) + 1e-6:
                raise ParametersNotGranted(
                    f"the adapter is {step:.4g} from the one this vault trained from in run {run_id}'s previous round; "
                    f"a round moves it at most {parent.clip:g}; nothing ran and nothing was logged"
                )
        self.check_not_replayed(grant_id, run_id, round_number, adapter_hash(params))
        charge = self.service.authorize(grant_id, signer, "federated_round", dataset_id, spec.base_model, rho)
        return rho, charge, noise

    def check_not_replayed(self, grant_id: int, run_id: int, round_number: int, digest: bytes) -> None:
        """Each round of a run goes forward from parameters this vault has not trained from yet: an
        older round's parameters (its input, which is also the aggregate of the round before it)
        are refused although they lie within a round's step of the current ones. The one exception
        is the same round again from the same input (a round that failed after this vault trained
        is run again; that training was charged, and so is this one). A round number below the last
        this vault trained is refused too. A vault that missed a round cannot tell that round's
        input from a fresh one; the vaults that trained it refuse it, and a round needs the threshold."""
        seen = self.service.store.lora_inputs(grant_id, run_id)
        if not seen:
            return
        last_round, last_input = seen[-1]
        if round_number < last_round or (round_number == last_round and digest != last_input):
            raise ParametersNotGranted(
                f"round {round_number} of run {run_id} comes after round {last_round} here, which this vault trained "
                "already (a replayed round); nothing ran and nothing was logged"
            )
        if round_number > last_round and any(digest == h for _, h in seen):
            raise ParametersNotGranted(
                f"the adapter sent for round {round_number} of run {run_id} is one this vault trained from in an "
                "earlier round (a replay of an old round's parameters); nothing ran and nothing was logged"
            )

    def check(self, body: dict[str, Any], signer: str, request: VaultRequest) -> dict[str, Any]:
        """Would this vault run the run's next LoRA round? Fixes the run's members here at its first check."""

        only_fields(body, LORA_CHECK_FIELDS, "a LoRA round check")
        grant, run, steps, noise, clip, dataset_id = round_check_fields(body)
        matches_request(request, dataset_id, grant, run)
        self.text(dataset_id)
        self.service.grant_for(grant, signer, "federated_round", dataset_id)  # before any adapter bytes are decoded
        try:
            spec = LoraSpec.from_json(body.get("lora"))
        except ValueError as exc:
            raise BadJob(f"'lora': {exc}") from None
        members = self._check_members(body.get("members"), signer, dataset_id, grant, spec)
        key = (signer.lower(), grant, run)
        fixed = self._members.get(key)
        if fixed is not None and fixed != members:
            raise AccessDenied(f"run {run}'s vaults were fixed at its first round here; this check names others")
        params = adapter_from_payload(body.get("adapter"), self.adapter(spec))
        with self.service._lock:
            _, charge, _ = self.plan(grant, signer, dataset_id, run, spec, params, steps, float(noise), float(clip),
                                     request.round)  # fmt: skip
            g = self.service.data.get_grant(grant)
            left = self.service.store.ledger(grant).left(g.epsilon_budget, self.service.policy.delta, g.epsilon_spent)
        self._members[key] = members
        return {"epsilon_micro": charge, "left_micro": left, "expires_at": g.expires_at, "vaults": len(members)}

    def train(self, grant_id: int, signer: str, dataset_id: bytes, run_id: int, spec: LoraSpec,
              params: list[np.ndarray], steps: int, lr: float, noise: float,
              update_norm: float, round_number: int) -> tuple[list[np.ndarray], int, int]:  # fmt: skip
        """One round's DP-SGD on this vault's rows; logs the charge on chain before the (masked)
        update leaves. Returns (adapter, rows, ε charged)."""
        if self.members_of(signer, grant_id, run_id) is None:
            raise AccessDenied("a LoRA round runs only after its check fixed the run's vaults here")
        text = self.text(dataset_id)
        model = self.adapter(spec)
        service = self.service
        with service._lock, model.lock:
            rho, charge, noise = self.plan(grant_id, signer, dataset_id, run_id, spec, params, steps, noise,
                                           update_norm, round_number)  # fmt: skip
            out = model.dp_train(params, self.examples(model, text), steps, lr, service.policy.clip, noise,
                                 service.random_bytes)  # fmt: skip
            digest = keccak(params_to_bytes(params))
            released = params_to_bytes(out)
            job_id = keccak(b"federated_lora" + dataset_id + digest + secrets.token_bytes(16))
            lineage = RoundRow(grant_id, run_id, spec.base_model, spec.canonical(), digest, params_to_bytes(params),
                               update_norm, keccak(released))  # fmt: skip
            service.charge_and_log(grant_id, job_id, dataset_id, "federated_round", spec.base_model, released, rho,
                                   charge, lineage)  # fmt: skip
            service.store.record_lora_input(grant_id, run_id, round_number, adapter_hash(params))
        return out, len(text.rows), charge

    # ------------------------------------------------------------ evaluation

    def evaluate(self, body: dict[str, Any], signer: str, request: VaultRequest | None) -> dict[str, Any]:
        """The base model with an adapter, on a text dataset: the mean per-example loss (each
        clipped to `loss_clip`) with discrete Laplace noise on the sum (ε; the row count is public)
        and the perplexity it implies. With `exact_match`, also the share of held-out chat rows
        whose answer greedy decoding reproduces exactly (a count with discrete Laplace noise of
        scale 2/ε: a replaced row moves it by at most 1), the ε split evenly between the two
        statistics. Nothing per example leaves; the ε is charged to the grant."""

        only_fields(body, LM_EVALUATE_FIELDS, "an LM evaluate job")
        dataset_id, job_id, grant_id = job_header(body, request)
        text = self.text(dataset_id)
        service = self.service
        service.grant_for(grant_id, signer, "evaluate", dataset_id)  # before any adapter bytes are decoded
        try:
            spec = LoraSpec.from_json(body.get("lora"))
        except ValueError as exc:
            raise BadJob(f"'lora': {exc}") from None
        model = self.adapter(spec)
        params = adapter_from_payload(body.get("adapter"), model)
        epsilon = parse_epsilon(body.get("epsilon"), "an LM evaluation releases a noisy mean loss")
        exact = body.get("exact_match", False)
        if not isinstance(exact, bool):
            raise BadJob("'exact_match' must be true or false")
        shares = 2.0 if exact else 1.0  # the statistics released share the job's ε
        clip = service.policy.loss_clip
        with service._lock, model.lock:
            charge = service.authorize(grant_id, signer, "evaluate", dataset_id, spec.base_model, 0.0,
                                       extra=micro_epsilon(epsilon))  # fmt: skip
            model.set(params)
            losses = model.losses(self.examples(model, text))
            grid = clip * 2.0**-LOSS_GRID_BITS
            ticks = sum(round(min(max(v, 0.0), clip) / grid) for v in losses)
            # a replaced row moves the clipped sum by at most loss_clip: Laplace of scale clip/ε
            noisy = ticks + int(discrete_laplace((clip / grid) / (epsilon / shares), 1, service.random_bytes)[0])
            rows = len(text.rows)
            mean = min(max(noisy * grid / rows, 0.0), clip)
            result = {
                "template": "evaluate",
                "dataset_id": "0x" + dataset_id.hex(),
                "model_id": "0x" + spec.base_model.hex(),
                "adapter": "0x" + keccak(params_to_bytes(params)).hex(),
                "rows": rows,
                "mean_loss": round(mean, 6),
                "perplexity": round(perplexity(mean), 4),
                "loss_clip": clip,
                "epsilon": epsilon,
            }
            if exact:
                hits = sum(model.exact_matches(text.rows, self.examples(model, text)))
                noisy_hits = hits + int(discrete_laplace(1.0 / (epsilon / shares), 1, service.random_bytes)[0])
                result["exact_matches"] = min(max(noisy_hits, 0), rows)
                result["exact_match"] = round(result["exact_matches"] / rows, 6)
            check_finite(result)
            tx = service.charge_and_log(grant_id, job_id, dataset_id, "evaluate", spec.base_model, canonical(result),
                                        0.0, charge)  # fmt: skip
        return {"result": result, "result_hash": "0x" + keccak(canonical(result)).hex(), "access_tx": tx}


def spec_from_config(value: object) -> LoraSpec:
    try:
        return LoraSpec.from_json(json.loads(str(value)))
    except (ValueError, TypeError) as exc:
        raise BadJob(f"the round's 'lora' config is not a LoRA spec: {exc}") from None

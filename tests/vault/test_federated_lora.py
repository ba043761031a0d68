"""Federated LoRA of a real causal LM (allmende:tiny, loaded through transformers and peft) across
3 vault processes on anvil, each holding its slice of an invented product's support chats: DP-SGD
in every vault, SecAgg+ with a threshold below the number of vaults, a vault killed mid-round,
the evaluation inside the vaults, the merged model registered as derived and served; and the
attacks on it (a fake vault, impersonated keys, an update in the clear, raw rows, per-example
losses, ε over the budget)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from eth_utils import keccak
from flwr.app import Message, MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.proto.message_pb2 import Message as ProtoMessage
from openai import OpenAI

from allmende.chain.anvil import free_port
from allmende.chain.bindings import ROLE_VALIDATOR, TEMPLATES, Contracts
from allmende.chain.errors import ContractReverted
from allmende.core.manifest import model_id_of
from allmende.core.vault_requests import ROUND_CHECK, ROUND_FIT, ROUND_SHARE_KEYS, ROUND_UNMASK
from allmende.engine import resolve_model
from allmende.engine.base import ChatPrompt
from allmende.engine.base import Message as ChatMessage
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.node.supervisor import allmende_command, spawn, stop_together
from allmende.testing.support_chat import FACTS, support_rows, write_rows
from allmende.testing.vaults import VaultNetwork, add_vault, send, signed_request, start_file_vaults
from allmende.vault import flower, lm_attest
from allmende.vault.federated_lora import LoraResult, LoraRunConfig, run_federated_lora
from allmende.vault.flower import Participant, RoundRefused
from allmende.vault.jobs import canonical
from allmende.vault.lora import AdapterModel, LoraSpec
from allmende.vault.lora_service import adapter_hash, adapter_payload, key_digest, sign_keys
from allmende.vault.model import MICRO, params_to_bytes
from tests.vault.conftest import cli, signed_post

# 2 rounds of 1 DP-SGD step at noise 2: ε 7.79 per vault at δ = 1e-5, within the grants of ε 8 the issue sets
CONFIG = LoraRunConfig(rounds=2, steps=1, lr=4.0, noise=2.0, clipping_norm=5.0)
GRANT_EPSILON = 8.0
VAULT_ARGS = ["--lm", "allmende:tiny", "--min-noise", "1.0", "--loss-clip", "10", "--license", "CC-BY-NC-4.0"]


@dataclass
class LmWorld:
    net: VaultNetwork
    base_id: bytes
    base_path: Path
    spec: LoraSpec
    heldout: list[bytes]  # per vault: its held-out dataset
    root: Path


@pytest.fixture(scope="module")
def lm_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LmWorld]:
    root = tmp_path_factory.mktemp("lm-vaults")
    base = resolve_model("allmende:tiny")  # written once here, before the vaults read it
    files = []
    for i in range(3):
        train = write_rows(root / f"support-{i}.jsonl", support_rows(24, seed=i))
        held = write_rows(root / f"support-heldout-{i}.jsonl", support_rows(12, seed=100 + i))
        files.append([train, held])
    net = start_file_vaults(root, files, VAULT_ARGS)
    try:
        owner = net.contracts(net.accounts[1])
        owner.models.register(base.model_id, "Apache-2.0", 500, [], [], "allmende:tiny")
        spec = LoraSpec(base.model_id, 4, 8.0, ("q_proj", "v_proj", "o_proj", "down_proj"), max_tokens=48)
        yield LmWorld(net, base.model_id, base.path, spec, [v.dataset_ids[1] for v in net.vaults], root)
    finally:
        net.stop()


def _participants(world: LmWorld, vaults: list[int], epsilon: float = GRANT_EPSILON) -> list[Participant]:
    coordinator = world.net.accounts[2]
    out = []
    for i in vaults:
        v = world.net.vaults[i]
        grant = world.net.grant(v, coordinator.address, "federated_round", [world.base_id], epsilon)
        out.append(Participant(v.url, v.dataset_id, grant))
    return out


def _exact_heldout_loss(world: LmWorld, adapter: list[np.ndarray]) -> float:
    """The held-out chats' mean token loss under `adapter`, without noise (the vaults' loss, per
    example clipped at the vaults' --loss-clip of 10, averaged per vault, then over the vaults)."""
    model = AdapterModel(world.base_path, world.spec)
    model.set(adapter)
    per_vault = []
    for i in range(3):
        rows = support_rows(12, seed=100 + i)
        per_vault.append(np.mean([min(loss, 10.0) for loss in model.losses([model.encode(r) for r in rows])]))
    return float(np.mean(per_vault))


def _heldout_loss(world: LmWorld, adapter: list[np.ndarray], grants: list[int], job: str) -> float:
    """The mean of the vaults' DP held-out losses (each computed inside its vault)."""
    validator = world.net.accounts[3]
    losses = []
    for v, dataset, grant in zip(world.net.vaults[:3], world.heldout, grants, strict=True):
        reply = signed_post(v.url, validator.key, {
            "template": "evaluate", "dataset_id": "0x" + dataset.hex(), "grant_id": grant,
            "job_id": "0x" + keccak(text=f"{job}-{v.url}").hex(), "lora": world.spec.to_json(),
            "adapter": adapter_payload(adapter), "epsilon": 6.0,
        })  # fmt: skip
        assert reply.status_code == 200, reply.text
        result = reply.json()["result"]
        assert set(result) == {"template", "dataset_id", "model_id", "adapter", "rows", "mean_loss", "perplexity",
                               "loss_clip", "epsilon"}  # fmt: skip
        losses.append(result["mean_loss"])
    return float(np.mean(losses))


def _answer_logprob(engine: CausalLMEngine) -> float:
    """Log-likelihood of the support desk's answers to its questions, through the serving engine."""
    total = 0.0
    for question, answer in FACTS:
        prompt = ChatPrompt(messages=(ChatMessage("system", "You are the Quillon support desk."),
                                      ChatMessage("user", question)))  # fmt: skip
        head = engine.prompt_ids(prompt)
        ids = head + engine.encode_text(answer)
        _, logits = engine.prefill(ids)
        logp = torch.log_softmax(logits, dim=-1)
        total += float(sum(logp[i - 1, ids[i]] for i in range(len(head), len(ids))))
    return total


def _accesses(world: LmWorld, dataset: bytes, grant: int) -> list[int]:
    return [a.epsilon_spent for a in world.net.reader().data.accesses(dataset) if a.grant_id == grant]


@dataclass
class Tuned:
    participants: list[Participant]
    initial: list[np.ndarray]
    result: LoraResult
    evals: list[int]  # the validator's evaluate grants on the held-out datasets
    folder: Path  # the merged model
    model_id: bytes  # registered as derived from the base


@pytest.fixture(scope="module")
def tuned(lm_world: LmWorld) -> Tuned:
    """One 3-vault run; its merged model saved and registered as derived from the base."""
    world = lm_world
    participants = _participants(world, [0, 1, 2])
    local = AdapterModel(world.base_path, world.spec)
    initial = local.initial(seed=0)
    evals = [world.net.grant(v, world.net.accounts[3].address, "evaluate", [world.base_id], 20.0, d)
             for v, d in zip(world.net.vaults[:3], world.heldout, strict=True)]  # fmt: skip
    result = run_federated_lora(participants, world.net.accounts[2].key, world.spec, initial, CONFIG)
    folder = local.save_merged(result.params, world.root / "quillon-lora")
    new_id = model_id_of(folder)
    coordinator = world.net.contracts(world.net.accounts[2])
    coordinator.models.register_derived(new_id, world.base_id, "CC-BY-NC-4.0", [p.dataset_id for p in participants],
                                        "file://quillon-lora")  # fmt: skip
    return Tuned(participants, initial, result, evals, folder, new_id)


def test_three_vaults_fine_tune_lora_the_held_out_loss_falls_and_the_adapter_is_served(
    lm_world: LmWorld, tuned: Tuned
) -> None:
    world, participants, result = lm_world, tuned.participants, tuned.result

    assert [r.aggregated for r in result.rounds] == [tuple(sorted(p.url for p in participants))] * CONFIG.rounds
    # the held-out loss falls: measured exactly here (the test made the held-out chats), and the
    # vaults' DP evaluations (Laplace noise of scale 10/6 per vault sum of 12 rows, about 0.2 nats on
    # the mean of three) agree with it. Comparing two noisy evaluations against a 0.3 margin failed
    # now and then on the noise alone.
    exact_before, exact_after = _exact_heldout_loss(world, tuned.initial), _exact_heldout_loss(world, result.params)
    assert exact_after < exact_before - 0.3, (exact_before, exact_after)
    before = _heldout_loss(world, tuned.initial, tuned.evals, "base")
    after = _heldout_loss(world, result.params, tuned.evals, "lora")
    assert abs(before - exact_before) < 1.0, (before, exact_before)
    assert abs(after - exact_after) < 1.0, (after, exact_after)
    # every vault logged one access per round, and the chain's ε is what the rounds reported
    for p in participants:
        charges = _accesses(world, p.dataset_id, p.grant_id)
        assert charges == [r.charged_micro[p.url] for r in result.rounds]
        assert world.net.reader().data.get_grant(p.grant_id).epsilon_spent == sum(charges)

    # exact-match on the held-out question/answer pairs next to perplexity: one noisy count, the job's ε charged once
    v, dataset, grant = world.net.vaults[0], world.heldout[0], tuned.evals[0]
    spent = world.net.reader().data.get_grant(grant).epsilon_spent
    reply = signed_post(v.url, world.net.accounts[3].key, {
        "template": "evaluate", "dataset_id": "0x" + dataset.hex(), "grant_id": grant,
        "job_id": "0x" + keccak(text="exact-match").hex(), "lora": world.spec.to_json(),
        "adapter": adapter_payload(result.params), "epsilon": 2.0, "exact_match": True,
    })  # fmt: skip
    assert reply.status_code == 200, reply.text
    scored = reply.json()["result"]
    assert 0 <= scored["exact_matches"] <= scored["rows"] == 12 and scored["perplexity"] >= 1.0
    assert scored["exact_match"] == round(scored["exact_matches"] / 12, 6)
    assert world.net.reader().data.get_grant(grant).epsilon_spent == spent + 2 * MICRO

    # the merged model is registered as derived from the base, and served by the transformers engine
    record = world.net.reader().models.get(tuned.model_id)
    assert record.parents == [world.base_id]
    assert set(record.datasets) == {p.dataset_id for p in participants}
    assert world.net.reader().models.royalty_info(tuned.model_id)[0] == world.net.accounts[1].address
    base_engine = CausalLMEngine("allmende:tiny", world.base_path, max_concurrency=1, device="cpu")
    tuned_engine = CausalLMEngine("quillon", tuned.folder, max_concurrency=1, device="cpu")
    assert tuned_engine.model_id == tuned.model_id
    assert _answer_logprob(tuned_engine) > _answer_logprob(base_engine) + 20.0


def _served_hits(client: OpenAI, model: str, engine: CausalLMEngine, chars: int = 16) -> tuple[list[str], list[bool]]:
    """Teacher forcing through the gateway: for the first `chars` tokens of each support answer, the
    served model is asked for one greedy token after the question and the answer so far (a token-id
    prompt to /v1/completions, logprobs=5). Returns its choice at each position and whether the
    answer's token is among its top 5 there."""
    choices, in_top5 = [], []
    for question, answer in FACTS:
        prompt = ChatPrompt(messages=(ChatMessage("system", "You are the Quillon support desk."),
                                      ChatMessage("user", question)))  # fmt: skip
        head, want = engine.prompt_ids(prompt), engine.encode_text(answer)[:chars]
        for k, token in enumerate(want):
            reply = client.completions.create(model=model, prompt=head + want[:k], max_tokens=1, temperature=0,
                                              logprobs=5)  # fmt: skip
            choice = reply.choices[0]
            assert choice.logprobs is not None and choice.logprobs.top_logprobs is not None
            choices.append(choice.text)
            in_top5.append(engine.tokenizer.decode([token]) in choice.logprobs.top_logprobs[0])
    return choices, in_top5


def _local_hits(engine: CausalLMEngine, chars: int = 16) -> tuple[list[str], list[bool]]:
    """The same teacher forcing in this process, one prefill per answer: the reference the served
    model must reproduce."""
    choices, in_top5 = [], []
    for question, answer in FACTS:
        prompt = ChatPrompt(messages=(ChatMessage("system", "You are the Quillon support desk."),
                                      ChatMessage("user", question)))  # fmt: skip
        head, want = engine.prompt_ids(prompt), engine.encode_text(answer)[:chars]
        _, logits = engine.prefill(head + want)
        for k, token in enumerate(want):
            top = torch.topk(logits[len(head) + k - 1], 5).indices.tolist()
            choices.append(engine.tokenizer.decode([top[0]]))
            in_top5.append(token in top)
    return choices, in_top5


def test_the_registered_adapter_is_served_by_a_provider_and_answers_as_trained_through_the_gateway(
    lm_world: LmWorld, tuned: Tuned
) -> None:
    world = lm_world
    coordinator, owner = world.net.contracts(world.net.accounts[2]), world.net.contracts(world.net.accounts[1])
    coordinator.models.set_name(tuned.model_id, "quillon-support")  # the run's model, by the name it registered
    owner.models.set_name(world.base_id, "tiny-base")
    provider_port, gateway_port = free_port(), free_port()
    chain = ["--rpc", world.net.rpc_url, "--deployments", str(world.net.deployments)]
    provider = spawn("provider", allmende_command(
        "provider", *chain, "--key", "devnet:8", "--state-dir", str(world.root / "provider"), "--port",
        str(provider_port), "--model", "allmende:tiny", "--model", str(tuned.folder), "--torch-threads", "1",
    ), world.root / "provider.log", f"http://127.0.0.1:{provider_port}")  # fmt: skip
    gateway = spawn("gateway", allmende_command(
        "gateway", *chain, "--key", "devnet:9", "--state-dir", str(world.root / "gateway"), "--port",
        str(gateway_port),
    ), world.root / "gateway.log", f"http://127.0.0.1:{gateway_port}")  # fmt: skip
    try:
        provider.wait_healthy(180)
        gateway.wait_healthy(120, ready=lambda health: health["providers"] >= 1)
        # the gateway allows 50 requests per second per key: the client waits out a 429 as it is told
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=20, timeout=120)  # type: ignore[operator]
        listed = {m.id: m for m in client.models.list().data}
        assert {"quillon-support", "tiny-base"} <= set(listed)
        tuned_engine = CausalLMEngine("quillon", tuned.folder, max_concurrency=1, device="cpu")
        base_engine = CausalLMEngine("allmende:tiny", world.base_path, max_concurrency=1, device="cpu")
        served_base, served_tuned = (
            _served_hits(client, "tiny-base", tuned_engine),
            _served_hits(client, "quillon-support", tuned_engine),
        )
        local_base, local_tuned = _local_hits(base_engine), _local_hits(tuned_engine)
        print(f"served teacher-forced hits (top-1, top-5) of 128 answer tokens: "
              f"base {sum(served_base[1])}; tuned {sum(served_tuned[1])}")  # fmt: skip
        # each name serves its own weights: the provider's answers are the local engine's, position by
        # position (one near tie may fall the other way between a batched server and one prefill here)
        for served, local in ((served_base, local_base), (served_tuned, local_tuned)):
            assert sum(a != b for a, b in zip(served[0], local[0], strict=True)) <= 2
            assert sum(a != b for a, b in zip(served[1], local[1], strict=True)) <= 2
        # and the two are different models: the tuned weights change the greedy choice at many positions
        assert sum(a != b for a, b in zip(served_base[0], served_tuned[0], strict=True)) >= 8
        # that the tuned model answers better is measured exactly by the first test (answer log-likelihood
        # up by more than 20 nats); teacher-forced top-5 hits vary with the DP noise (3 to 22 of 128 seen)
    finally:
        stop_together([gateway, provider], 30)


def test_a_vault_killed_mid_round_the_round_completes_and_only_the_others_are_charged(lm_world: LmWorld) -> None:
    world = lm_world
    held = [write_rows(world.root / "support-3.jsonl", support_rows(24, seed=3))]
    add_vault(world.net, 3, held, VAULT_ARGS).wait_healthy(90)
    participants = _participants(world, [0, 1, 3])
    victim = world.net.vaults[3]

    def kill_before_training(round_number: int, stage: str) -> None:
        if round_number == 2 and stage == flower.ROUND_MASKED_VECTORS:
            victim.process.kill()
            victim.process.wait(10)

    # 3 rounds of 1 step at noise 3 (ε 6.1 per vault within the grants of 8): the round after the
    # kill runs without the dead vault (before, Flower sampled it, it failed the setup, and the
    # unmask asked the others for shares of a node that never shared keys: the round failed)
    config = dataclasses.replace(CONFIG, rounds=3, noise=3.0)
    initial = AdapterModel(world.base_path, world.spec).initial(seed=1)
    result = run_federated_lora(participants, world.net.accounts[2].key, world.spec, initial, config,
                                on_stage=kill_before_training)  # fmt: skip

    assert len(result.rounds) == 3
    first, second, third = result.rounds
    assert victim.url in first.aggregated and victim.url not in second.aggregated
    assert victim.url in second.dropped and len(second.aggregated) == 2
    assert victim.url in third.dropped and third.aggregated == second.aggregated
    # ε: the survivors logged every round, the killed vault only the round its update was aggregated in
    assert len(_accesses(world, participants[0].dataset_id, participants[0].grant_id)) == 3
    assert len(_accesses(world, participants[1].dataset_id, participants[1].grant_id)) == 3
    assert _accesses(world, victim.dataset_id, participants[2].grant_id) == [first.charged_micro[victim.url]]
    assert set(second.charged_micro) == set(second.aggregated) == set(third.charged_micro)


def test_a_vault_that_refuses_the_setup_drops_out_and_the_round_completes(lm_world: LmWorld) -> None:
    world = lm_world
    participants = _participants(world, [0, 1, 2])
    leaver = participants[2]
    owner = world.net.contracts(world.net.vaults[2].account)

    def revoke_before_setup(round_number: int, stage: str) -> None:
        if round_number == 1 and stage == flower.ROUND_SETUP:
            owner.data.revoke(leaver.grant_id)  # the vault's owner revokes after the check: it refuses the setup

    initial = AdapterModel(world.base_path, world.spec).initial(seed=7)
    result = run_federated_lora(participants, world.net.accounts[2].key, world.spec, initial,
                                dataclasses.replace(CONFIG, rounds=1), on_stage=revoke_before_setup)  # fmt: skip

    # before, Flower kept the vault among the round's nodes: the unmask asked the others for shares
    # of its key, which nobody held, and the round failed with the survivors charged
    (done,) = result.rounds
    assert "round_setup" in done.dropped[leaver.url] and "revoked" in done.dropped[leaver.url]
    assert done.aggregated == tuple(sorted(p.url for p in participants[:2]))
    assert _accesses(world, leaver.dataset_id, leaver.grant_id) == []
    for p in participants[:2]:
        assert _accesses(world, p.dataset_id, p.grant_id) == [done.charged_micro[p.url]]


def _check_body(world: LmWorld, p: Participant, members: list[list[object]], run_id: int) -> dict[str, object]:
    initial = AdapterModel(world.base_path, world.spec).initial(seed=2)
    return {
        "dataset_id": "0x" + p.dataset_id.hex(), "grant_id": p.grant_id, "run_id": run_id,
        "lora": world.spec.to_json(), "adapter": adapter_payload(initial), "members": members,
        "steps": CONFIG.steps, "noise": CONFIG.noise, "clipping_norm": 1.0,
    }  # fmt: skip


def test_a_coordinator_cannot_add_a_fake_vault_or_send_for_an_update_in_the_clear(lm_world: LmWorld) -> None:
    world = lm_world
    key = world.net.accounts[2].key
    participants = _participants(world, [0, 1, 2])
    members: list[list[object]] = [["0x" + p.dataset_id.hex(), p.grant_id] for p in participants]
    p = participants[0]

    # a fourth "vault" whose dataset is no registered, granted dataset: the check refuses the run
    fake = [*members, ["0x" + keccak(text="a vault of my own").hex(), p.grant_id]]
    body = _check_body(world, p, fake, 77)
    r = send(signed_request(p.url, key, "/v1/rounds/check", ROUND_CHECK, body, p.dataset_id, p.grant_id, 77))
    assert r.status_code == 403 and r.json()["error"]["code"] == "access_denied"

    # a fourth vault the coordinator runs itself: its own dataset, registered and granted to itself on chain
    mine = world.net.contracts(world.net.accounts[2])
    own = keccak(text="the coordinator's own dataset")
    mine.data.register_dataset(own, world.net.accounts[2].address, "CC0-1.0")
    expires = mine.client.timestamp() + 86_400
    own_grant = mine.data.grant(own, world.net.accounts[2].address, TEMPLATES["federated_round"], [world.base_id],
                                expires, 100 * MICRO)  # fmt: skip
    body = _check_body(world, p, [*members, ["0x" + own.hex(), own_grant]], 79)
    r = send(signed_request(p.url, key, "/v1/rounds/check", ROUND_CHECK, body, p.dataset_id, p.grant_id, 79))
    assert r.status_code == 403 and "owned by another party" in r.json()["error"]["message"]

    # the honest members: the check passes; then a plain FedAvg fit (an update in the clear) is refused
    body = _check_body(world, p, members, 78)
    r = send(signed_request(p.url, key, "/v1/rounds/check", ROUND_CHECK, body, p.dataset_id, p.grant_id, 78))
    assert r.status_code == 200, r.text
    local = AdapterModel(world.base_path, world.spec)
    ins = FitIns(ndarrays_to_parameters(local.initial(seed=2)), {"round": 1, "lora": "{}", "steps": 2, "lr": 1.0,
                                                                  "noise": 1.0})  # fmt: skip
    with flower._identity:  # Flower stamps a message with the process's current run
        flower._set_identity(78, 0)
        message = Message(compat.fitins_to_recorddict(ins, keep_input=True), 1000, MessageType.TRAIN)
    message.metadata.__dict__["_run_id"] = 78
    raw = bytes(message_to_proto(message).SerializeToString())
    r = send(signed_request(p.url, key, "/v1/flower", ROUND_FIT, raw, p.dataset_id, p.grant_id, 78, 1))
    assert r.status_code == 403, r.text
    assert _accesses(world, p.dataset_id, p.grant_id) == []


def test_a_coordinator_cannot_replay_an_old_rounds_parameters(lm_world: LmWorld, tuned: Tuned) -> None:
    world, result = lm_world, tuned.result
    key, run = world.net.accounts[2].key, result.run_id
    members: list[list[object]] = [["0x" + p.dataset_id.hex(), p.grant_id] for p in tuned.participants]
    first_aggregate = result.rounds[0].params  # round 2's input

    def check(p: Participant, adapter: list[np.ndarray], round_number: int) -> httpx.Response:
        body = {
            "dataset_id": "0x" + p.dataset_id.hex(), "grant_id": p.grant_id, "run_id": run,
            "lora": world.spec.to_json(), "adapter": adapter_payload(adapter), "members": members,
            "steps": CONFIG.steps, "noise": CONFIG.noise, "clipping_norm": CONFIG.clipping_norm,
        }  # fmt: skip
        return send(signed_request(p.url, key, "/v1/rounds/check", ROUND_CHECK, body, p.dataset_id, p.grant_id, run,
                                   round_number))  # fmt: skip

    for p in tuned.participants:
        # round 3 from round 1's parameters (the zero adapter) or round 2's (round 1's aggregate): both lie
        # within one round's step of the current adapter, and both are refused as replays
        for old in (tuned.initial, first_aggregate):
            r = check(p, old, CONFIG.rounds + 1)
            assert r.status_code == 403, r.text
            assert "replay of an old round's parameters" in r.json()["error"]["message"]
        # an earlier round number with the current adapter is refused too
        r = check(p, result.params, CONFIG.rounds - 1)
        assert r.status_code == 403 and "a replayed round" in r.json()["error"]["message"], r.text
        # the run's next round from the aggregate the last round produced is no replay: it is refused
        # only because the run spent the grant (ε 7.79 of 8)
        r = check(p, result.params, CONFIG.rounds + 1)
        assert r.status_code == 403 and r.json()["error"]["code"] == "privacy_budget_exceeded", r.text
    for p in tuned.participants:  # checks train nothing: the chain has the run's rounds only
        assert len(_accesses(world, p.dataset_id, p.grant_id)) == CONFIG.rounds


def test_a_coordinator_cannot_impersonate_a_vault_with_keys_of_its_own(
    lm_world: LmWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = lm_world
    coordinator = world.net.accounts[2]
    participants = _participants(world, [0, 1, 2])
    deliver = flower.HttpGrid._deliver

    def swap_a_signature(self: flower.HttpGrid, payload: bytes, node: int, stage: str) -> bytes | None:
        if stage == ROUND_SHARE_KEYS and self.signatures:
            # the coordinator signs node 1000's keys itself, as if it ran that vault
            victim = min(self.signatures)
            chain = world.net.reader()
            digest = key_digest(chain.client.chain_id, chain.data.address, self.run_id, self.round_number, victim,
                                b"pk1", b"pk2")  # fmt: skip
            self.signatures[victim] = sign_keys(coordinator.key, digest)
        return deliver(self, payload, node, stage)

    monkeypatch.setattr(flower.HttpGrid, "_deliver", swap_a_signature)
    initial = AdapterModel(world.base_path, world.spec).initial(seed=3)
    with pytest.raises(RoundRefused, match="did not complete"):
        run_federated_lora(participants, coordinator.key, world.spec, initial, CONFIG)
    for p in participants:  # nobody trained: nothing logged, nothing charged
        assert _accesses(world, p.dataset_id, p.grant_id) == []


def test_a_grantee_gets_no_raw_rows_no_per_example_losses_and_no_round_over_its_budget(lm_world: LmWorld) -> None:
    world = lm_world
    validator = world.net.accounts[3]
    v, dataset = world.net.vaults[0], world.heldout[0]
    grant = world.net.grant(v, validator.address, "evaluate", [world.base_id], 5.0, dataset)
    adapter = adapter_payload(AdapterModel(world.base_path, world.spec).initial(seed=4))
    base = {"dataset_id": "0x" + dataset.hex(), "grant_id": grant, "lora": world.spec.to_json(), "adapter": adapter}
    for ask, code in (
        ({"template": "rows"}, "template_not_allowed"),
        ({"template": "export"}, "template_not_allowed"),
        ({"template": "evaluate", "epsilon": 1.0, "per_example": True}, "bad_job"),
        ({"template": "evaluate", "epsilon": 1.0, "generations": True}, "bad_job"),
        ({"template": "evaluate", "epsilon": 1.0, "exact_match": "per row"}, "bad_job"),
    ):
        r = signed_post(v.url, validator.key, {**base, "job_id": "0x" + keccak(text=str(ask)).hex(), **ask})
        assert r.status_code in (400, 403) and r.json()["error"]["code"] == code, r.text
        assert "Quillon" not in r.text and "teal" not in r.text
    assert _accesses(world, dataset, grant) == []

    # a LoRA run whose rounds cost more ε than the grants hold: refused before anything trains
    participants = _participants(world, [0, 1, 2], epsilon=3.0)  # a round costs ε 5.3
    initial = AdapterModel(world.base_path, world.spec).initial(seed=5)
    with pytest.raises(RoundRefused, match="privacy budget exceeded"):
        run_federated_lora(participants, world.net.accounts[2].key, world.spec, initial, CONFIG)
    for p in participants:
        assert _accesses(world, p.dataset_id, p.grant_id) == []
    info = httpx.get(v.url + "/v1/info").json()
    assert all("rows" not in d or isinstance(d["rows"], int) for d in info["datasets"])


def test_a_coordinator_cannot_ask_a_vault_for_both_shares_of_another(
    lm_world: LmWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = lm_world
    coordinator = world.net.accounts[2]
    participants = _participants(world, [0, 1, 2])
    deliver = flower.HttpGrid._deliver

    def name_a_vault_active_and_dropped(self: flower.HttpGrid, payload: bytes, node: int, stage: str) -> bytes | None:
        if stage == ROUND_UNMASK:
            # every vault is active; the coordinator also calls one of them dropped, to get the
            # share of its key besides that of its mask seed (and so its update alone)
            proto = ProtoMessage()
            proto.ParseFromString(payload)
            message = message_from_proto(proto)
            records = message.content.config_records["secaggplus_configs"]
            victim = next(n for n in records[Key.ACTIVE_NODE_ID_LIST] if n != node)  # type: ignore[union-attr]
            records[Key.DEAD_NODE_ID_LIST] = [victim]
            payload = bytes(message_to_proto(message).SerializeToString())
        return deliver(self, payload, node, stage)

    monkeypatch.setattr(flower.HttpGrid, "_deliver", name_a_vault_active_and_dropped)
    initial = AdapterModel(world.base_path, world.spec).initial(seed=6)
    with pytest.raises(RoundRefused, match="did not complete"):
        run_federated_lora(participants, coordinator.key, world.spec, initial, CONFIG)
    log = (world.root / "vault-0.log").read_text()
    assert "names a node twice (active and dropped)" in log


def test_the_cli_trains_registers_and_evaluates_a_lora_run(lm_world: LmWorld) -> None:
    world = lm_world
    participants = _participants(world, [0, 1, 2])
    out = world.root / "cli-run"
    vaults = [arg for p in participants for arg in ("--vault", f"{p.url},0x{p.dataset_id.hex()},{p.grant_id}")]

    trained = cli(world.net, "federated", "lora", *vaults, "--key", "devnet:2", "--out", str(out), "--base",
                  "allmende:tiny", "--rounds", "1", "--steps", "1", "--noise", "2", "--rank", "2", "--max-tokens", "32",
                  "--register", "--license", "CC-BY-NC-4.0")  # fmt: skip

    assert "round 1 done" in trained and "3 vaults aggregated" in trained and "registered 0x" in trained
    run = json.loads((out / "run.json").read_text())
    new_id = bytes.fromhex(run["model_id"][2:])
    assert new_id == model_id_of(out / "model")
    assert world.net.reader().models.get(new_id).parents == [world.base_id]
    v, dataset = world.net.vaults[1], world.heldout[1]
    grant = world.net.grant(v, world.net.accounts[2].address, "evaluate", [world.base_id], 2.0, dataset)
    said = cli(world.net, "federated", "lora-evaluate", "--vault", v.url, "--dataset", "0x" + dataset.hex(),
               "--grant", str(grant), "--key", "devnet:2", "--run", str(out), "--epsilon", "1",
               "--exact-match")  # fmt: skip
    assert "held-out loss" in said and "on 12 rows" in said and "exact match" in said and "of 12 answers" in said
    assert len(_accesses(world, dataset, grant)) == 1


def _staked_validator(world: LmWorld) -> Contracts:
    """Account 3 staked as a validator in Registry (once per chain, whichever test asks first)."""
    vc = world.net.contracts(world.net.accounts[3])
    if vc.registry.role_of(vc.client.address) != ROLE_VALIDATOR:
        vc.token.approve(vc.registry.address)
        vc.registry.register(ROLE_VALIDATOR, "http://validator.invalid", b"\x03" * 32,
                             vc.params.get("min_validator_stake"))  # fmt: skip
    return vc


def _run_folder(world: LmWorld, tuned: Tuned, name: str) -> Path:
    """The run folder `federated lora` writes, for the tuned fixture's run."""
    out = world.root / name
    shutil.copytree(tuned.folder, out / "model")
    (out / lm_attest.ADAPTER).write_bytes(params_to_bytes(tuned.result.params))
    (out / lm_attest.SPEC).write_text(json.dumps(world.spec.to_json()))
    (out / "run.json").write_text(json.dumps({"model_id": "0x" + tuned.model_id.hex()}))
    return out


class _TamperingProxy(ThreadingHTTPServer):
    """A real HTTP hop between a validator and a vault that forwards everything and rewrites an
    evaluation's mean loss (and the result hash beside it) on the way back."""

    def __init__(self, vault_url: str) -> None:
        vault = vault_url.rstrip("/")

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, r: httpx.Response, body: bytes) -> None:
                self.send_response(r.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                r = httpx.get(vault + self.path)
                self._answer(r, r.content)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower().startswith(("x-allmende", "content-type"))
                }
                r = httpx.post(vault + self.path, content=body, headers=headers, timeout=300)
                answer = r.json()
                if r.status_code == 200:
                    answer["result"]["mean_loss"] = 0.25  # a better loss than the model earned
                    answer["result"]["perplexity"] = round(math.exp(0.25), 4)
                    answer["result_hash"] = "0x" + keccak(canonical(answer["result"])).hex()
                self._answer(r, json.dumps(answer).encode())

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_validator_attests_the_fine_tunes_held_out_loss_on_chain(lm_world: LmWorld, tuned: Tuned) -> None:
    world = lm_world
    vc = _staked_validator(world)
    validator = world.net.accounts[3]
    v, dataset = world.net.vaults[0], world.heldout[0]
    run = _run_folder(world, tuned, "attest-run")
    grant = world.net.grant(v, validator.address, "evaluate", [world.base_id], 6.0, dataset)

    said = cli(world.net, "federated", "lora-attest", "--vault", v.url, "--dataset", "0x" + dataset.hex(),
               "--grant", str(grant), "--run", str(run), "--key", f"devnet:{validator.index}", "--base",
               "allmende:tiny", "--epsilon", "6")  # fmt: skip

    assert "attested model 0x" in said and "heldout_loss" in said
    (attestation,) = [a for a in vc.data.attestations(tuned.model_id) if a.validator == validator.address]
    assert attestation.metric == "heldout_loss"
    # the report the validator published is the one the vault logged for the job, and the value is its loss
    (written,) = run.glob("attestation-*.json")
    record = json.loads(written.read_text())
    report = record["report"]
    lm_attest.check_attestation(vc, attestation, dataset, report)
    assert report["adapter"] == "0x" + adapter_hash(tuned.result.params).hex()
    assert report["model_id"] == "0x" + world.base_id.hex() and report["rows"] == 12
    logged = [a for a in vc.data.accesses(dataset) if a.job_id == attestation.job_id]
    assert logged[0].result_hash == attestation.report_hash and logged[0].epsilon_spent == 6 * MICRO
    # the DP loss (Laplace of scale 10/(6·12) nats) is that of the tuned model on these rows, each
    # row's loss clipped at the vault's --loss-clip of 10 as the vault does (unclipped, one row past
    # 10 moved the exact mean 1.04 nats above the vault's in a shuffled run)
    local = AdapterModel(world.base_path, world.spec)
    local.set(tuned.result.params)
    losses = local.losses([local.encode(r) for r in support_rows(12, seed=100)])
    exact = float(np.mean([min(loss, 10.0) for loss in losses]))
    assert abs(attestation.value_ppm / MICRO - exact) < 1.0, (attestation.value_ppm, exact)

    # anyone holding the attestation against a report with another value, or a value against the
    # published report, finds the mismatch
    with pytest.raises(lm_attest.AttestationRefused, match="does not hash"):
        lm_attest.check_attestation(vc, attestation, dataset, {**report, "mean_loss": 0.25})
    inflated = dataclasses.replace(attestation, value_ppm=attestation.value_ppm // 2)
    with pytest.raises(lm_attest.AttestationRefused, match="is not the report's"):
        lm_attest.check_attestation(vc, inflated, dataset, report)


def test_a_non_validator_a_swapped_model_and_a_tampered_metric_are_not_attested(
    lm_world: LmWorld, tuned: Tuned
) -> None:
    world = lm_world
    vc = _staked_validator(world)
    v, dataset = world.net.vaults[1], world.heldout[1]
    tiny = world.base_path

    # a key that is no validator: refused before the vault evaluates; the chain refuses it too
    coordinator = world.net.accounts[2]
    cc = world.net.contracts(coordinator)
    mine = world.net.grant(v, coordinator.address, "evaluate", [world.base_id], 2.0, dataset)
    run = _run_folder(world, tuned, "attest-by-coordinator")
    with pytest.raises(lm_attest.AttestationRefused, match="is not an active validator"):
        lm_attest.attest_lora(cc, coordinator.key, v.url, dataset, mine, run, tiny, 1.0)
    with pytest.raises(ContractReverted, match="not a validator"):
        cc.data.attest(tuned.model_id, b"\x01" * 32, "heldout_loss", 1, b"\x02" * 32)
    assert world.net.reader().data.get_grant(mine).epsilon_spent == 0

    # a run folder whose adapter is not the one merged into its model: refused before anything is charged
    grant = world.net.grant(v, world.net.accounts[3].address, "evaluate", [world.base_id], 2.0, dataset)
    swapped = _run_folder(world, tuned, "attest-swapped")
    (swapped / lm_attest.ADAPTER).write_bytes(params_to_bytes([p * 0.5 for p in tuned.result.params]))
    with pytest.raises(lm_attest.AttestationRefused, match="is not its base with its adapter merged"):
        lm_attest.attest_lora(vc, world.net.accounts[3].key, v.url, dataset, grant, swapped, tiny, 1.0)
    assert world.net.reader().data.get_grant(grant).epsilon_spent == 0

    # a better loss written into the vault's answer on its way: the chain's access log holds the
    # vault's own report hash, so nothing is attested (the evaluation ran and was charged)
    proxy = _TamperingProxy(v.url)
    try:
        with pytest.raises(lm_attest.AttestationRefused, match="changed on its way"):
            lm_attest.attest_lora(vc, world.net.accounts[3].key, proxy.url, dataset, grant, run, tiny, 1.0)
    finally:
        proxy.shutdown()
    assert world.net.reader().data.get_grant(grant).epsilon_spent == MICRO
    assert not [a for a in vc.data.attestations(tuned.model_id) if a.job_id in
                {x.job_id for x in vc.data.accesses(dataset) if x.grant_id == grant}]  # fmt: skip

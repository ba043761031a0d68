"""The pure rules of federated LoRA: the spec a vault accepts, the SecAgg+ setups and unmasks it
takes part in, the signatures over its keys, text datasets, and DP-SGD's accounting inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eth_account import Account

from allmende.engine import resolve_model
from allmende.testing.support_chat import support_rows, write_rows
from allmende.vault.errors import AccessDenied, BadDataFile
from allmende.vault.lora import AdapterModel, LoraSpec, is_zero_adapter
from allmende.vault.lora_service import LoraRounds, Member, key_digest, sign_keys, signer_of_keys, threshold_for
from allmende.vault.text import is_text_file, load_text

BASE = "0x" + "ab" * 32
GOOD = {"base_model": BASE, "rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"], "max_tokens": 64}


@pytest.mark.parametrize(
    "change",
    [
        {"rank": 0}, {"rank": 65}, {"rank": True}, {"alpha": 0}, {"targets": []}, {"targets": ["lm_head"]},
        {"targets": ["q_proj", "q_proj"]}, {"max_tokens": 4}, {"base_model": "0x12"}, {"extra": 1},
    ],
    ids=["rank-0", "rank-65", "rank-bool", "alpha-0", "no-targets", "lm-head", "twice", "short", "bad-id", "extra"],
)  # fmt: skip
def test_a_vault_refuses_a_lora_spec_out_of_its_bounds(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoraSpec.from_json({**GOOD, **change})


def test_a_lora_spec_round_trips() -> None:
    spec = LoraSpec.from_json(GOOD)
    assert LoraSpec.from_json(json.loads(spec.canonical())) == spec


@pytest.mark.parametrize(("vaults", "threshold"), [(3, 2), (4, 3), (5, 4), (6, 4), (9, 6), (10, 7)])
def test_the_threshold_tolerates_a_third_and_stays_a_strict_majority(vaults: int, threshold: int) -> None:
    assert threshold_for(vaults) == threshold
    assert vaults - threshold_for(vaults) >= vaults // 3 and 2 * threshold_for(vaults) > vaults


def _members(n: int) -> tuple[Member, ...]:
    return tuple(Member(bytes([i]) * 32, i + 1, Account.create().address) for i in range(n))


@pytest.mark.parametrize(
    ("shares", "threshold", "ok"),
    [(3, 2, True), (3, 3, True), (4, 2, False), (2, 2, False), (3, 1, False), (3, 4, False), (4, 3, False)],
    ids=["3-of-2", "3-of-3", "extra-node", "missing-node", "threshold-1", "threshold-over", "4-shares-of-3"],
)
def test_a_vault_takes_part_only_in_a_setup_with_one_share_per_member_and_a_majority(
    shares: int, threshold: int, ok: bool
) -> None:
    members = _members(3)
    if ok:
        LoraRounds.check_setup(members, shares, threshold)
    else:
        with pytest.raises(AccessDenied):
            LoraRounds.check_setup(members, shares, threshold)


@pytest.mark.parametrize(
    ("active", "dead"),
    [([1, 2], [2]), ([1, 1, 2], []), ([2, 3], [1]), ("1", [])],
    ids=["active-and-dropped", "twice", "self-dropped", "not-a-list"],
)
def test_a_vault_refuses_an_unmask_that_would_reveal_both_shares(active: object, dead: object) -> None:
    with pytest.raises(AccessDenied):
        LoraRounds.check_unmask(active, dead, own_node=1)


def test_an_honest_unmask_passes() -> None:
    LoraRounds.check_unmask([1, 2], [3], own_node=1)


def test_key_signatures_name_their_vault_and_nothing_else() -> None:
    vault = Account.create()
    digest = key_digest(31337, "0x" + "11" * 20, 5, 2, 1000, b"pk1", b"pk2")
    signature = sign_keys(bytes(vault.key), digest)
    assert signer_of_keys(digest, signature) == vault.address
    other = key_digest(31337, "0x" + "11" * 20, 5, 3, 1000, b"pk1", b"pk2")  # another round
    assert signer_of_keys(other, signature) != vault.address
    assert signer_of_keys(digest, "0x1234") == ""


def test_text_datasets_load_chat_and_text_and_refuse_the_rest(tmp_path: Path) -> None:
    chat = load_text(write_rows(tmp_path / "chat.jsonl", support_rows(5, seed=1)))
    assert chat.kind == "chat" and len(chat.rows) == 5
    assert chat.describe() == {"dataset_id": "0x" + chat.dataset_id.hex(), "name": "chat", "rows": 5, "kind": "chat"}
    assert is_text_file(tmp_path / "chat.jsonl")
    (tmp_path / "table.jsonl").write_text('{"f0": 1.0, "label": 0}\n')
    assert not is_text_file(tmp_path / "table.jsonl")
    bad = [
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}',
        '{"text": "a"}\n{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        '{"text": ""}',
        '{"text": "a", "secret": 1}',
    ]
    for i, content in enumerate(bad):
        path = tmp_path / f"bad-{i}.jsonl"
        path.write_text(content + "\n")
        with pytest.raises(BadDataFile):
            load_text(path)


def test_the_initial_adapter_is_the_base_model_and_training_moves_it() -> None:
    tiny = resolve_model("allmende:tiny")
    model = AdapterModel(tiny.path, LoraSpec(tiny.model_id, 2, 4.0, ("q_proj", "v_proj"), 24))
    initial = model.initial(seed=0)
    assert is_zero_adapter(model, initial)
    examples = [model.encode(r) for r in support_rows(4, seed=2)]
    assert all(int((e.labels != -100).sum()) > 0 for e in examples)  # the answer survives the cut
    trained = model.dp_train(initial, examples, steps=1, lr=1.0, clip=1.0, noise=1.0)
    assert not is_zero_adapter(model, trained)
    assert [a.shape for a in trained] == [a.shape for a in initial]
    assert all(np.all(np.isfinite(a)) for a in trained)


def test_exact_match_is_what_greedy_decoding_of_the_prompt_produces() -> None:
    base = resolve_model("allmende:tiny", progress=False)
    spec = LoraSpec(base.model_id, 4, 8.0, ("q_proj", "v_proj", "o_proj", "down_proj"), max_tokens=64)
    model = AdapterModel(base.path, spec)
    learned = {"messages": [{"role": "user", "content": "Ring colour?"}, {"role": "assistant", "content": "teal"}]}
    other = {"messages": [{"role": "user", "content": "Ring colour?"}, {"role": "assistant", "content": "amber"}]}
    rows = [learned, other, {"text": "teal"}]
    examples = [model.encode(r) for r in rows]
    zero = model.initial(seed=0)
    model.set(zero)
    assert model.exact_matches(rows, examples) == [False, False, False]
    # an adapter trained (no noise) on the first row until greedy decoding reproduces its answer
    model.set(model.dp_train(zero, examples[:1], 300, 2.0, 100.0, 0.0))
    assert model.exact_matches(rows, examples) == [True, False, False]  # a text row is no question/answer pair
    prompt = model.tokenizer.apply_chat_template(learned["messages"][:-1], add_generation_prompt=True, tokenize=False)
    head = model.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    answer = examples[0].input_ids[0, head.shape[1] :]
    with torch.no_grad():
        drawn = model.model.generate(input_ids=head, max_new_tokens=len(answer), do_sample=False)
    assert drawn[0, head.shape[1] :].tolist() == answer.tolist()  # the same answer, drawn token by token

"""Answers with several choices (`n > 1`): a validator checks every choice, not only the
first, against a receipt signed the way a provider signs it (the JSON of the texts, the
proofs joined in order, the tokens of all choices)."""

from __future__ import annotations

import asyncio
import json

import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import prompt_of
from allmende.api.protocol import input_hash, sampling_params
from allmende.core import Domain, Receipt, SignedReceipt, sign_receipt
from allmende.engine import collect, collect_choices, load_engine
from allmende.engine.base import choice_params
from allmende.engine.proofs import commit
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.weights import skip_last_layer
from allmende.validator.answers import Choice, check_answer, choices_of, output_bytes, proof_bytes
from allmende.validator.evidence import Evidence
from allmende.validator.service import Found

KEY = b"\x0a" * 32
DOMAIN = Domain(31337, "0x" + "cd" * 20)
BODY = {
    "messages": [{"role": "user", "content": "Write a short paragraph about tides."}],
    "max_tokens": 24,
    "temperature": 0.8,
    "n": 3,
}
REQUEST_ID = b"\x33" * 32


@pytest.fixture(scope="module")
def tiny() -> CausalLMEngine:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, CausalLMEngine)
    return engine


def signed(engine: CausalLMEngine, prompt: list[int], choices: list[Choice]) -> SignedReceipt:
    """The receipt a provider signs for these choices (provider/service.py)."""
    receipt = Receipt(
        request_id=REQUEST_ID,
        model_id=engine.model_id,
        provider=Account.from_key(KEY).address,
        input_hash=input_hash("chat", BODY),
        output_hash=keccak(output_bytes(choices)),
        proof_hash=keccak(proof_bytes(choices)),
        tokens_in=len(prompt),
        tokens_out=sum(len(c.token_ids) for c in choices),
        amount=1,
        timestamp=1,
    )
    return sign_receipt(receipt, DOMAIN, KEY)


@pytest.fixture(scope="module")
def honest(tiny: CausalLMEngine) -> tuple[list[int], list[Choice]]:
    prompt = tiny.prompt_ids(prompt_of("chat", BODY))
    params = sampling_params(BODY, REQUEST_ID)
    gens = asyncio.run(collect_choices(tiny.generate_choices(prompt, params, 3), len(prompt), 3))
    return prompt, [Choice(g.token_ids, g.proof, g.text) for g in gens]


def test_every_choice_of_an_honest_answer_passes(tiny: CausalLMEngine, honest: tuple[list[int], list[Choice]]) -> None:
    prompt, choices = honest

    verdict = check_answer(tiny, BODY, prompt, choices, signed(tiny, prompt, choices))

    assert verdict.ok, verdict.reason
    assert len({tuple(c.token_ids) for c in choices}) == 3  # three different draws (seed + i)


def test_a_provider_that_cheats_only_in_choice_2_is_caught(
    tiny: CausalLMEngine, honest: tuple[list[int], list[Choice]]
) -> None:
    prompt, choices = honest
    params = sampling_params(BODY, REQUEST_ID)
    cheap = skip_last_layer(load_engine("allmende:tiny"))  # type: ignore[arg-type]
    assert isinstance(cheap, CausalLMEngine)
    gen = asyncio.run(collect(cheap.generate(prompt, choice_params(params, 1)), len(prompt)))
    hidden, _ = tiny.prefill(prompt + gen.token_ids)  # its proof recomputed honestly by one prefill
    forged = Choice(gen.token_ids, commit(hidden[len(prompt) - 1 : len(prompt) - 1 + len(gen.token_ids)]), gen.text)
    cheated = [choices[0], forged, choices[2]]
    receipt = signed(tiny, prompt, cheated)

    verdict = check_answer(tiny, BODY, prompt, cheated, receipt)

    assert not verdict.ok and verdict.bad_tokens > 0
    assert "choice 2:" in verdict.reason and "choice 1:" not in verdict.reason and "choice 3:" not in verdict.reason


def test_a_juror_rechecks_every_choice_from_the_case_evidence(
    tiny: CausalLMEngine, honest: tuple[list[int], list[Choice]]
) -> None:
    prompt, choices = honest
    receipt = signed(tiny, prompt, choices)
    found = Found(BODY, prompt, choices[0].token_ids, choices[0].proof, choices[0].text, receipt, choices)
    evidence = Evidence(
        kind="chat",
        body=found.request,
        model_id="0x" + tiny.model_id.hex(),
        prompt_ids=prompt,
        token_ids=found.token_ids,
        text=found.text,
        proof="0x" + found.proof.hex(),
        receipt=receipt.to_json(),
        reason="",
        choices=[c.to_json() for c in choices],
    )

    again = Evidence.from_bytes(evidence.to_bytes())

    assert again.backs_receipt()  # the receipt binds the JSON of all texts
    assert choices_of({"choices": again.choices}) == choices
    swapped = [choices[0].to_json(), choices[2].to_json(), choices[1].to_json()]
    assert not Evidence(**{**json.loads(evidence.to_bytes()), "choices": swapped}).backs_receipt()

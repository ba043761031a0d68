"""A validator's and a juror's check of answers to requests with sampling parameters: the
parameters come from the request body the receipt's inputHash binds (api.canonical), so an
honest answer passes `check_answer` and a juror's `recheck` of the case evidence, and a
provider that served the request with a parameter dropped is caught by both, even with its
own honest proof and a correctly signed receipt."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import canonical
from allmende.api.protocol import input_hash
from allmende.core import Domain, Receipt, SignedReceipt, sign_receipt
from allmende.engine import collect, load_engine
from allmende.engine.base import SamplingParams
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.harness import without_parameters
from allmende.validator.answers import Choice, check_answer, output_bytes, proof_bytes, recheck
from allmende.validator.evidence import Evidence

KEY = b"\x0b" * 32
DOMAIN = Domain(31337, "0x" + "cd" * 20)
REQUEST_ID = b"\x44" * 32
MESSAGES = [{"role": "user", "content": "Write a short paragraph about tides."}]
BODIES: dict[str, dict[str, Any]] = {  # no seed: the draw's seed is bound to the request id
    "presence_penalty": {"temperature": 0.8, "presence_penalty": 1.5},
    "frequency_penalty": {"temperature": 0.8, "frequency_penalty": 1.2},
    "logit_bias": {"temperature": 0.8, "logit_bias": {str(t): -100 for t in range(60, 140)}},
    "top_k": {"temperature": 1.3, "top_k": 3},
    "min_p": {"temperature": 1.3, "min_p": 0.25},
    "all at once, greedy": {
        "temperature": 0,
        "presence_penalty": 1.0,
        "frequency_penalty": 0.5,
        "logit_bias": {str(t): -100 for t in range(60, 140)},
        "top_k": 8,
        "min_p": 0.1,
    },
}


@pytest.fixture(scope="module")
def tiny() -> CausalLMEngine:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, CausalLMEngine)
    return engine


def body_of(name: str) -> dict[str, Any]:
    return {"messages": MESSAGES, "max_tokens": 48, **BODIES[name]}


def answer(engine: CausalLMEngine, body: dict[str, Any], params: SamplingParams) -> tuple[list[int], Choice]:
    prompt = engine.prompt_ids(canonical("chat", body, REQUEST_ID).generation[0])
    gen = asyncio.run(collect(engine.generate(prompt, params), len(prompt)))
    return prompt, Choice(gen.token_ids, gen.proof, gen.text)


def signed(engine: CausalLMEngine, body: dict[str, Any], prompt: list[int], choice: Choice) -> SignedReceipt:
    """The receipt a provider signs (provider/service.py): over the body it was sent."""
    receipt = Receipt(
        request_id=REQUEST_ID,
        model_id=engine.model_id,
        provider=Account.from_key(KEY).address,
        input_hash=input_hash("chat", body),
        output_hash=keccak(output_bytes([choice])),
        proof_hash=keccak(proof_bytes([choice])),
        tokens_in=len(prompt),
        tokens_out=len(choice.token_ids),
        amount=1,
        timestamp=1,
    )
    return sign_receipt(receipt, DOMAIN, KEY)


def evidence_of(engine: CausalLMEngine, body: dict[str, Any], prompt: list[int], choice: Choice) -> Evidence:
    return Evidence(
        kind="chat",
        body=body,
        model_id="0x" + engine.model_id.hex(),
        prompt_ids=prompt,
        token_ids=choice.token_ids,
        text=choice.text,
        proof="0x" + choice.proof.hex(),
        receipt=signed(engine, body, prompt, choice).to_json(),
        reason="",
    )


@pytest.mark.parametrize("name", list(BODIES))
def test_an_honest_answer_passes_and_one_served_without_the_parameter_is_caught_by_validator_and_juror(
    tiny: CausalLMEngine, name: str
) -> None:
    body = body_of(name)
    params = canonical("chat", body, REQUEST_ID).generation[1]  # what the provider serves
    prompt, honest = answer(tiny, body, params)
    _, dropped = answer(tiny, body, without_parameters(params))
    assert honest.token_ids != dropped.token_ids  # the parameter changes this answer

    assert check_answer(tiny, body, prompt, [honest], signed(tiny, body, prompt, honest)).ok
    juror = recheck(tiny, Evidence.from_bytes(evidence_of(tiny, body, prompt, honest).to_bytes()))
    assert juror is not None and juror.ok, juror

    verdict = check_answer(tiny, body, prompt, [dropped], signed(tiny, body, prompt, dropped))
    assert not verdict.ok and verdict.bad_tokens > 0 and "not the request's draw" in verdict.reason
    juror = recheck(tiny, Evidence.from_bytes(evidence_of(tiny, body, prompt, dropped).to_bytes()))
    assert juror is not None and not juror.ok and juror.bad_tokens > 0


def test_evidence_that_drops_the_parameter_from_the_body_backs_no_receipt(tiny: CausalLMEngine) -> None:
    """A reporter (or a provider defending itself) cannot change which parameters the answer
    is judged under: the receipt's inputHash binds the body the provider was sent."""
    body = body_of("top_k")
    params = canonical("chat", body, REQUEST_ID).generation[1]
    prompt, honest = answer(tiny, body, params)
    evidence = evidence_of(tiny, body, prompt, honest)

    stripped = dataclasses.replace(evidence, body={k: v for k, v in body.items() if k != "top_k"})

    assert evidence.backs_receipt() and not stripped.backs_receipt()
    assert recheck(tiny, stripped) is None  # proves nothing against the provider

"""Completions end where they must (issue 29): a provider that keeps drawing after EOS, past
a requested stop string or past a grammar's end, up to `max_tokens`, bills for tokens that
were never the answer. The checker replays the engine's own rule for where a completion
ends and refuses every token after it, and the receipt's token counts must match the
evidence exactly. Checked with the tiny model through the same path a juror takes
(`check_answer` on the canonical request of the body the receipt binds)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import canonical
from allmende.api.protocol import input_hash, sampling_params
from allmende.core import Domain, Receipt, SignedReceipt, sign_receipt
from allmende.engine import collect, load_engine
from allmende.engine.base import SamplingParams
from allmende.engine.proofs import commit
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.harness import generate_many
from allmende.validator.answers import Choice, check_answer
from allmende.validator.checker import judge, text_of

KEY = b"\x0b" * 32
DOMAIN = Domain(31337, "0x" + "ef" * 20)
REQUEST_ID = b"\x29" * 32
QUESTION = [{"role": "user", "content": "Write a short paragraph about tides."}]


@pytest.fixture(scope="module")
def tiny() -> CausalLMEngine:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, CausalLMEngine)
    return engine


def proof_of(engine: CausalLMEngine, prompt: list[int], output: list[int]) -> bytes:
    """The proof an honest prefill of the claimed model gives these tokens."""
    hidden, _ = engine.prefill(prompt + output)
    return commit(hidden[len(prompt) - 1 : len(prompt) - 1 + len(output)]) if output else b""


def answer(engine: CausalLMEngine, body: dict[str, Any], output: list[int], text: str | None = None) -> Any:
    """check_answer of `output` for `body`, with the receipt the provider signs for exactly
    what it returns (its token count, its text: by default the text the engine returns)."""
    prompt, params = canonical("chat", body, REQUEST_ID).generation
    prompt_ids = engine.prompt_ids(prompt)
    if text is None:
        text = text_of(engine.decode(output), params.stop)
    choice = Choice(output, proof_of(engine, prompt_ids, output), text)
    receipt = Receipt(
        request_id=REQUEST_ID,
        model_id=engine.model_id,
        provider=Account.from_key(KEY).address,
        input_hash=input_hash("chat", body),
        output_hash=keccak(text.encode()),
        proof_hash=keccak(choice.proof),
        tokens_in=len(prompt_ids),
        tokens_out=len(output),
        amount=1,
        timestamp=1,
    )
    signed: SignedReceipt = sign_receipt(receipt, DOMAIN, KEY)
    return check_answer(engine, body, prompt_ids, [choice], signed)


def draw(engine: CausalLMEngine, body: dict[str, Any], **change: Any) -> list[int]:
    """What the engine draws for `body` (with `change` to its sampling: how a cheat draws)."""
    prompt, params = canonical("chat", body, REQUEST_ID).generation
    ids = engine.prompt_ids(prompt)
    return asyncio.run(collect(engine.generate(ids, dataclasses.replace(params, **change)), len(ids))).token_ids


def plain(text: str) -> bool:
    """Text that is all whole characters (the tiny model's tokens are bytes)."""
    return bool(text) and "\ufffd" not in text


def early_eos_body(engine: CausalLMEngine, max_tokens: int = 32) -> dict[str, Any]:
    """A sampled request whose honest answer ends with EOS before `max_tokens`: the first of
    32 seeds, drawn in one batch."""
    bodies = [{"messages": QUESTION, "max_tokens": max_tokens, "temperature": 0.8, "seed": s} for s in range(32)]
    requests = []
    for body in bodies:
        prompt, params = canonical("chat", body, REQUEST_ID).generation
        requests.append((engine.prompt_ids(prompt), dataclasses.replace(params, ignore_eos=True)))
    for body, out in zip(bodies, generate_many(engine, requests), strict=True):
        if any(t in engine.eos_ids for t in out[:-2]):
            return body
    raise AssertionError("no seed of 32 ends early: the tiny model changed")


def test_drawing_on_past_eos_up_to_max_tokens_is_refused(tiny: CausalLMEngine) -> None:
    body = early_eos_body(tiny)
    honest = draw(tiny, body)
    overrun = draw(tiny, body, ignore_eos=True)  # every token the request's draw, EOS included
    assert len(honest) < len(overrun) == body["max_tokens"]

    assert answer(tiny, body, honest).ok
    verdict = answer(tiny, body, overrun)

    assert not verdict.ok and verdict.bad_tokens == 0  # every token is a legitimate draw ...
    assert f"EOS drawn as token {len(honest) + 1}" in verdict.reason  # ... after the end


def test_ignoring_a_stop_string_is_refused_even_with_the_honest_text(tiny: CausalLMEngine) -> None:
    body: dict[str, Any] = {"messages": QUESTION, "max_tokens": 32, "temperature": 0.7, "seed": 5}
    unstopped = draw(tiny, body)
    stop = next(p for p in (tiny.decode([t]) for t in unstopped[3:]) if plain(p))
    body["stop"] = [stop]
    honest = draw(tiny, body)
    assert len(honest) < len(unstopped)
    cut_text = text_of(tiny.decode(unstopped), (stop,))  # what the user sees: the honest text

    assert answer(tiny, body, honest).ok
    verdict = answer(tiny, body, unstopped, cut_text)  # billed for every token, receipt consistent

    assert not verdict.ok and verdict.bad_tokens == 0
    assert f"a stop string completed by token {len(honest)}, then {len(unstopped) - len(honest)}" in verdict.reason


def test_a_stop_string_split_over_tokens_ends_the_completion_where_the_engine_ends_it(
    tiny: CausalLMEngine,
) -> None:
    body: dict[str, Any] = {"messages": QUESTION, "max_tokens": 32, "temperature": 0.7, "seed": 6}
    unstopped = draw(tiny, body)
    readable = [k for k in range(2, len(unstopped) - 3) if all(plain(tiny.decode([t])) for t in unstopped[k : k + 3])]
    stop = tiny.decode(unstopped[readable[0] : readable[0] + 3])  # three tokens' text
    body["stop"] = [stop]
    honest = draw(tiny, body)

    assert answer(tiny, body, honest).ok
    assert not answer(tiny, body, honest[:-1]).ok  # cut before the stop string is complete
    assert not answer(tiny, body, unstopped[: len(honest) + 1]).ok  # one token past it


def test_a_receipt_must_count_exactly_the_evidences_tokens(tiny: CausalLMEngine) -> None:
    body: dict[str, Any] = {"messages": QUESTION, "max_tokens": 8, "temperature": 0}
    output = draw(tiny, body)
    prompt_ids = tiny.prompt_ids(canonical("chat", body).generation[0])
    text = tiny.decode(output)
    choice = Choice(output, proof_of(tiny, prompt_ids, output), text)

    def receipt(tokens_in: int, tokens_out: int) -> SignedReceipt:
        r = Receipt(REQUEST_ID, tiny.model_id, Account.from_key(KEY).address, input_hash("chat", body),
                    keccak(text.encode()), keccak(choice.proof), tokens_in, tokens_out, 1, 1)  # fmt: skip
        return sign_receipt(r, DOMAIN, KEY)

    assert check_answer(tiny, body, prompt_ids, [choice], receipt(len(prompt_ids), len(output))).ok
    more_out = check_answer(tiny, body, prompt_ids, [choice], receipt(len(prompt_ids), len(output) + 1))
    more_in = check_answer(tiny, body, prompt_ids, [choice], receipt(len(prompt_ids) + 1, len(output)))
    assert not more_out.ok and "token count" in more_out.reason
    assert not more_in.ok and "tokensIn" in more_in.reason


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
STRUCTURED = {
    "messages": [{"role": "user", "content": "Answer in JSON."}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
    "max_tokens": 40,
    "temperature": 0.8,
    "seed": 9,
}


@pytest.mark.parametrize("after", ["eos", "text"], ids=["EOS-repeated", "unconstrained-text"])
def test_drawing_on_past_the_grammars_end_is_refused(tiny: CausalLMEngine, after: str) -> None:
    params: SamplingParams = sampling_params(STRUCTURED)
    prompt = tiny.prompt_ids(canonical("chat", STRUCTURED).generation[0])
    honest = asyncio.run(collect(tiny.generate(prompt, params), len(prompt))).token_ids
    if after == "eos":  # the grammar allows only EOS once complete: drawn again and again
        overrun = asyncio.run(
            collect(tiny.generate(prompt, dataclasses.replace(params, ignore_eos=True)), len(prompt))
        ).token_ids
    else:
        overrun = honest + tiny.encode_text(" and more")
    assert len(overrun) > len(honest)

    assert judge(tiny, prompt, honest, proof_of(tiny, prompt, honest), params).ok
    verdict = judge(tiny, prompt, overrun, proof_of(tiny, prompt, overrun), params)

    assert not verdict.ok and "runs past its end" in verdict.reason


def test_an_honest_completion_without_max_tokens_that_runs_to_the_end_of_the_context_passes() -> None:
    """OpenAI's default (no max_tokens): until the answer or the context ends. The checker
    fits the request to the context as the serving engine did; before, `length` had to mean
    1,048,576 tokens and every such honest answer that ran to the context's end was refused."""
    import asyncio

    from allmende.api.canonical import canonical
    from allmende.api.protocol import input_hash
    from allmende.core import Receipt, sign_receipt
    from allmende.engine import collect, load_engine
    from allmende.engine.base import Kind
    from allmende.engine.transformers_lm import CausalLMEngine
    from allmende.validator.answers import Choice, check_answer, output_bytes, proof_bytes

    tiny = load_engine("allmende:tiny")
    assert isinstance(tiny, CausalLMEngine)
    kind: Kind = "chat"
    body = {"messages": [{"role": "user", "content": "Go on and on. " * 20}], "temperature": 0}
    request_id = b"\x51" * 32
    prompt, params = canonical(kind, body, request_id).generation
    ids = tiny.prompt_ids(prompt)
    gen = asyncio.run(collect(tiny.generate(ids, tiny.fitted(ids, params)), len(ids)))
    choices = [Choice(gen.token_ids, gen.proof, gen.text)]
    key = b"\x0c" * 32
    from eth_account import Account
    from eth_utils import keccak

    from allmende.core import Domain

    receipt = Receipt(
        request_id=request_id, model_id=tiny.model_id, provider=Account.from_key(key).address,
        input_hash=input_hash(kind, body), output_hash=keccak(output_bytes(choices)),
        proof_hash=keccak(proof_bytes(choices)), tokens_in=len(ids), tokens_out=len(gen.token_ids), amount=1,
        timestamp=1,
    )  # fmt: skip
    signed = sign_receipt(receipt, Domain(31337, "0x" + "ab" * 20), key)

    verdict = check_answer(tiny, body, ids, choices, signed)

    assert verdict.ok, verdict.reason
    assert gen.finish_reason == "stop" or len(ids) + len(gen.token_ids) == tiny.context_length

"""Every common sampling parameter (presence and frequency penalties, logit_bias, top_k,
min_p) in both engines: applied inside the verifiable draw while the requests share one
continuous batch, so the reference checker (transformers, as validators run it) passes the
honest answers, and the same requests served with the parameter dropped fail it. And greedy
(temperature 0) alone and in a batch: where the two part, only at a near-tie."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from allmende.api.canonical import canonical
from allmende.engine import DEFAULT_CHAT_MODEL, EngineError, Generation, collect, load_engine
from allmende.engine.base import SamplingParams
from allmende.engine.generative import GenerativeEngine
from allmende.testing.harness import QUESTIONS
from allmende.validator.checker import MARGIN, judge

QUESTION = "Name three rivers in Europe and say one thing about each."
SAMPLED = {"temperature": 0.9, "seed": 21, "max_tokens": 48}
# each request's sampling parameter (logit_bias: filled in per engine, see `requests_for`)
SETTINGS: dict[str, dict[str, Any]] = {
    "presence_penalty": {**SAMPLED, "presence_penalty": 2.0},
    "frequency_penalty": {**SAMPLED, "frequency_penalty": 2.0},
    "logit_bias": {**SAMPLED},
    "greedy logit_bias": {"temperature": 0, "max_tokens": 48},
    "top_k": {**SAMPLED, "temperature": 1.8, "top_k": 3},
    "min_p": {**SAMPLED, "temperature": 1.8, "min_p": 0.2},
}


@pytest.fixture(scope="module")
def tiny() -> GenerativeEngine:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, GenerativeEngine)
    return engine


@pytest.fixture(scope="module")
def llama() -> GenerativeEngine:
    # the F16 copy (the default, named: with the Q4_1 file's native weights the ignored
    # presence-penalty sample below is not caught by the reference check, issue #34's report)
    engine = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=8, engine="llamacpp", weights="f16")
    assert isinstance(engine, GenerativeEngine)
    return engine


def body_of(setting: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": QUESTION}], **setting}


def served(engine: GenerativeEngine, prompt: list[int], params: list[SamplingParams]) -> list[Generation]:
    """The requests' answers, drawn together in the engine's continuous batch."""

    async def run() -> list[Generation]:
        return list(await asyncio.gather(*(collect(engine.generate(prompt, p), len(prompt)) for p in params)))

    return asyncio.run(run())


def served_many(engine: GenerativeEngine, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
    """One answer to each prompt, all drawn together in the engine's continuous batch."""

    async def run() -> list[Generation]:
        return list(await asyncio.gather(*(collect(engine.generate(p, params), len(p)) for p in prompts)))

    return asyncio.run(run())


def requests_for(engine: GenerativeEngine, prompt: list[int]) -> dict[str, SamplingParams]:
    """The canonical sampling of each setting (as a provider builds it from the body); the
    logit_bias requests ban the first tokens the model answers without them."""
    plain = served(engine, prompt, [canonical("chat", body_of(SETTINGS["logit_bias"])).generation[1]])[0]
    bans = {str(t): -100 for t in plain.token_ids[:4]}
    bodies = {name: body_of(s) for name, s in SETTINGS.items()}
    bodies["logit_bias"]["logit_bias"] = bans
    bodies["greedy logit_bias"]["logit_bias"] = {**bans, str(plain.token_ids[5]): 5}
    return {name: canonical("chat", body).generation[1] for name, body in bodies.items()}


def dropped(params: SamplingParams) -> SamplingParams:
    """What a provider that ignores the request's sampling parameters draws with."""
    return dataclasses.replace(params, presence_penalty=0.0, frequency_penalty=0.0, logit_bias=(), top_k=0, min_p=0.0)


def check_each_parameter(engine: GenerativeEngine, reference: GenerativeEngine) -> None:
    """Every setting served in one batch passes `reference`'s check; served with its
    parameter dropped, it changes the answer and fails the check."""
    prompt = engine.prompt_ids(canonical("chat", body_of({})).generation[0])
    asked = requests_for(engine, prompt)

    honest = served(engine, prompt, list(asked.values()))
    ignored = served(engine, prompt, [dropped(p) for p in asked.values()])

    for (name, params), good, bad in zip(asked.items(), honest, ignored, strict=True):
        verdict = judge(reference, prompt, good.token_ids, good.proof, params)
        assert verdict.ok, (name, verdict.reason)
        assert good.token_ids != bad.token_ids, name  # the parameter changed the answer ...
        caught = judge(reference, prompt, bad.token_ids, bad.proof, params)
        assert not caught.ok and caught.bad_tokens > 0, name  # ... and ignoring it is caught
    banned = {t for t, b in asked["logit_bias"].logit_bias if b == -100}
    assert not banned & set(honest[2].token_ids) and banned & set(ignored[2].token_ids)


def test_the_transformers_engine_draws_each_parameter_and_ignoring_one_is_caught(tiny: GenerativeEngine) -> None:
    check_each_parameter(tiny, tiny)


def test_the_llamacpp_engine_draws_each_parameter_and_the_transformers_reference_catches_one_ignored(
    llama: GenerativeEngine, smollm2: GenerativeEngine
) -> None:
    check_each_parameter(llama, smollm2)  # validators check with transformers on the same GGUF


def test_a_bias_on_a_token_outside_the_vocabulary_is_refused_before_anything_runs(tiny: GenerativeEngine) -> None:
    prompt = tiny.prompt_ids(canonical("chat", body_of({})).generation[0])
    params = SamplingParams(max_tokens=4, logit_bias=((tiny.vocab_size, 1.0),))
    with pytest.raises(EngineError) as info:
        tiny.generate(prompt, params)
    assert info.value.param == "logit_bias"


def test_greedy_in_a_batch_parts_from_greedy_alone_only_at_near_ties_and_always_verifies(
    llama: GenerativeEngine, smollm2: GenerativeEngine
) -> None:
    """temperature 0 is not batch-invariant on llama.cpp (its kernels depend on the batch's
    shape: README, "Greedy alone and in a batch"): the documented exception, tested. Where a
    batched greedy answer parts from the same prompt's answer alone, the two tokens were a
    near-tie of the row (within the checker's greedy tolerance), and every batched answer
    passes the reference check."""
    params = SamplingParams(max_tokens=24, temperature=0.0)
    bodies = [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS[:6]]
    prompts = [llama.prompt_ids(canonical("chat", body).generation[0]) for body in bodies]
    alone = [served(llama, p, [params])[0] for p in prompts]
    batched = served_many(llama, prompts, params)

    for prompt, one, many in zip(prompts, alone, batched, strict=True):
        assert judge(smollm2, prompt, many.token_ids, many.proof, params).ok
        if one.token_ids == many.token_ids:
            continue
        k = next(i for i, (a, b) in enumerate(zip(one.token_ids, many.token_ids, strict=False)) if a != b)
        row = smollm2.prefill(prompt + one.token_ids[:k])[1][-1]
        gap = abs(float(row[one.token_ids[k]] - row[many.token_ids[k]]))
        assert gap <= MARGIN * float(row.abs().max()), (k, gap)  # a near-tie, not another answer

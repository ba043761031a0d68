"""Continuous batching on allmende:tiny: sequences join and leave one shared batch, and each
one's output does not depend on who else is in it."""

from __future__ import annotations

import asyncio

import pytest

from allmende.api.canonical import prompt_of
from allmende.engine import EngineError, Generation, SamplingParams, collect, load_engine
from allmende.engine.base import choice_params
from allmende.engine.sampling import IncrementalDetokenizer
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.checker import judge

QUESTIONS = ["Wie geht es?", "Was ist eine Allmende?", "Name three rivers.", "x", "Erkläre Zinseszins bitte genau."]
MIXED = [
    SamplingParams(max_tokens=24, temperature=0.0),
    SamplingParams(max_tokens=7, temperature=1.0, seed=3),
    SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, seed=11),
    SamplingParams(max_tokens=1, temperature=0.0),
    SamplingParams(max_tokens=33, temperature=1.2, seed=5, ignore_eos=True),
]


def fresh(max_concurrency: int = 16) -> CausalLMEngine:
    engine = load_engine("allmende:tiny", max_concurrency)
    assert isinstance(engine, CausalLMEngine)
    return engine


def prompt(engine: CausalLMEngine, question: str) -> list[int]:
    return engine.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": question}]}))


def alone(engine: CausalLMEngine, ids: list[int], params: SamplingParams) -> Generation:
    return asyncio.run(collect(engine.generate(ids, params), len(ids)))


def test_each_sequence_decodes_the_same_alone_and_among_others_joining_and_leaving() -> None:
    engine = fresh()
    prompts = [prompt(engine, q) for q in QUESTIONS]
    with_stop = SamplingParams(max_tokens=40, temperature=0.0, stop=(alone(engine, prompts[0], MIXED[0]).text[3:5],))
    cases = [*zip(prompts, MIXED, strict=True), (prompts[0], with_stop)]
    expected = [alone(engine, ids, params) for ids, params in cases]

    async def staggered() -> list[Generation]:
        async def one(k: int, ids: list[int], params: SamplingParams) -> Generation:
            for _ in range(k):  # join k event-loop turns later
                await asyncio.sleep(0.001)
            return await collect(engine.generate(ids, params), len(ids))

        return list(await asyncio.gather(*(one(k, ids, p) for k, (ids, p) in enumerate(cases))))

    together = asyncio.run(staggered())

    assert [g.token_ids for g in together] == [g.token_ids for g in expected]
    assert [(g.text, g.finish_reason) for g in together] == [(g.text, g.finish_reason) for g in expected]
    assert expected[-1].finish_reason == "stop" and with_stop.stop[0] not in expected[-1].text
    assert engine.scheduler.largest_batch >= 2


def test_batched_generation_passes_verification() -> None:
    engine = fresh()
    prompts = [prompt(engine, q) for q in QUESTIONS]

    async def together() -> list[Generation]:
        return list(
            await asyncio.gather(*(collect(engine.generate(i, p), len(i)) for i, p in zip(prompts, MIXED, strict=True)))
        )

    for ids, params, gen in zip(prompts, MIXED, asyncio.run(together()), strict=True):
        verdict = judge(engine, ids, gen.token_ids, gen.proof, params)
        assert verdict.ok, verdict.reason


def test_n_choices_share_one_prefill_and_each_matches_its_own_request() -> None:
    engine = fresh()
    ids = prompt(engine, QUESTIONS[1])
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=40)

    async def choices() -> dict[int, list[int]]:
        out: dict[int, list[int]] = {0: [], 1: [], 2: []}
        async for index, event in engine.generate_choices(ids, params, 3):
            if event.token_id is not None:
                out[index].append(event.token_id)
        return out

    got = asyncio.run(choices())

    assert engine.scheduler.prefilled_prompts == 1  # the prompt was prefilled once for all three
    assert engine.scheduler.largest_batch == 3
    singles = [alone(engine, ids, choice_params(params, i)).token_ids for i in range(3)]
    assert [got[i] for i in range(3)] == singles
    assert len({tuple(t) for t in singles}) == 3  # each choice draws from its own seed


def test_too_many_choices_is_a_typed_error() -> None:
    engine = fresh()
    with pytest.raises(EngineError, match="n must be"):
        engine.generate_choices(prompt(engine, "x"), SamplingParams(), 17)


def test_a_cancelled_stream_frees_its_slot_at_once() -> None:
    engine = fresh(max_concurrency=1)
    ids = prompt(engine, QUESTIONS[0])
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    short = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)

    async def main() -> tuple[int, int, Generation]:
        first = engine.generate(ids, long)
        await anext(first)
        await anext(first)  # the long generation holds the only slot
        second = asyncio.create_task(collect(engine.generate(ids, short), len(ids)))
        while engine.scheduler.waiting == 0:
            await asyncio.sleep(0.001)
        waiting_before = engine.scheduler.waiting
        await first.aclose()  # the client goes away
        return waiting_before, engine.scheduler.steps, await second

    waiting_before, _, second = asyncio.run(main())

    assert waiting_before == 1
    assert second.completion_tokens == 10
    assert engine.scheduler.steps < 400  # the cancelled sequence stopped long before its 400 tokens
    assert engine.scheduler.active == 0 and engine.scheduler.waiting == 0


def test_a_cancelled_waiting_request_leaves_the_queue_at_once() -> None:
    engine = fresh(max_concurrency=1)
    ids = prompt(engine, QUESTIONS[0])

    async def main() -> int:
        first = engine.generate(ids, SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True))
        await anext(first)
        queued = engine.generate(ids, SamplingParams(max_tokens=5))
        task = asyncio.create_task(anext(queued))
        while engine.scheduler.waiting == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queued.aclose()
        left = engine.scheduler.waiting
        await first.aclose()
        return left

    assert asyncio.run(main()) == 0


def test_out_of_vocabulary_prompt_ids_are_refused_before_they_reach_the_batch() -> None:
    engine = fresh()
    with pytest.raises(EngineError, match="token ids"):
        engine.generate([1, 2, 10_000], SamplingParams())
    with pytest.raises(EngineError, match="empty"):
        engine.generate([], SamplingParams())
    assert alone(engine, prompt(engine, "x"), SamplingParams(max_tokens=3, ignore_eos=True)).completion_tokens == 3


def test_a_failed_forward_pass_fails_its_sequences_and_the_next_request_is_served() -> None:
    engine = fresh()
    ids = prompt(engine, "x")
    real_model = engine.scheduler.model

    def broken(**kwargs: object) -> object:
        raise RuntimeError("device lost")

    engine.scheduler.model = broken
    with pytest.raises(RuntimeError, match="device lost"):
        alone(engine, ids, SamplingParams(max_tokens=3))
    engine.scheduler.model = real_model
    assert alone(engine, ids, SamplingParams(max_tokens=3, ignore_eos=True)).completion_tokens == 3


@pytest.mark.parametrize(
    "pieces",
    [["Grü", "ße"], ["a", " b", " c"], ["€", "€"]],
    ids=["umlaut", "spaces", "three-byte-chars"],
)
def test_incremental_detokenizer_adds_up_to_the_full_decode(pieces: list[str]) -> None:
    engine = fresh()
    ids = engine.encode_text("".join(pieces))
    detok = IncrementalDetokenizer(engine.decode)
    streamed = [detok.push(i) for i in ids]
    streamed.append(detok.flush())
    assert "".join(streamed) == engine.decode(ids) == "".join(pieces)
    assert all("\ufffd" not in piece for piece in streamed)  # broken characters are held back, not sent

"""The llama.cpp engine on the default chat model. Needs llama-cpp-python, which `make install`
does not build (it compiles llama.cpp from source): these tests run with `make test-llamacpp`
(tests/engine/conftest.py leaves this file out of the plain suite)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import pytest
import torch

from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, collect, load_engine, resolve_model
from allmende.engine.llamacpp import LlamaCppEngine
from allmende.protocol import sampling_params
from allmende.testing.harness import QUESTIONS
from allmende.validator.checker import judge, token_check
from tests.engine.test_grammar import SCHEMA


@pytest.fixture(scope="module")
def llama() -> LlamaCppEngine:
    engine = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=4, engine="llamacpp")
    assert isinstance(engine, LlamaCppEngine)
    return engine


def chat(engine: LlamaCppEngine, i: int) -> list[int]:
    return engine.prompt_ids("chat", {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]})


def test_the_model_id_is_the_gguf_content_address_of_both_engines(llama: LlamaCppEngine) -> None:
    assert llama.model_id == resolve_model(DEFAULT_CHAT_MODEL).gguf_id


def test_concurrent_requests_share_one_llama_decode_per_step(llama: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    steps = llama.scheduler.steps

    async def run() -> list[int]:
        done = await asyncio.gather(*(collect(llama.generate(chat(llama, i), params), 0) for i in range(4)))
        return [g.completion_tokens for g in done]

    assert asyncio.run(run()) == [8, 8, 8, 8]
    assert llama.scheduler.largest_batch == 4
    assert llama.scheduler.steps - steps <= 8 + 3  # 4 × 8 tokens in about 8 passes, not 32


def test_a_seeded_sequence_inside_a_batch_draws_by_the_protocol_rule(llama: LlamaCppEngine) -> None:
    # llama.cpp's kernels depend on the batch's shape, so a sequence's tokens alone and inside a
    # batch may differ; each must still be the request's seeded draw from the model's logits.
    params = SamplingParams(max_tokens=12, temperature=0.9, seed=7)
    prompt = chat(llama, 0)

    async def batched() -> list[int]:
        others = [collect(llama.generate(chat(llama, i), SamplingParams(max_tokens=12, seed=i)), 0) for i in (1, 2, 3)]
        mine, *_ = await asyncio.gather(collect(llama.generate(prompt, params), 0), *others)
        return mine.token_ids

    tokens = asyncio.run(batched())
    _, logits = llama.prefill(prompt + tokens)
    assert token_check(logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)], tokens, params) == 0


def test_a_stop_string_ends_the_completion_before_it(llama: LlamaCppEngine) -> None:
    free = asyncio.run(collect(llama.generate(chat(llama, 0), SamplingParams(max_tokens=24, temperature=0.0)), 0))
    stop = free.text[10:13]
    assert stop.strip()
    stopped = asyncio.run(
        collect(llama.generate(chat(llama, 0), SamplingParams(max_tokens=24, temperature=0.0, stop=(stop,))), 0)
    )
    assert stopped.finish_reason == "stop"
    # the text ends where the stop string begins, less any part of it already streamed
    # (`Sequence` streams a token's text before a later token completes a stop string)
    assert free.text.startswith(stopped.text)
    assert free.text.index(stop) <= len(stopped.text) < free.text.index(stop) + len(stop)
    assert stopped.completion_tokens < free.completion_tokens


def test_a_client_that_goes_away_frees_its_sequence_for_the_next(llama: LlamaCppEngine) -> None:
    async def leave_early() -> None:
        stream = llama.generate(chat(llama, 1), SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
        async with contextlib.aclosing(stream):
            async for _ in stream:
                break

    for _ in range(6):  # more than the 4 sequence ids the engine has
        asyncio.run(leave_early())
    done = asyncio.run(collect(llama.generate(chat(llama, 2), SamplingParams(max_tokens=4, temperature=0.0)), 0))
    assert done.completion_tokens == 4


def test_n_choices_share_one_prefill(llama: LlamaCppEngine) -> None:
    prefilled = llama.scheduler.prefilled_prompts

    async def run() -> list[list[int]]:
        choices: dict[int, list[int]] = {0: [], 1: [], 2: []}
        async for index, event in llama.generate_choices(chat(llama, 3), SamplingParams(max_tokens=6, seed=5), 3):
            if event.token_id is not None:
                choices[index].append(event.token_id)
        return list(choices.values())

    choices = asyncio.run(run())
    assert llama.scheduler.prefilled_prompts - prefilled == 1
    assert all(len(c) == 6 for c in choices)
    assert len({tuple(c) for c in choices}) > 1  # each choice its own seed


def test_structured_output_draws_under_the_grammar_masks_the_checker_recomputes(llama: LlamaCppEngine) -> None:
    body = {
        "messages": [{"role": "user", "content": "Is the sky green? Answer in JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
        "max_tokens": 40,
        "temperature": 0.8,
        "seed": 9,
    }
    params = sampling_params(body)
    ids = llama.prompt_ids("chat", body)

    done = asyncio.run(collect(llama.generate(ids, params), len(ids)))
    free = asyncio.run(collect(llama.generate(ids, dataclasses.replace(params, grammar=None)), len(ids)))

    assert done.finish_reason == "stop"
    value = json.loads(done.text)
    assert set(value) == {"ok", "colour"} and value["colour"] in ("red", "green")
    assert judge(llama, ids, done.token_ids, done.proof, params).bad_tokens == 0
    # the same request without its grammar is not a draw under the grammar's masks
    assert judge(llama, ids, free.token_ids, free.proof, params).bad_tokens > 0


def test_logprobs_come_from_the_rows_drawn_from_and_do_not_change_the_draw(llama: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=10, temperature=0.9, seed=4, ignore_eos=True)
    ids = chat(llama, 5)

    plain = asyncio.run(collect(llama.generate(ids, params), len(ids)))
    scored = asyncio.run(collect(llama.generate(ids, dataclasses.replace(params, logprobs=3)), len(ids)))

    assert scored.token_ids == plain.token_ids and plain.logprobs is None
    assert scored.logprobs is not None and len(scored.logprobs) == len(scored.token_ids)
    _, logits = llama.prefill(ids + scored.token_ids)
    expected = torch.log_softmax(logits[len(ids) - 1 : -1].float(), dim=-1)
    for row, token, entry in zip(expected, scored.token_ids, scored.logprobs, strict=True):
        # a one-token decode and a prefill are different llama.cpp kernels: close, not equal
        assert abs(float(row[token]) - float(entry["logprob"])) < 0.05  # type: ignore[arg-type]
        top = entry["top_logprobs"]
        assert isinstance(top, list) and len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)

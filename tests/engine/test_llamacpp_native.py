"""The llama.cpp engine on the default chat model, through llama-cpp-python (`make install`
builds it; `make test-llamacpp` runs this file alone)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from allmende.api.canonical import prompt_of
from allmende.api.protocol import sampling_params
from allmende.engine import DEFAULT_CHAT_MODEL, Engine, SamplingParams, collect, load_engine, resolve_model
from allmende.engine.base import EngineError
from allmende.engine.llamacpp import LlamaContext, LlamaCppEngine
from allmende.engine.sequence import Sequence
from allmende.testing.harness import QUESTIONS
from allmende.validator.checker import judge, token_check
from tests.engine.test_grammar import SCHEMA


@pytest.fixture(scope="module")
def llama() -> LlamaCppEngine:
    """The default model in "mixed" weights: both llama.cpp contexts, so every test here runs on
    the 4-bit file (lone requests) and on the F16 copy (crowds); `f16`, the default, is one of
    them (the next fixture)."""
    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    return LlamaCppEngine(
        DEFAULT_CHAT_MODEL, resolved.gguf, resolved.path, resolved.gguf_id, max_concurrency=4, weights="mixed"
    )


@pytest.fixture
def reference(smollm2: Engine) -> Engine:
    """The transformers engine on the same GGUF, what validators check with (`judge` reads
    its prefill): the session's, not one loaded per test."""
    return smollm2


def test_the_default_engine_serves_the_f16_copy_and_the_provider_options_reach_it() -> None:
    engine = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1, engine="llamacpp")
    assert isinstance(engine, LlamaCppEngine) and engine.weights == "f16" and list(engine.contexts) == ["f16"]
    # what `allmende provider --engine llamacpp --llamacpp-weights native --llamacpp-threads 1` asks for
    chosen = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1, engine="llamacpp", threads=1, weights="native")
    assert isinstance(chosen, LlamaCppEngine) and list(chosen.contexts) == ["native"] and chosen.threads == 1


def chat(engine: LlamaCppEngine, i: int) -> list[int]:
    return engine.prompt_ids(
        prompt_of("chat", {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]})
    )


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
    ids = llama.prompt_ids(prompt_of("chat", body))

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

    # each prefilled whole: a prompt taken from the cache gets its first row from a one-token
    # decode, whose rounding may change a sampled draw (within the checker's band)
    llama.scheduler.drop_parked()
    plain = asyncio.run(collect(llama.generate(ids, params), len(ids)))
    llama.scheduler.drop_parked()
    scored = asyncio.run(collect(llama.generate(ids, dataclasses.replace(params, logprobs=3)), len(ids)))

    assert scored.token_ids == plain.token_ids and plain.logprobs is None
    assert scored.logprobs is not None and len(scored.logprobs) == len(scored.token_ids)
    # a lone request runs on the native weights ("mixed", see the next test): check against those
    native = LlamaContext(llama.lib, llama.models["native"], 2048, 1, llama.threads)
    try:
        logits, _ = native.decode([(t, 0, p, True) for p, t in enumerate(ids + scored.token_ids)])
    finally:
        native.close()
    expected = torch.log_softmax(torch.from_numpy(logits)[len(ids) - 1 : -1].float(), dim=-1)
    for row, token, entry in zip(expected, scored.token_ids, scored.logprobs, strict=True):
        # a one-token decode and a prefill are different llama.cpp kernels: close, not equal
        assert abs(float(row[token]) - float(entry["logprob"])) < 0.05  # type: ignore[arg-type]
        top = entry["top_logprobs"]
        assert isinstance(top, list) and len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)


def test_a_lone_request_runs_on_the_4_bit_file_a_crowd_on_the_f16_copy_and_both_pass_the_reference_check(
    llama: LlamaCppEngine,
    reference: Engine,
) -> None:
    """Served "mixed", a lone request runs on the Q4_1 file (the fastest single-sequence
    decode), requests that come in a crowd on its F16 copy (tiled GEMM kernels for batches;
    the default, "f16", uses only the copy). The copy is the same weights, so what either
    generates, greedy and seeded, passes the transformers reference check under the original
    file's model id."""
    from allmende.engine.llamacpp import MIXED_BATCH, expanded_f16, gguf_shape

    assert llama.weights == "mixed"
    copy = expanded_f16(llama.lib, llama.gguf, llama.model_id)
    assert gguf_shape(copy) == (1, gguf_shape(llama.gguf)[1])  # F16, every weight
    assert reference.model_id == llama.model_id
    joined = dict(llama.scheduler.joined)
    params = [SamplingParams(max_tokens=16, temperature=0.0), SamplingParams(max_tokens=16, seed=3)]

    lone = [asyncio.run(collect(llama.generate(chat(llama, i), p), 0)) for i, p in enumerate(params)]
    assert llama.scheduler.joined["native"] - joined["native"] == 2 and llama.scheduler.joined["f16"] == joined["f16"]

    async def crowd() -> list[Any]:
        runs = [collect(llama.generate(chat(llama, i), params[i % 2]), 0) for i in range(MIXED_BATCH)]
        return list(await asyncio.gather(*runs))

    crowded = asyncio.run(crowd())
    # the first of a crowd may start before the others arrive, alone, on the native context
    gained = {k: llama.scheduler.joined[k] - joined[k] for k in joined}
    assert gained["native"] + gained["f16"] == 2 + MIXED_BATCH and gained["f16"] >= 1
    assert [llama.scheduler._route(n) for n in range(1, MIXED_BATCH + 2)] == ["native"] * (MIXED_BATCH - 1) + [
        "f16"
    ] * 2
    for i, done in [*enumerate(lone), *enumerate(crowded)]:
        verdict = judge(reference, chat(llama, i), done.token_ids, done.proof, params[i % 2])
        assert verdict.ok, verdict.reason


def test_a_prompt_sharing_a_running_prompts_prefix_prefills_only_the_rest_and_passes_the_check(
    llama: LlamaCppEngine,
    reference: Engine,
) -> None:
    """Chat prompts share the template's system prompt: a request joining while another runs
    takes those cache cells from it instead of prefilling them again; what it generates is
    still the model's answer to its whole prompt (the reference check over prompt + output)."""
    from allmende.engine.llamacpp import SHARED_PREFIX_MIN

    first, second = chat(llama, 0), chat(llama, 1)
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert common >= SHARED_PREFIX_MIN  # SmolLM2's template: the same system prompt
    llama.scheduler.drop_parked()  # earlier tests' finished prompts would give a longer prefix
    shared = llama.scheduler.shared_prefix_tokens
    params = SamplingParams(max_tokens=12, seed=11)

    async def overlapping() -> Any:
        running = llama.generate(first, SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True))
        async with contextlib.aclosing(running):
            await anext(running)  # the first request is running (its prompt is in the cache)
            joined = await collect(llama.generate(second, params), 0)
            async for _ in running:  # still running when the second finished: it shared the cells
                break
            else:
                raise AssertionError("the first request ended before the second")
        return joined

    done = asyncio.run(overlapping())
    assert llama.scheduler.shared_prefix_tokens - shared == common
    verdict = judge(reference, second, done.token_ids, done.proof, params)
    assert verdict.ok, verdict.reason


def test_requests_arriving_together_prefill_their_common_prefix_once_and_pass_the_check(reference: Engine) -> None:
    """Several chats at once: each but the first takes the system prompt's cells from another
    (a running one, or one joining in the same step, which prefills the prefix first). On one
    context (F16 weights), so that the count does not depend on how the crowd trickles in."""
    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    llama = LlamaCppEngine("f16", resolved.gguf, resolved.path, resolved.gguf_id, max_concurrency=8, weights="f16")
    prompts = [chat(llama, i) for i in range(6)]
    common = min(next(i for i, (a, b) in enumerate(zip(prompts[0], p, strict=False)) if a != b) for p in prompts[1:])
    shared = llama.scheduler.shared_prefix_tokens
    params = [SamplingParams(max_tokens=10, temperature=0.0), SamplingParams(max_tokens=10, seed=5)]

    async def together() -> list[Any]:
        runs = [collect(llama.generate(p, params[i % 2]), 0) for i, p in enumerate(prompts)]
        return list(await asyncio.gather(*runs))

    answers = asyncio.run(together())
    assert llama.scheduler.shared_prefix_tokens - shared >= (len(prompts) - 1) * common
    for i, done in enumerate(answers):
        verdict = judge(reference, prompts[i], done.token_ids, done.proof, params[i % 2])
        assert verdict.ok, (i, verdict.reason)


def test_a_prompt_that_extends_another_joining_in_the_same_step_takes_its_cells_and_both_pass_the_check(
    llama: LlamaCppEngine,
    reference: Engine,
) -> None:
    """Two prompts join in one step, the second the whole first and more (a conversation and
    its next turn): the first prefills all of its prompt but the last token in the step's first
    pass (no outputs), the second copies those cells and prefills only its rest, and the first's
    last token gives its first draw in the step's pass. Both answers pass the reference check."""
    first = chat(llama, 0)
    second = first + llama.encode_text("Sure. And one more thing: keep it short.")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    events: dict[int, list[Any]] = {0: [], 1: []}
    finished = threading.Semaphore(0)

    def emitter(i: int) -> Any:
        def emit(item: Any) -> None:
            events[i].append(item)
            if item is None or isinstance(item, BaseException):
                finished.release()

        return emit

    sequences = [
        Sequence(list(p), params, emitter(i), llama.decode, llama.eos_ids, llama.device)
        for i, p in enumerate((first, second))
    ]
    shared = llama.scheduler.shared_prefix_tokens
    llama.scheduler.drop_parked()
    llama.scheduler.submit(sequences)  # one call: both are waiting at the same step boundary
    for _ in sequences:
        assert finished.acquire(timeout=300)
    for i in events:
        assert not any(isinstance(e, BaseException) for e in events[i]), events[i]
    assert llama.scheduler.shared_prefix_tokens - shared == len(first) - 1
    for i, prompt in enumerate((first, second)):
        tokens = [e.token_id for e in events[i] if e is not None and e.token_id is not None]
        proof = events[i][-2].proof
        assert len(tokens) == params.max_tokens
        verdict = judge(reference, prompt, tokens, proof, params)
        assert verdict.ok, (i, verdict.reason)


def test_the_first_pass_computes_no_outputs_and_leaves_the_cells_a_single_pass_makes(llama: LlamaCppEngine) -> None:
    """`fill` runs a prompt's body with embeddings off (llama.cpp computes no head for it) and
    turns them back on: the last token's row after it is the row of one pass over the prompt,
    up to the rounding of another batch shape, and the same greedy token."""
    context = LlamaContext(llama.lib, llama.models["f16"], 512, 2, 1)
    try:
        prompt = chat(llama, 1)
        whole_logits, whole_hidden = context.decode([(t, 0, p, p == len(prompt) - 1) for p, t in enumerate(prompt)])
        context.fill([(t, 1, p, False) for p, t in enumerate(prompt[:-1])])
        logits, hidden = context.decode([(prompt[-1], 1, len(prompt) - 1, True)])
        assert int(logits[0].argmax()) == int(whole_logits[0].argmax())
        assert torch.allclose(torch.from_numpy(hidden), torch.from_numpy(whole_hidden), rtol=1e-2, atol=1e-2)
        with pytest.raises(EngineError):
            context.fill([(prompt[0], 1, 0, True)])
    finally:
        context.close()


def test_a_steps_borrowed_rows_are_each_sequences_own_row(llama: LlamaCppEngine) -> None:
    """A step of several sequences reads its rows as views of llama.cpp's output buffers
    (`borrow`): row i is the row llama.cpp maps to batch entry i (`llama_get_logits_ith`)."""
    lib = llama.lib
    context = LlamaContext(lib, llama.models["f16"], 1024, 3, 2)
    try:
        prompts = [chat(llama, i) for i in range(3)]
        for seq, prompt in enumerate(prompts):
            context.fill([(t, seq, p, False) for p, t in enumerate(prompt[:-1])])
        step = [(prompt[-1], seq, len(prompt) - 1, True) for seq, prompt in enumerate(prompts)]
        logits, hidden = context.decode(step, borrow=True)
        assert logits.shape == (3, context.n_vocab) and hidden.shape == (3, context.n_embd)
        for i in range(3):
            own = np.ctypeslib.as_array(lib.llama_get_logits_ith(context.ctx, i), shape=(context.n_vocab,))
            assert np.array_equal(logits[i], own)
            own = np.ctypeslib.as_array(lib.llama_get_embeddings_ith(context.ctx, i), shape=(context.n_embd,))
            assert np.array_equal(hidden[i], own)
        assert len({int(row.argmax()) for row in logits}) > 1 or not np.array_equal(logits[0], logits[1])
    finally:
        context.close()


def test_a_gguf_without_one_block_served_under_the_models_id_fails_the_reference_check(
    tmp_path: Path, reference: Engine
) -> None:
    """The cheap copy a provider could make of the GGUF it claims (one of 30 transformer blocks
    left out, everything else byte for byte): it still answers sensibly, and its proofs fail."""
    from allmende.testing.engines import without_layer

    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    cheap = without_layer(resolved.gguf, 15, tmp_path / "skip.gguf")
    cheat = LlamaCppEngine("cheat", cheap, resolved.path, resolved.gguf_id, max_concurrency=1, weights="native")
    params = SamplingParams(max_tokens=24, temperature=0.0)
    prompt = chat(cheat, 0)
    done = asyncio.run(collect(cheat.generate(prompt, params), 0))
    assert done.text.strip()  # it still answers
    verdict = judge(reference, prompt, done.token_ids, done.proof, params)
    assert not verdict.ok


def test_another_model_of_the_same_architecture_and_tokenizer_fails_the_reference_check(
    tmp_path: Path, reference: Engine
) -> None:
    """ "Another model" under the claimed id: SmolLM2's architecture and tokenizer, every weight
    moved by a tenth of its tensor's spread (about what 4-bit quantization moves it). It loads,
    answers and streams like the claimed model; its proofs fail against the claimed weights."""
    from allmende.testing.engines import SIBLING_SPREAD, sibling

    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    other = sibling(resolved.gguf, SIBLING_SPREAD, 7, tmp_path / "sibling.gguf")
    cheat = LlamaCppEngine("cheat", other, resolved.path, resolved.gguf_id, max_concurrency=1, weights="native")
    params = SamplingParams(max_tokens=24, temperature=0.0)
    for i in range(2):
        prompt = chat(cheat, i)
        done = asyncio.run(collect(cheat.generate(prompt, params), 0))
        assert done.token_ids
        verdict = judge(reference, prompt, done.token_ids, done.proof, params)
        assert not verdict.ok and "proof" in verdict.reason, verdict.reason


def test_a_prompt_that_starts_like_a_finished_requests_reuses_its_cells_reports_them_and_passes_the_check(
    reference: Engine,
) -> None:
    """Prompt caching across requests: an agent sends the same long system prompt every step;
    the second step takes the first's cells (prompt and answer) and prefills only the rest,
    reports them as `cached_tokens`, and its completion is still the model's answer to the
    whole prompt (the reference check prefills all of it)."""
    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    llama = LlamaCppEngine("f16", resolved.gguf, resolved.path, resolved.gguf_id, max_concurrency=4, weights="f16")
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and exactly." for i in range(40))
    step1 = [{"role": "system", "content": system}, {"role": "user", "content": "What is the capital of France?"}]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    first_ids = llama.prompt_ids(prompt_of("chat", {"messages": step1}))
    first = asyncio.run(collect(llama.generate(first_ids, params), len(first_ids)))
    assert first.cached_tokens == 0
    step2 = [*step1, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    second_ids = llama.prompt_ids(prompt_of("chat", {"messages": step2}))
    cached = llama.scheduler.cached_prompt_tokens

    second = asyncio.run(collect(llama.generate(second_ids, params), len(second_ids)))

    assert second.cached_tokens >= len(first_ids) - 1  # at least the whole first prompt came from the cache
    assert llama.scheduler.cached_prompt_tokens - cached == second.cached_tokens
    verdict = judge(reference, second_ids, second.token_ids, second.proof, params)
    assert verdict.ok, verdict.reason
    llama.scheduler.drop_parked()
    cold = asyncio.run(collect(llama.generate(second_ids, params), len(second_ids)))
    assert cold.cached_tokens == 0 and cold.text == second.text  # greedy: the same answer without the cache


# what an OpenMP runtime loaded after `import allmende` reads (torch loads one; llama.cpp's ggml
# shares it), shown by libgomp itself; the system's copy, as torch's has no omp_display_env
GOMP_SETTINGS = """
import ctypes, allmende
ctypes.CDLL("/lib/x86_64-linux-gnu/libgomp.so.1").omp_display_env(1)
"""


@pytest.mark.parametrize(
    ("asked", "spins"),
    [({}, "300000"), ({"GOMP_SPINCOUNT": "1000"}, "1000"), ({"OMP_WAIT_POLICY": "passive"}, "0")],
)
def test_a_node_keeps_libgomps_barrier_spin_unless_its_environment_asks_otherwise(
    asked: dict[str, str], spins: str
) -> None:
    """A node's OpenMP threads (ggml's, at the barrier after each operation of a llama.cpp
    graph; torch's) wait as libgomp does by default, 300,000 turns of spin before they sleep:
    importing allmende sets nothing. A short spin (GOMP_SPINCOUNT=1000, as the test suite runs:
    tests/__init__.py) saves CPU on cores other work keeps busy, and made the gateway path at
    one client slower with the machine to itself; an operator's setting is kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(asked)
    shown = subprocess.run(
        [sys.executable, "-c", GOMP_SETTINGS], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stderr
    assert f"GOMP_SPINCOUNT = '{spins}'" in shown, shown


def test_the_suite_runs_openmp_with_a_short_spin() -> None:
    """tests/__init__.py, imported before torch loads libgomp: the workers and the nodes they
    start (which inherit it) spin 1,000 turns, unless whoever runs the suite set a policy."""
    assert os.environ.get("GOMP_SPINCOUNT") == "1000" or "OMP_WAIT_POLICY" in os.environ


def test_a_lone_token_decodes_on_half_the_threads_a_batch_on_all(llama: LlamaCppEngine) -> None:
    context = next(iter(llama.contexts.values()))
    lib, threads = llama.lib, llama.threads
    try:
        llama.set_threads(4)
        assert (lib.llama_n_threads(context.ctx), lib.llama_n_threads_batch(context.ctx)) == (2, 4)
        llama.set_threads(1)
        assert (lib.llama_n_threads(context.ctx), lib.llama_n_threads_batch(context.ctx)) == (1, 1)
    finally:
        llama.set_threads(threads)
    fresh = LlamaContext(lib, llama.model, 256, 1, 2)
    try:
        assert (lib.llama_n_threads(fresh.ctx), lib.llama_n_threads_batch(fresh.ctx)) == (1, 2)
    finally:
        fresh.close()

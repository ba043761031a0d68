"""Continuous batching across sessions in the stage engine: calls of different sessions (other
KV caches, other positions, prompts and decode steps) run in one forward pass per step, and
every session gets what it gets alone: the whole model's tokens, its hidden rows within
rounding, commitments that pass the stage's audit."""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from allmende.core.stages import StageLayout
from allmende.engine import Engine, SamplingParams
from allmende.engine.base import ChatPrompt, EngineError
from allmende.engine.sampling import sample_token
from allmende.engine.stages import StageEngine, StageSessionLost, verify_stage
from allmende.payer.stages import StageOffer, StageRouter, StageSession
from allmende.provider.stage_app import create_stage_app
from tests.stages.conftest import whole_tokens as cached_whole_tokens

TOKENS = 12
GREEDY = SamplingParams(max_tokens=TOKENS, temperature=0.0)
_names = itertools.count()
QUESTIONS = ("What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Write a haiku about rain.")


@pytest.fixture(scope="module")
def prompts(whole: Engine) -> list[list[int]]:
    return [whole.prompt_ids(ChatPrompt.of([{"role": "user", "content": q}])) for q in QUESTIONS]


def whole_tokens(whole: Engine, prompt: list[int]) -> list[int]:
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
    return cached_whole_tokens(whole, prompt, params)


def run_together(stages: list[StageEngine], prompts: list[list[int]], joins: list[int]) -> list[dict[str, object]]:
    """Generate every prompt through the chain, session k joining at step `joins[k]`: each
    step's calls of all running sessions are queued on a stage together (`submit_many`), so
    the stage batches prompts with prompts and decode steps with decode steps, sessions
    at different positions."""
    names = [f"together{next(_names)}" for _ in prompts]
    runs: list[dict[str, object]] = [
        {"tokens": [], "hidden": [[] for _ in stages], "inputs": [[] for _ in stages], "proofs": [[] for _ in stages]}
        for _ in prompts
    ]
    position = [0] * len(prompts)
    rows = [torch.tensor(p) for p in prompts]
    for step in range(max(joins) + TOKENS):
        running = [k for k in range(len(prompts)) if joins[k] <= step < joins[k] + TOKENS]
        sent = {k: rows[k] for k in running}
        data = dict(sent)
        for index, stage in enumerate(stages):
            outputs = stage.forward_many([(names[k], position[k], data[k]) for k in running])
            for k, out in zip(running, outputs, strict=True):
                run = runs[k]
                run["inputs"][index].append(data[k])  # type: ignore[index]
                run["proofs"][index].append((position[k], data[k].shape[0], out.proof))  # type: ignore[index]
                run["hidden"][index].append(out.hidden)  # type: ignore[index]
                data[k] = out.hidden
                if out.logits is not None:
                    token = sample_token(out.logits, GREEDY, 0, step - joins[k])
                    run["tokens"].append(token)  # type: ignore[attr-defined]
                    rows[k] = torch.tensor([token])
        for k in running:
            position[k] += int(sent[k].shape[0])
    for stage in stages:
        for name in names:
            stage.close(name)
    return runs


def test_sessions_batched_in_one_stage_get_what_they_get_alone(
    whole: Engine, stages3: list[StageEngine], prompts: list[list[int]]
) -> None:
    before = [(s.steps, s.batched_steps) for s in stages3]
    alone = [run_together(stages3, [p], [0])[0] for p in prompts]
    alone_steps = [s.steps for s in stages3]
    assert [s.batched_steps for s in stages3] == [b for _, b in before]  # one session: never batched

    together = run_together(stages3, prompts, joins=[0, 0, 3, 5])  # two join later, mid-generation

    for index, stage in enumerate(stages3):
        # 4 prompts in 3 passes (two together at step 0, then one each as they join), decode
        # steps of 2, 3 and 4 sessions: far fewer passes than calls, most of them batched
        calls = 4 * TOKENS
        passes = stage.steps - alone_steps[index]
        assert passes < calls - 2 * TOKENS, (index, passes)
        assert stage.batched_steps - before[index][1] >= TOKENS, index
        assert stage.largest_batch >= 4
    for k, prompt in enumerate(prompts):
        assert together[k]["tokens"] == alone[k]["tokens"] == whole_tokens(whole, prompt)
        for index in range(3):
            got = torch.cat(together[k]["hidden"][index])  # type: ignore[index]
            expected = torch.cat(alone[k]["hidden"][index])  # type: ignore[index]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
            inputs = torch.cat(together[k]["inputs"][index])  # type: ignore[index]
            result = verify_stage(stages3[index], inputs, together[k]["proofs"][index])  # type: ignore[index,arg-type]
            assert result.ok, result.reason


def test_a_call_the_stage_cannot_take_fails_alone_in_its_batch(
    stages3: list[StageEngine], prompts: list[list[int]]
) -> None:
    """A lost session's call queued with others fails with its own error; the others are served."""
    first = stages3[0]
    batched = first.batched_steps
    futures = first.submit_many(
        [
            ("batch-ok-a", 0, torch.tensor(prompts[0])),
            ("batch-lost", 7, torch.tensor([5])),
            ("batch-ok-b", 0, torch.tensor(prompts[1])),
        ]
    )

    with pytest.raises(StageSessionLost):
        futures[1].result()
    outputs = [futures[0].result(), futures[2].result()]
    with pytest.raises(EngineError):  # a wrong input is refused at once, in the caller's thread
        first.submit_many([("batch-ok-c", 0, torch.tensor(prompts[0])), ("batch-bad", 0, torch.tensor([-1]))])

    assert [o.hidden.shape[0] for o in outputs] == [len(prompts[0]), len(prompts[1])]
    assert first.batched_steps == batched + 1  # the two good prompts shared a pass
    assert not first.holds("batch-lost") and not first.holds("batch-ok-c") and not first.holds("batch-bad")
    first.close("batch-ok-a")
    first.close("batch-ok-b")


def test_concurrent_http_sessions_share_the_stages_passes(
    whole: Engine, layout3: StageLayout, stages3: list[StageEngine], prompts: list[list[int]]
) -> None:
    """Sessions driven concurrently by the router over the stage wire API (each call in its own
    request, nothing coordinating them) are batched by the stages and get the whole model's tokens."""
    before = [s.batched_steps for s in stages3]
    mounts = {f"http://stage{i}": httpx.ASGITransport(create_stage_app(e)) for i, e in enumerate(stages3)}
    offers = [StageOffer(spec, f"http://stage{i}") for i, spec in enumerate(layout3.stages)]

    async def main() -> list[list[int]]:
        async with httpx.AsyncClient(mounts=mounts) as client:  # type: ignore[arg-type]

            async def one(prompt: list[int]) -> list[int]:
                session = StageSession(StageRouter(layout3, offers), client)
                tokens = [t async for t in session.generate(prompt, TOKENS)]
                await session.close()
                return tokens

            return await asyncio.gather(*(one(p) for p in prompts))

    got = asyncio.run(main())

    assert got == [whole_tokens(whole, p) for p in prompts]
    assert all(s.batched_steps > b for s, b in zip(stages3, before, strict=True))


def test_calls_in_flight_are_not_capped_by_the_event_loops_threads(
    whole: Engine, layout3: StageLayout, stages3: list[StageEngine], prompts: list[list[int]]
) -> None:
    """The stage route awaits its call's pass without holding a worker thread: with 2 threads
    in the loop's pool, 6 concurrent sessions still reach a stage together (a batch of more than
    2; a route that waits in a thread would hold at most 2 calls in flight)."""
    for stage in stages3:
        stage.largest_batch = 0  # this test's batches only
    mounts = {f"http://stage{i}": httpx.ASGITransport(create_stage_app(e)) for i, e in enumerate(stages3)}
    offers = [StageOffer(spec, f"http://stage{i}") for i, spec in enumerate(layout3.stages)]
    six = [*prompts, prompts[0][:-1], prompts[1][:-2]]

    async def main() -> list[list[int]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
        async with httpx.AsyncClient(mounts=mounts) as client:  # type: ignore[arg-type]

            async def one(prompt: list[int]) -> list[int]:
                session = StageSession(StageRouter(layout3, offers), client)
                tokens = [t async for t in session.generate(prompt, 4)]
                await session.close()
                return tokens

            return await asyncio.gather(*(one(p) for p in six))

    got = asyncio.run(main())

    assert [len(t) for t in got] == [4] * 6
    assert got[:4] == [whole_tokens(whole, p)[:4] for p in prompts]
    assert max(s.largest_batch for s in stages3) > 2

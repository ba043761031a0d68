"""Token events reach their event loop in order, one wake per scheduler step and loop,
however many streams the step advanced (engine/handoff.py)."""

from __future__ import annotations

import asyncio
import threading

from allmende.api.canonical import prompt_of
from allmende.engine import SamplingParams, collect, load_engine
from allmende.engine.handoff import handoff_for, one_wake_per_step


def test_a_step_of_many_streams_wakes_the_loop_once_and_keeps_each_streams_order() -> None:
    async def scenario() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        handoff = handoff_for(loop)
        queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(10)]

        def scheduler_thread() -> None:
            for step in range(3):
                with one_wake_per_step():
                    for token in range(5):
                        for queue in queues:
                            handoff.put(queue, step * 5 + token)

        before = handoff.deliveries
        worker = threading.Thread(target=scheduler_thread)
        worker.start()
        received = [[await queue.get() for _ in range(15)] for queue in queues]
        worker.join()
        return received, handoff.deliveries - before

    received, deliveries = asyncio.run(scenario())
    assert all(stream == list(range(15)) for stream in received)
    assert deliveries <= 3  # 150 events in 3 steps: at most one wake per step


def test_an_event_outside_a_step_is_delivered_at_once() -> None:
    async def scenario() -> str:
        queue: asyncio.Queue[str] = asyncio.Queue()
        handoff = handoff_for(asyncio.get_running_loop())
        threading.Thread(target=handoff.put, args=(queue, "failed")).start()
        return await asyncio.wait_for(queue.get(), 30)

    assert asyncio.run(scenario()) == "failed"


def test_events_for_a_closed_loop_are_dropped_without_an_error() -> None:
    loop = asyncio.new_event_loop()
    handoff = handoff_for(loop)
    loop.close()
    queue: asyncio.Queue[int] = asyncio.Queue()
    with one_wake_per_step():
        handoff.put(queue, 1)  # woken at the end of the step: the loop is closed, nobody listens
    handoff.put(queue, 2)
    assert queue.empty()


def test_eight_streams_in_one_batch_wake_the_loop_about_once_per_step() -> None:
    engine = load_engine("allmende:tiny", max_concurrency=8)
    ids = engine.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": "Erzähl mir etwas."}]}))
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    async def scenario() -> tuple[int, int]:
        await collect(engine.generate(ids, params), len(ids))  # warm-up: the scheduler thread runs
        handoff = handoff_for(asyncio.get_running_loop())
        deliveries, steps = handoff.deliveries, engine.scheduler.steps
        gens = await asyncio.gather(*(collect(engine.generate(ids, params), len(ids)) for _ in range(8)))
        assert all(g.completion_tokens == 12 for g in gens)
        return handoff.deliveries - deliveries, engine.scheduler.steps - steps

    deliveries, steps = asyncio.run(scenario())
    # 96 token events (and 8 ends): one wake per step, never one per token
    assert deliveries <= steps + 2
    assert deliveries < 96

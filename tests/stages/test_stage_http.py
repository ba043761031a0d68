"""Stages over HTTP: the stage wire API (allmende.provider.stage_app) and the router that
chains stage providers (allmende.payer.stages).

In process first (the apps behind httpx's ASGI transport: the real apps and wire format,
no sockets), then real processes (`allmende stage serve`) where one is killed mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from allmende.api.stages import FORWARD_PATH, MEDIA_TYPE, Draw, ForwardReply, ForwardRequest
from allmende.core.stages import StageLayout, StagePrice, parse_descriptor
from allmende.engine import Engine, SamplingParams
from allmende.engine.stages import StageEngine
from allmende.payer.stages import NoStageProvider, StageOffer, StageRouter, StageSession
from allmende.provider.stage_app import create_stage_app
from tests.conftest import wait_for
from tests.stages.conftest import whole_tokens

MAX_TOKENS = 24


def asgi_client(stages: list[StageEngine]) -> httpx.AsyncClient:
    mounts = {f"http://stage{i}": httpx.ASGITransport(create_stage_app(s)) for i, s in enumerate(stages)}
    return httpx.AsyncClient(mounts=mounts)  # type: ignore[arg-type]


async def generate(session: StageSession, prompt: list[int], eos: set[int], **draw: float) -> list[int]:
    return [t async for t in session.generate(prompt, MAX_TOKENS, eos, **draw)]  # type: ignore[arg-type]


@pytest.mark.parametrize("draw", [{}, {"temperature": 0.8, "seed": 7}], ids=["greedy", "seeded"])
def test_a_chain_over_http_draws_the_whole_models_tokens(
    whole: Engine, stages3: list[StageEngine], layout3: StageLayout, chat_ids: list[list[int]], draw: dict[str, float]
) -> None:
    offers = [StageOffer(spec, f"http://stage{i}") for i, spec in enumerate(layout3.stages)]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=draw.get("temperature", 0.0), seed=draw.get("seed"))
    eos = set(getattr(whole, "eos_ids", set()))

    async def run() -> tuple[list[int], str]:
        async with asgi_client(stages3) as client:
            session = StageSession(StageRouter(layout3, offers), client)
            tokens = await generate(session, chat_ids[1], eos, **draw)
            assert all(s.holds(session.session) for s in stages3)
            await session.close()
            return tokens, session.session

    tokens, session_id = asyncio.run(run())

    assert tokens == whole_tokens(whole, chat_ids[1], params)
    assert not any(s.holds(session_id) for s in stages3)  # closing the session freed every stage's cache


def test_the_router_picks_the_cheapest_live_provider_per_stage(layout3: StageLayout) -> None:
    cheap = StageOffer(layout3.stages[1], "http://a", StagePrice(1))
    dear = StageOffer(layout3.stages[1], "http://b", StagePrice(2))
    first, last = StageOffer(layout3.stages[0], "http://s0", StagePrice(3)), StageOffer(layout3.stages[2], "http://s2")
    router = StageRouter(layout3, [first, cheap, dear, last])

    assert [o.url for o in router.chain()] == ["http://s0", "http://a", "http://s2"]
    assert router.price(router.chain()) == StagePrice(4)
    cheap.dead = True
    assert router.chain()[1] is dear
    dear.dead = True
    with pytest.raises(NoStageProvider):
        router.chain()


async def post(client: httpx.AsyncClient, url: str, body: bytes) -> httpx.Response:
    return await client.post(url + FORWARD_PATH, content=body, headers={"content-type": MEDIA_TYPE})


def test_bad_stage_calls_get_json_errors(stages3: list[StageEngine], layout3: StageLayout) -> None:
    middle = layout3.stages[1]
    hidden = np.zeros((2, 576), dtype=np.float32)
    calls = {
        "garbage": (b"\x00" * 40, 400, "invalid_stage"),
        "header-too-long": ((10**9).to_bytes(8, "little") + b"{}", 400, "invalid_stage"),
        "other-stage": (ForwardRequest(layout3.stages[0].stage_id, "x", 0, hidden).encode(), 404, "unknown_model"),
        "draw-at-middle": (ForwardRequest(middle.stage_id, "x", 0, hidden, Draw(0)).encode(), 400, "invalid_stage"),
        "bad-session-id": (ForwardRequest(middle.stage_id, "a b", 0, hidden).encode(), 400, "invalid_stage"),
        "lost-session": (ForwardRequest(middle.stage_id, "nope", 9, hidden).encode(), 409, "stage_session_lost"),
        "wrong-width": (ForwardRequest(middle.stage_id, "w", 0, hidden[:, :5]).encode(), 400, "engine_error"),
    }

    async def run() -> dict[str, tuple[int, str]]:
        async with asgi_client(stages3) as client:
            out = {}
            for name, (body, _, _) in calls.items():
                reply = await post(client, "http://stage1", body)
                out[name] = (reply.status_code, reply.json()["error"]["code"])
            return out

    assert asyncio.run(run()) == {name: (status, code) for name, (_, status, code) in calls.items()}


def test_a_stage_reply_binds_its_input_and_output(stages3: list[StageEngine], layout3: StageLayout) -> None:
    """The reply's hashes are the commitments a receipt binds: they name these activations."""
    from allmende.api.stages import activation_hash

    ids = np.array([1, 2, 3], dtype=np.int64)

    async def run() -> ForwardReply:
        async with asgi_client(stages3) as client:
            reply = await post(
                client, "http://stage0", ForwardRequest(layout3.stages[0].stage_id, "h", 0, ids).encode()
            )
            await client.post("http://stage0/v1/stage/close", json={"session": "h"})
            return ForwardReply.decode(reply.content)

    reply = asyncio.run(run())

    assert reply.hidden is not None and reply.hidden.shape == (3, 576)
    assert reply.input_hash == activation_hash(ids) and reply.output_hash == activation_hash(reply.hidden)
    assert reply.proof


# --- real processes ------------------------------------------------------------------------


def start_stage(root: Path, index: int, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    ready = root / f"{name}.json"
    log = (root / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "allmende", "stage", "serve", "--stages", "3", "--index", str(index)]
    process = subprocess.Popen(
        [*command, "--port", "0", "--ready-file", str(ready)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, ready


@pytest.fixture
def stage_processes(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], dict[str, str]]]]:
    """Four stage providers: stages 0, 1, 2, and a second provider of the middle stage."""
    started = [start_stage(tmp_path, index, name) for index, name in [(0, "s0"), (1, "s1"), (2, "s2"), (1, "s1b")]]
    try:
        infos = []
        for process, ready in started:
            wait_for(f"{ready.name} to serve", lambda p=process, r=ready: r.exists() or p.poll() is not None, 300)
            assert process.poll() is None, (ready.with_suffix(".log")).read_text()[-2000:]
            infos.append((process, json.loads(ready.read_text())))
        yield infos
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)


def test_the_middle_stage_killed_mid_stream_loses_no_token(
    whole: Engine,
    chat_ids: list[list[int]],
    layout3: StageLayout,
    stage_processes: list[tuple[subprocess.Popen[bytes], dict[str, str]]],
) -> None:
    (_, s0), (p1, s1), (_, s2), (_, spare) = stage_processes
    offers = [StageOffer(parse_descriptor(info["descriptor"]), info["url"]) for info in (s0, s1, s2)]
    spare_offer = StageOffer(parse_descriptor(spare["descriptor"]), spare["url"], StagePrice(1))  # dearer: the fallback
    offers.append(spare_offer)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=3)
    eos = set(getattr(whole, "eos_ids", set()))

    async def run() -> tuple[list[int], StageSession]:
        async with httpx.AsyncClient() as client:
            session = StageSession(StageRouter(layout3, offers), client)
            tokens: list[int] = []
            async for token in session.generate(chat_ids[1], MAX_TOKENS, eos, temperature=0.8, seed=3):
                tokens.append(token)
                if len(tokens) == 6:
                    p1.kill()  # the middle stage's provider dies between two tokens of the stream
                    p1.wait(30)
            await session.close()
            return tokens, session

    tokens, session = asyncio.run(run())

    assert [o.stage.stage_id for o in offers[:3]] == [s.stage_id for s in layout3.stages]
    assert tokens == whole_tokens(whole, chat_ids[1], params)
    assert len(tokens) > 6
    assert session.hops[1].replaced == 1 and session.hops[1].offer.url == spare["url"]
    assert session.hops[0].replaced == session.hops[2].replaced == 0

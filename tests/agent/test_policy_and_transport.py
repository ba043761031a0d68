"""The agent client's parts that need no chain: its spending ledger (caps per request, per
day, per model, allowed models; requests in flight count with their most, also when 32 are
admitted at once) and its transport (an ASGI app answering the official clients, streaming
chunk by chunk, async and sync)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from allmende.agent.policy import Budget, SpendingCapReached, SpendingPolicy
from allmende.agent.transport import StreamingASGITransport, SyncBridge

A, B = b"\xaa" * 32, b"\xbb" * 32


def budget(policy: SpendingPolicy, spent: dict[bytes | None, int] | None = None) -> Budget:
    paid = spent or {}
    return Budget(policy, lambda since, model: paid.get(model, 0))


@pytest.mark.parametrize(
    ("policy", "spent", "name", "model", "most", "message"),
    [
        (SpendingPolicy(per_request=100), {}, "a", A, 101, "per-request cap of 100"),
        (SpendingPolicy(per_day=1_000), {None: 950}, "a", A, 51, "daily cap of 1000"),
        (SpendingPolicy(per_model={"a": 500}), {A: 480}, "a", A, 21, "cap of 500 units for a"),
        (SpendingPolicy(per_model={"0x" + A.hex(): 500}), {A: 480}, "a", A, 21, "cap of 500 units for a"),
        (SpendingPolicy(models=frozenset({"b"})), {}, "a", A, 1, "not in this agent's allowed models"),
    ],
    ids=["per-request", "per-day", "per-model-by-name", "per-model-by-id", "not-allowed"],
)
def test_a_request_that_could_break_a_cap_is_refused(
    policy: SpendingPolicy, spent: dict[bytes | None, int], name: str, model: bytes, most: int, message: str
) -> None:
    with pytest.raises(SpendingCapReached, match=message):
        budget(policy, spent).hold(name, model, most)


def test_only_a_policy_without_any_cap_or_allow_list_is_unlimited() -> None:
    """An unlimited policy lets the agent skip pricing each request before the app does."""
    assert SpendingPolicy().unlimited
    for capped in (
        SpendingPolicy(per_request=1),
        SpendingPolicy(per_day=1),
        SpendingPolicy(per_model={"a": 1}),
        SpendingPolicy(models=frozenset()),  # an empty allow-list allows nothing
    ):
        assert not capped.unlimited


def test_requests_within_the_caps_pass_and_other_models_are_not_counted() -> None:
    ledger = budget(SpendingPolicy(per_day=1_000, per_model={"a": 500}), {None: 400, A: 400, B: 0})
    ledger.release(ledger.hold("a", A, 100))  # 400 + 100 = 500: at the cap, allowed
    ledger.hold("b", B, 600)  # the per-model cap is a's only; the day has 600 left


def test_requests_in_flight_count_with_their_most_under_concurrency() -> None:
    ledger = budget(SpendingPolicy(per_day=10_000))
    results: list[str] = []

    def ask() -> None:
        try:
            ledger.hold("a", A, 1_000)
            results.append("held")
        except SpendingCapReached:
            results.append("refused")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda _: ask(), range(32)))

    assert results.count("held") == 10 and results.count("refused") == 22  # never more than the cap in flight


def app_streaming(first_read: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            # the second chunk waits until the client has read the first: a transport that
            # collects the whole body before answering never gets here
            for _ in range(200):
                if first_read.is_set():
                    break
                await asyncio.sleep(0.05)
            yield b"data: two\n\n" if first_read.is_set() else b"data: collected\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_the_async_transport_streams_each_chunk_as_the_app_sends_it() -> None:
    first_read = threading.Event()
    transport = StreamingASGITransport(app_streaming(first_read))

    async def go() -> list[bytes]:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://agent") as http,
            http.stream("POST", "/v1/stream") as response,
        ):
            got = []
            async for chunk in response.aiter_raw():
                got.append(chunk)
                first_read.set()
            return got

    assert b"".join(asyncio.run(go())) == b"data: one\n\ndata: two\n\n"


def test_the_sync_bridge_streams_too_and_a_hook_can_answer_in_the_apps_place() -> None:
    first_read = threading.Event()

    async def before(request: httpx.Request) -> tuple[httpx.Request | httpx.Response, object]:
        if request.url.path == "/v1/refused":
            return httpx.Response(402, json={"error": {"code": "spending_cap_reached"}}), lambda: None
        return request, lambda: None

    bridge = SyncBridge(StreamingASGITransport(app_streaming(first_read), before=before))  # type: ignore[arg-type]
    with httpx.Client(transport=bridge, base_url="http://agent") as http:
        with http.stream("POST", "/v1/stream") as response:
            got = []
            for chunk in response.iter_raw():
                got.append(chunk)
                first_read.set()
        refused = http.post("/v1/refused")

    assert b"".join(got) == b"data: one\n\ndata: two\n\n"
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "spending_cap_reached"

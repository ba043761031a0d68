"""The agent's transport calls the app's paid endpoints (its api.hot_routes table) directly:
a whole response comes back as the app would send it, a stream still streams chunk by chunk,
what an endpoint raises is rendered by the app's own handlers, and an app with middleware of
its own (a guard) is always called whole. Real FastAPI apps, the real httpx clients."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from allmende.agent import transport as transport_module
from allmende.agent.transport import StreamingASGITransport, SyncBridge
from allmende.api.guard import GuardConfig, protect
from allmende.api.hot_routes import hot_routes, hot_routes_of


class Refused(Exception):
    pass


def app_with_routes(guard: GuardConfig | None = None) -> FastAPI:
    app = FastAPI()
    protect(app, guard)
    first_read = app.state.first_read = threading.Event()  # the client has read the stream's first chunk

    async def whole(request: Request) -> Response:
        body = json.loads(await request.body())
        client = request.client.host if request.client else None
        # the app's exception middleware marks the scope of every request it passes on
        routed = "starlette.exception_handlers" in request.scope
        return JSONResponse({"echo": body, "client": client, "routed": routed, "app": request.app is app}, 201)

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            # the next chunk says whether the client had the first before it was made: a
            # transport that collected the stream's body first would have it only at the end
            yield b"data: 0\n\n"
            seen = await asyncio.to_thread(first_read.wait, 30)
            yield f"data: {'seen' if seen else 'unseen'}\n\n".encode()
            yield b"data: 2\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def fails(request: Request) -> Response:
        raise Refused("no")

    async def breaks(request: Request) -> Response:
        raise KeyError("unexpected")

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=402)

    endpoints = {"/whole": whole, "/stream": stream, "/fails": fails, "/breaks": breaks}
    for path, endpoint in endpoints.items():
        app.post(path)(endpoint)
    hot_routes(app, {("POST", path): endpoint for path, endpoint in endpoints.items()})
    return app


def test_paid_endpoints_are_called_directly_and_answer_as_the_app_would() -> None:
    app = app_with_routes()
    assert set(hot_routes_of(app)) == {("POST", p) for p in ("/whole", "/stream", "/fails", "/breaks")}
    with httpx.Client(transport=SyncBridge(StreamingASGITransport(app)), base_url="http://agent") as http:
        reply = http.post("/whole", json={"a": 1})
        assert reply.status_code == 201
        assert reply.json() == {"echo": {"a": 1}, "client": "127.0.0.1", "routed": False, "app": True}
        assert reply.headers["content-type"] == "application/json"
        assert int(reply.headers["content-length"]) == len(reply.content)
        refused = http.post("/fails", json={})
        assert (refused.status_code, refused.json()) == (402, {"error": "no"})  # the app's own handler
        broken = http.post("/breaks", json={})
        assert (broken.status_code, broken.text) == (500, "Internal Server Error")
        arrived = []
        with http.stream("POST", "/stream", json={}) as streamed:
            for line in streamed.iter_lines():
                if line:
                    arrived.append(line)
                    app.state.first_read.set()
        assert arrived == ["data: 0", "data: seen", "data: 2"]  # chunk by chunk, not at the end
        assert http.get("/docs").status_code == 200  # any other route: through the app


def test_an_app_with_middleware_of_its_own_is_called_whole() -> None:
    app = app_with_routes(GuardConfig(hosts=("agent",)))
    transport = StreamingASGITransport(app)
    assert transport.routes == {}

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
            allowed = await http.post("/whole", json={"a": 1})
            refused = await http.post("/whole", json={"a": 1}, headers={"host": "evil.example"})
            return allowed, refused

    allowed, refused = asyncio.run(ask())
    assert allowed.status_code == 201 and allowed.json()["routed"] is True  # through the app's stack
    assert refused.status_code == 403  # the guard saw it


class NeverCloses(httpx.AsyncBaseTransport):
    """A transport whose close never ends (a loop still busy with something)."""

    async def aclose(self) -> None:
        await asyncio.Event().wait()


def test_closing_the_sync_bridge_does_not_hang_on_a_transport_that_never_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "CLOSE_WAIT", 0.2)
    bridge = SyncBridge(NeverCloses())

    bridge.close()  # returned: before, it waited on the transport's close for ever

    bridge.thread.join(timeout=10)
    assert not bridge.thread.is_alive()  # and its loop stopped

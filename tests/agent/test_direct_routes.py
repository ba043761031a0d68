"""The agent's transport calls the app's paid endpoints (its api.hot_routes table) directly:
a whole response comes back as the app would send it, a stream still streams chunk by chunk,
what an endpoint raises is rendered by the app's own handlers, and an app with middleware of
its own (a guard) is always called whole. Real FastAPI apps, the real httpx clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from allmende.agent.transport import StreamingASGITransport, SyncBridge
from allmende.api.guard import GuardConfig, protect
from allmende.api.hot_routes import hot_routes, hot_routes_of


class Refused(Exception):
    pass


def app_with_routes(guard: GuardConfig | None = None) -> FastAPI:
    app = FastAPI()
    protect(app, guard)

    async def whole(request: Request) -> Response:
        body = json.loads(await request.body())
        client = request.client.host if request.client else None
        # the app's exception middleware marks the scope of every request it passes on
        routed = "starlette.exception_handlers" in request.scope
        return JSONResponse({"echo": body, "client": client, "routed": routed, "app": request.app is app}, 201)

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.2)

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
            started = time.monotonic()
            for line in streamed.iter_lines():
                if line:
                    arrived.append((line, time.monotonic() - started))
        assert [line for line, _ in arrived] == ["data: 0", "data: 1", "data: 2"]
        assert arrived[0][1] < arrived[2][1]  # chunk by chunk, not at the end
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

"""The agent's in-process gateway tries its API routes first (agent.client.served_first):
the reorder changes which route the router tries first, never which route answers."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute

from allmende.agent.client import SERVED, served_first


def app_with_routes_before_the_api() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/")
    async def page() -> dict[str, str]:
        return {"route": "page"}

    @app.get("/v1/models")
    async def models() -> dict[str, str]:
        return {"route": "models"}

    @app.get("/v1/chat/completions")  # same path, another method: must stay where it was
    async def chat_get() -> dict[str, str]:
        return {"route": "chat get"}

    for path in SERVED:

        @app.post(path)
        async def served(path: str = path) -> dict[str, str]:
            return {"route": path}

    return app


def test_the_api_routes_come_first_and_every_request_reaches_the_same_route() -> None:
    app = app_with_routes_before_the_api()
    before = list(app.router.routes)
    served_first(app)
    after = app.router.routes
    assert sorted(map(id, after)) == sorted(map(id, before))  # the same routes, none lost or doubled
    first = after[: len(SERVED)]
    assert all(isinstance(r, APIRoute) and r.path in SERVED and r.methods == {"POST"} for r in first)
    assert [r for r in after if r not in first] == [r for r in before if r not in first]  # the rest keep their order

    async def calls() -> list[tuple[int, object]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
            replies = [await http.post(path, json={}) for path in SERVED]
            replies += [await http.get("/"), await http.get("/v1/models"), await http.get("/v1/chat/completions")]
            replies += [await http.get("/nowhere"), await http.delete("/v1/chat/completions")]
        return [(r.status_code, r.json()) for r in replies]

    answers = asyncio.run(calls())
    assert answers[: len(SERVED)] == [(200, {"route": path}) for path in SERVED]
    assert answers[len(SERVED) :] == [
        (200, {"route": "page"}),
        (200, {"route": "models"}),
        (200, {"route": "chat get"}),
        (404, {"detail": "Not Found"}),
        (405, {"detail": "Method Not Allowed"}),
    ]

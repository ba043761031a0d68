"""api.hot_routes: a node's paid endpoints answered before FastAPI's router, with everything
around the router unchanged: the guard still refuses first, the app's exception handlers
still render what an endpoint raises, and every other method or path is the router's."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.testclient import TestClient

from allmende.api.guard import GuardConfig, protect
from allmende.api.hot_routes import hot_routes


class Boom(Exception):
    pass


def app_with_hot_route() -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    protect(app, GuardConfig.serving("127.0.0.1"))
    calls: list[str] = []

    @app.exception_handler(Boom)
    async def _boom(_: Request, exc: Boom) -> JSONResponse:
        return JSONResponse({"error": {"code": "boom", "message": str(exc)}}, status_code=418)

    @app.get("/explorer/{anything:path}")  # a route the router would try before the paid one
    async def explorer(anything: str) -> dict[str, str]:
        return {"page": anything}

    @app.post("/v1/infer")
    async def infer(request: Request) -> Response:
        body = await request.json()
        calls.append(request.url.path)
        if body.get("fail"):
            raise Boom("asked to fail")
        return JSONResponse({"echo": body, "client": request.client.host if request.client else None})

    hot_routes(app, {("POST", "/v1/infer"): infer})
    return app, calls


def test_the_hot_route_answers_as_the_router_did() -> None:
    app, calls = app_with_hot_route()
    with TestClient(app, base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/infer", json={"x": 1})
        assert reply.status_code == 200
        assert reply.json() == {"echo": {"x": 1}, "client": "testclient"}
        assert calls == ["/v1/infer"]
        # other methods and paths are still the router's: 405 on the hot path, other routes, 404
        assert client.get("/v1/infer").status_code == 405
        assert client.get("/explorer/a/b").json() == {"page": "a/b"}
        assert client.post("/v1/other", json={}).status_code == 404
        assert calls == ["/v1/infer"]


def test_an_error_in_the_hot_route_goes_to_the_apps_handlers() -> None:
    app, _ = app_with_hot_route()
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        reply = client.post("/v1/infer", json={"fail": True})
        assert reply.status_code == 418
        assert reply.json() == {"error": {"code": "boom", "message": "asked to fail"}}


def test_the_guard_still_refuses_before_the_hot_route_runs() -> None:
    app, calls = app_with_hot_route()
    with TestClient(app, base_url="http://evil.example") as client:  # a DNS-rebinding page's Host
        assert client.post("/v1/infer", json={"x": 1}).status_code == 403
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a cross-site form post
        reply = client.post("/v1/infer", content=b"x=1", headers={"content-type": "text/plain"})
        assert reply.status_code == 415
    assert calls == []


def test_a_mounted_app_goes_through_the_router() -> None:
    """Under a root path the route's path is not the request's: the router resolves it."""
    app, calls = app_with_hot_route()
    with TestClient(app, base_url="http://127.0.0.1", root_path="/node") as client:
        assert client.post("/node/v1/infer", json={"x": 2}).json()["echo"] == {"x": 2}
    assert calls == ["/node/v1/infer"]

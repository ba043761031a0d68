"""A node's paid endpoints answered without FastAPI's route machinery.

Every request to the gateway's completion routes and to the provider's /v1/infer went
through FastAPI's router: each route's path pattern tried in order (the gateway's API
routes came after the explorer's), then the route's request handler (its dependency
solver, an exit stack, a second layer of exception wrapping) before the endpoint ran.
Profiled on a CPU clock at one client (allmende:tiny), that was about 1 ms of every
request's 7 in the gateway process and as much in the provider's, of which the endpoints
themselves use nothing: each takes the Starlette `Request` and returns its `Response`.

`hot_routes` puts a table of those (method, path) pairs in front of the router: a hit calls
the endpoint directly, anything else goes to the router as before. It sits where the router
sits, inside the app's middleware (the guard of `allmende.api.guard`, the exception handlers,
which still render whatever an endpoint raises), so nothing but the route lookup changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """ASGI app: `routes[(method, path)]` answers its requests; the rest go to `app`."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self.routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def hot_routes(app: FastAPI, routes: dict[tuple[str, str], Endpoint]) -> None:
    """Answer `routes` before `app`'s router looks at its route list. Each endpoint must also
    be one of the app's routes (the same function), so the app's routes stay its documentation."""
    app.router.middleware_stack = HotRoutes(app.router.middleware_stack, routes)


def hot_routes_of(app: object) -> dict[tuple[str, str], Endpoint]:
    """The table `hot_routes` installed on `app` (empty where it installed none): an in-process
    caller (the agent's transport, allmende.agent.transport) calls these endpoints directly."""
    router = getattr(app, "router", None)
    stack = getattr(router, "middleware_stack", None)
    return dict(stack.routes) if isinstance(stack, HotRoutes) else {}

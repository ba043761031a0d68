"""An ASGI app as an httpx transport, streaming: the agent's in-process gateway answers the
official `openai` and `anthropic` clients as a server would, chunk by chunk (httpx's own
ASGITransport collects the whole body first, so a stream would arrive at its end), and a
sync bridge for the sync clients (a private event loop on a thread).

The paid endpoints (the app's `api.hot_routes` table: every request an agent makes) are
called directly, as the app's own route table would call them, and a whole response (not a
stream) is handed back as it is: no task, queue and ASGI messages per request, and not the
app's middleware, which for these endpoints only renders an exception the endpoint let
through, by the app's own handlers (done here the same way); an app with middleware of its
own (a guard) is always called whole. A stream goes out through the
ASGI machinery below, chunk by chunk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from allmende.api.hot_routes import Endpoint, hot_routes_of

log = logging.getLogger("allmende.agent")

CLOSE_WAIT = 5.0  # seconds `SyncBridge.close` waits for the transport to close on its loop

T = TypeVar("T")
ASGIApp = Callable[..., Awaitable[None]]
Hook = Callable[[httpx.Request], Awaitable[tuple[httpx.Request | httpx.Response, Callable[[], None]]]]


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Requests to `app` in this process; the response returns once its headers are sent and
    its body streams as the app sends it. `before(request)` may answer in the app's place (a
    spending cap) or hand back the request and a callback run when the response ends."""

    def __init__(self, app: ASGIApp, before: Hook | None = None) -> None:
        self.app = app
        self.before = before
        # (method, path) → endpoint, called directly; not past middleware of the app's own (a guard)
        self.routes = {} if getattr(app, "user_middleware", None) else hot_routes_of(app)
        self.handlers: dict[Any, Any] = dict(getattr(app, "exception_handlers", {}))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        done: Callable[[], None] = lambda: None  # noqa: E731
        if self.before is not None:
            answer, done = await self.before(request)
            if isinstance(answer, httpx.Response):
                return answer
            request = answer
        body = await request.aread()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 0),
            "server": (request.url.host, request.url.port or 80),
        }
        sent_body = False
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()  # the client closed the response: the app sees a disconnect
            return {"type": "http.disconnect"}

        app: ASGIApp = self.app
        endpoint = self.routes.get((request.method, request.url.path))
        if endpoint is not None:
            scope["app"] = self.app  # as the app sets it for its routes (request.app)
            try:
                reply = await self._answer(endpoint, scope, receive)
            except BaseException:
                done()
                raise
            if not isinstance(reply, StreamingResponse) and reply.background is None:
                done()
                return httpx.Response(
                    reply.status_code, headers=reply.raw_headers, content=bytes(reply.body), request=request
                )
            app = reply  # a stream: sent below, chunk by chunk, as the app would send it

        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = asyncio.get_running_loop().create_future()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(bytes(message["body"]))
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def run() -> None:
            try:
                await app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                chunks.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            status, headers = await started
        except BaseException:
            done()
            with contextlib.suppress(BaseException):
                await task
            raise

        async def body_stream() -> AsyncIterator[bytes]:
            try:
                while (chunk := await chunks.get()) is not None:
                    yield chunk
            finally:
                gone.set()
                if not task.done():
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                done()

        return httpx.Response(status, headers=headers, stream=_AsyncStream(body_stream()), request=request)

    async def _answer(self, endpoint: Endpoint, scope: dict[str, Any], receive: Any) -> Response:
        """The endpoint's response, or the app's handler's for what it raised (the most
        specific handler of the exception's classes, as the app's exception middleware
        picks; a plain 500 where the app has none, as Starlette's server-error middleware)."""
        request = Request(scope, receive)
        try:
            return await endpoint(request)
        except Exception as exc:
            handler = next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)
            if handler is None:
                return PlainTextResponse("Internal Server Error", status_code=500)
            response: Response = await handler(request, exc)
            return response


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        await self.chunks.aclose()  # type: ignore[attr-defined]


class SyncBridge(httpx.BaseTransport):
    """An async transport for a sync httpx.Client: its requests run on a private event loop
    on a daemon thread, the response body is pulled chunk by chunk."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="allmende-agent", daemon=True)
        self.thread.start()

    def run(self, coroutine: Awaitable[T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body whole: the loop's side reads it again without blocking
        response, body = self.run(self._fetch(request))
        if body is not None:
            if isinstance(response.stream, httpx.SyncByteStream):  # made from its bytes: readable here too
                return response
            return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code, headers=response.headers, stream=_SyncStream(self, stream), request=request
        )

    async def _fetch(self, request: httpx.Request) -> tuple[httpx.Response, bytes | None]:
        """The response and, unless it is an event stream, its whole body: one hop between
        the caller's thread and the loop per request, not one per chunk (each hop is a
        wake-up of the other thread, which a loaded machine makes slow)."""
        response = await self.transport.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response, None
        try:
            return response, response.content  # made whole already (a hook's answer)
        except httpx.ResponseNotRead:
            pass
        try:
            return response, b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()

    def close(self) -> None:
        """Close the transport on its loop (at most CLOSE_WAIT seconds: a close must not hang
        its caller, whatever the loop is still doing), then stop the loop."""
        future = asyncio.run_coroutine_threadsafe(self.transport.aclose(), self.loop)
        try:
            future.result(timeout=CLOSE_WAIT)
        except TimeoutError:
            log.warning("the agent transport did not close within %g s; stopping its loop", CLOSE_WAIT)
            future.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, bridge: SyncBridge, stream: httpx.AsyncByteStream) -> None:
        self.bridge, self.stream = bridge, stream
        self.chunks = stream.__aiter__()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.bridge.run(self.chunks.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self.bridge.run(self.stream.aclose())

"""How a gateway sends its sealed requests to providers' `POST /v1/infer`: one JSON body
out, the answer back whole (`post`) or as it streams (`stream`).

`HttpxUpstream` does it with an `httpx.AsyncClient` (any transport: the tests route it to
providers' apps in process). `AiohttpUpstream` is what a gateway process uses: the same
request costs its event loop about 0.12 ms of CPU through aiohttp against 0.6 ms through
httpx (whose client, pool, anyio cancel scopes and h11 state machine run per request in
Python), and aiohttp writes the request line, headers and body in one send where httpcore
makes two, each of which wakes the provider's event loop.

Neither follows a redirect (a provider's 3xx is its answer, an error: it cannot send the
gateway's sealed request, or the gateway, anywhere else), and aiohttp's keeps no cookies.
Both raise httpx's exceptions, so the gateway's failover reads every failure the same way
whichever client carried it: `httpx.ConnectError` (the provider was never reached: nothing
it could have earned), `httpx.ReadTimeout`, and `httpx.RemoteProtocolError` for a
connection that broke off (an answer or a stream cut short)."""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.request import getproxies

import aiohttp
import httpx

# longest line a provider's stream may send (its final chunk carries the token ids, the
# proof and the log-probabilities, all sealed): beyond it the stream is broken off
MAX_LINE = 64 * 1024 * 1024


class Upstream(ABC):
    """A client of providers' /v1/infer."""

    @abstractmethod
    async def post(self, url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """POST `payload` as JSON; (status, whole body)."""

    @abstractmethod
    def stream(self, url: str, payload: dict[str, Any]) -> Any:
        """POST `payload` as JSON; an async context manager giving (status, the body's lines)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the connections."""


class HttpxUpstream(Upstream):
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(self, url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        reply = await self.http.post(url, json=payload)
        return reply.status_code, reply.content

    @asynccontextmanager
    async def stream(self, url: str, payload: dict[str, Any]) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        async with self.http.stream("POST", url, json=payload) as reply:
            yield reply.status_code, reply.aiter_lines()

    async def aclose(self) -> None:
        await self.http.aclose()


class AiohttpUpstream(Upstream):
    """aiohttp with httpx's timeouts (`read`: the longest wait for any one read) and a
    connection pool of `max_connections`; its session is made on first use, in the event loop
    that serves the requests."""

    def __init__(self, read: float, connect: float = 5.0, max_connections: int = 512) -> None:
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def session(self) -> aiohttp.ClientSession:
        """The session of the running event loop (a session serves the loop it was made in)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            # keep-alive below the providers' own (30 s, provider/node.py), so a connection is
            # never reused just as the provider closes it
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=15)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                json_serialize=json.dumps,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),  # a provider's cookies are kept for no one
                # proxies from the environment, as httpx's client honours them; looking them up
                # costs aiohttp 0.2 ms per request, so only where one is configured
                trust_env=bool(getproxies()),
            )
        return self._session

    async def post(self, url: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        with _as_httpx(url):
            async with self.session().post(url, json=payload, allow_redirects=False) as reply:
                return reply.status, await reply.read()

    @asynccontextmanager
    async def stream(self, url: str, payload: dict[str, Any]) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        with _as_httpx(url):
            reply = await self.session().post(url, json=payload, allow_redirects=False)
        try:
            yield reply.status, _lines(reply, url)
        finally:
            if reply.content.at_eof():
                reply.release()  # the connection goes back to the pool
            else:
                reply.close()  # a stream left early: the provider sees its client go (and bills what it sent)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _lines(reply: aiohttp.ClientResponse, url: str) -> AsyncIterator[str]:
    """The body's lines (without their line ends), as they arrive."""
    pending = b""
    with _as_httpx(url):
        async for chunk in reply.content.iter_any():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode()
            if len(pending) > MAX_LINE:
                raise httpx.RemoteProtocolError(f"a line of {url}'s stream is longer than {MAX_LINE} bytes")
    if pending:
        yield pending.rstrip(b"\r").decode()


class _as_httpx:
    """Raises aiohttp's failures as the httpx exceptions the gateway's failover reads."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None or isinstance(exc, httpx.HTTPError):
            return
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise httpx.ConnectError(f"{self.url}: {exc}") from exc
        if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
            raise httpx.ReadTimeout(f"{self.url}: no answer in time") from exc
        if isinstance(exc, aiohttp.ClientError):
            raise httpx.RemoteProtocolError(f"{self.url}: {type(exc).__name__}: {exc}") from exc

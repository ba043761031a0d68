"""A node's responses go out in one write (api/coalesce.py): uvicorn's protocol wrote the
status line and headers, then the body, as two sends (two TCP segments with TCP_NODELAY).
Real uvicorn servers on free ports, real HTTP and websocket clients; the writes that reach
each connection's socket transport are counted."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.sync.client import connect

from allmende.api.coalesce import CoalescingHttpToolsProtocol, http_protocol
from allmende.chain.anvil import free_port

WRITES: list[int] = []  # per connection: writes that reached its socket transport


class Counting:
    """The connection's socket transport, its writes counted (uvloop's are read-only attributes)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.index = transport, len(WRITES)
        WRITES.append(0)

    def write(self, data: Any) -> None:
        WRITES[self.index] += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def counted(base: type[HttpToolsProtocol]) -> type[HttpToolsProtocol]:
    class Counted(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(Counting(transport))  # type: ignore[arg-type]

    return Counted


async def answer(request: Request) -> JSONResponse:
    return JSONResponse({"text": "x" * 1500})


async def chunks(request: Request) -> StreamingResponse:
    async def produce() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.2)

    return StreamingResponse(produce(), media_type="text/event-stream")


async def echo(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text(await socket.receive_text())
    await socket.close()


APP = Starlette(routes=[Route("/answer", answer), Route("/stream", chunks), WebSocketRoute("/ws", echo)])


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(protocol: type[HttpToolsProtocol]) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(APP, port=port, log_level="warning", http=counted(protocol)))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return f"127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_json_response_is_one_write(serve: Any) -> None:
    assert http_protocol() is CoalescingHttpToolsProtocol
    plain, coalesced = serve(HttpToolsProtocol), serve(CoalescingHttpToolsProtocol)
    WRITES.clear()
    with httpx.Client() as http:
        for _ in range(3):  # one keep-alive connection each
            assert http.get(f"http://{plain}/answer").json() == {"text": "x" * 1500}
    with httpx.Client() as http:
        for _ in range(3):
            reply = http.get(f"http://{coalesced}/answer")
            assert reply.status_code == 200 and reply.json() == {"text": "x" * 1500}
    assert WRITES == [6, 3]  # uvicorn's own: headers and body apart; coalesced: one send each


def test_a_stream_still_goes_out_as_it_is_made(serve: Any) -> None:
    url = serve(CoalescingHttpToolsProtocol)
    WRITES.clear()
    arrived = []
    with httpx.Client() as http, http.stream("GET", f"http://{url}/stream") as reply:
        started = time.monotonic()
        for line in reply.iter_lines():
            if line:
                arrived.append((line, time.monotonic() - started))
    assert [line for line, _ in arrived] == ["data: 0", "data: 1", "data: 2"]
    assert arrived[0][1] < arrived[2][1]  # the first chunk came before the last was made
    assert WRITES[0] >= 3  # not held back to the end


def test_a_websocket_upgrade_still_works(serve: Any) -> None:
    url = serve(CoalescingHttpToolsProtocol)
    with connect(f"ws://{url}/ws") as socket:
        socket.send("hallo")
        assert socket.recv(timeout=10) == "hallo"

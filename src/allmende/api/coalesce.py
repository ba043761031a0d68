"""A node's HTTP responses sent in one write: uvicorn's protocol with coalesced writes.

uvicorn's httptools protocol writes a response's status line and headers to the socket when
the app sends `http.response.start`, and its body in a second write when the app sends the
body. With TCP_NODELAY (asyncio's default) those are two segments: every answer of a node
cost two send calls, and the peer could wake for the headers alone and again for the body
(seen with strace on the gateway: a 127-byte write of the headers, then the 1,452-byte body).

`CoalescingHttpToolsProtocol` hands uvicorn a transport whose writes made in one turn of the
event loop go out together at the end of that turn: a whole JSON response (headers and body,
sent by the app one after the other without waiting) is one send; a stream's chunks still go
out as they are made (each turn's writes at the end of it). A connection upgraded to a
websocket gets the plain transport back.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:  # uvicorn's fast protocol needs httptools (uvicorn[standard]); without it uvicorn's default
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is installed with the nodes' dependencies
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


class CoalescedWrites:
    """An asyncio transport whose `write`s are joined and passed on once per loop turn;
    `close` sends what is pending first. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        if not self.raw.is_closing():
            self.raw.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.flush()
        self.raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def http_protocol() -> Any:
    """What a node passes as `uvicorn.Config(http=…)`: the coalescing protocol, or uvicorn's
    own choice where httptools is missing."""
    return "auto" if HttpToolsProtocol is None else CoalescingHttpToolsProtocol


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (`uvicorn.Config(http=…)`) writing through CoalescedWrites."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    def handle_websocket_upgrade(self) -> None:
        transport = self.transport
        if isinstance(transport, CoalescedWrites):  # the websocket protocol writes for itself
            transport.flush()
            self.transport = transport.raw
        super().handle_websocket_upgrade()

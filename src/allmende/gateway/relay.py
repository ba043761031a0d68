"""The relay: providers that accept no inbound connections dial out to a gateway over a
WebSocket (`GET /v1/relay`), and are reached at `<gateway>/v1/relay/<address>/…`.

That URL is what such a provider registers on chain as its endpoint, so every gateway and
validator reaches it like any other provider, over plain HTTP; the relaying gateway forwards
each request over the provider's WebSocket and streams the answer back. The bodies are the
same end-to-end encrypted envelopes as on a direct connection: the relay sees ciphertext, and
the provider's signed /v1/info and receipts are checked by the caller as always. A provider
whose connection is gone answers 502 `relay_unavailable`, which callers treat like a dead
provider (failover, also in the middle of a stream: the stream breaks off).

Frames (JSON text):
  relay → provider  {"t": "challenge", "nonce"}     then {"t": "req", id, method, path, headers, body}
  provider → relay  {"t": "hello", address, signature}  (EIP-191 over `allmende relay <nonce>`)
                    {"t": "head", id, status, headers}, {"t": "data", id, body}…, {"t": "end", id}
Bodies are base64.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger("allmende.gateway.relay")

RELAY_PATH = "/v1/relay"
MAX_BODY = 4 * 1024 * 1024
HEAD_TIMEOUT = 120.0  # seconds until a provider answers a forwarded request's headers


def challenge_text(nonce: str) -> str:
    return f"allmende relay {nonce}"


@dataclass
class _Connection:
    address: str
    socket: WebSocket
    streams: dict[int, asyncio.Queue[dict[str, Any] | None]] = field(default_factory=dict)
    next_id: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.socket.send_text(json.dumps(frame))


class Relay:
    """The connected providers of this gateway, by address."""

    def __init__(self) -> None:
        self._connections: dict[str, _Connection] = {}

    def connected(self) -> list[str]:
        return list(self._connections)

    async def accept(self, socket: WebSocket) -> None:
        """Authenticate a provider by a signature over a fresh nonce, then pump its answers."""
        await socket.accept()
        nonce = secrets.token_hex(16)
        await socket.send_text(json.dumps({"t": "challenge", "nonce": nonce}))
        try:
            hello = json.loads(await asyncio.wait_for(socket.receive_text(), timeout=10))
            claimed = str(hello["address"])
            signer = Account.recover_message(encode_defunct(text=challenge_text(nonce)), signature=hello["signature"])
        except (TimeoutError, ValueError, KeyError, TypeError, WebSocketDisconnect):
            await _close(socket, 1008, "bad hello")
            return
        if signer.lower() != claimed.lower():
            await _close(socket, 1008, "signature does not match the address")
            return
        connection = _Connection(signer, socket)
        old = self._connections.get(signer)
        self._connections[signer] = connection
        if old is not None:
            await _close(old.socket, 1000, "replaced by a newer connection")
        await socket.send_text(json.dumps({"t": "ok"}))
        log.info("provider %s connected to the relay", signer)
        try:
            while True:
                frame = json.loads(await socket.receive_text())
                queue = connection.streams.get(int(frame.get("id", -1)))
                if queue is not None:
                    queue.put_nowait(frame)
        except (WebSocketDisconnect, ValueError, RuntimeError):
            pass
        finally:
            if self._connections.get(signer) is connection:
                del self._connections[signer]
            for queue in connection.streams.values():
                queue.put_nowait(None)  # every request in flight breaks off
            log.info("provider %s left the relay", signer)

    async def forward(self, address: str, path: str, request: Request) -> Response:
        """One HTTP request to a relayed provider, its answer streamed back."""
        connection = next((c for a, c in self._connections.items() if a.lower() == address.lower()), None)
        if connection is None:
            return _error(502, "relay_unavailable", f"provider {address} is not connected to this relay")
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, "body_too_large", "request body too large")
        connection.next_id += 1
        stream_id = connection.next_id
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        connection.streams[stream_id] = queue
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        frame = {"t": "req", "id": stream_id, "method": request.method, "path": "/" + path,
                 "query": request.url.query, "headers": headers, "body": base64.b64encode(body).decode()}  # fmt: skip
        try:
            await connection.send(frame)
            head = await asyncio.wait_for(queue.get(), timeout=HEAD_TIMEOUT)
        except (TimeoutError, RuntimeError, WebSocketDisconnect):
            head = None
        if head is None or head.get("t") != "head":
            connection.streams.pop(stream_id, None)
            return _error(502, "relay_unavailable", f"provider {address} did not answer through the relay")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    frame = await queue.get()
                    if frame is None:
                        raise ConnectionError(f"relay connection of {address} lost mid-answer")
                    if frame.get("t") == "end":
                        return
                    yield base64.b64decode(frame.get("body", ""))
            finally:
                connection.streams.pop(stream_id, None)

        media = dict(head.get("headers", {})).get("content-type")
        return StreamingResponse(chunks(), status_code=int(head["status"]), media_type=media)

    def mount(self, app: FastAPI) -> None:
        @app.websocket(RELAY_PATH)
        async def relay_socket(socket: WebSocket) -> None:
            await self.accept(socket)

        @app.api_route(RELAY_PATH + "/{address}/{path:path}", methods=["GET", "POST"], include_in_schema=False)
        async def relayed(address: str, path: str, request: Request) -> Response:
            return await self.forward(address, path, request)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError):
        await socket.close(code=code, reason=reason)

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
  provider → relay  {"t": "hello", address, relay, chain_id, signature}
                    (EIP-191 over `allmende relay <nonce> at <relay> on chain <chain_id>`)
                    {"t": "head", id, status, headers}, {"t": "data", id, body}…, {"t": "end", id}
Bodies are base64.

What a connection may do (issue 29):
- The login names the relay: the provider signs the address it dialled (`host:port`) and its
  chain, and a relay accepts only its own names (`names`) and chain. A malicious relay that a
  provider dials cannot replay the login at another gateway to hold the provider's slot there.
- Only a registered provider with stake (`staked`) holds a connection without limit; at most
  MAX_UNREGISTERED connections of unregistered keys at once (a provider connects before its
  registration is mined), further ones are refused.
- Per connection at most MAX_QUEUED_FRAMES frames and MAX_QUEUED_BYTES bytes wait for their
  readers; beyond that the relay stops reading the connection (backpressure: the provider's
  socket fills) until readers catch up; a frame over MAX_FRAME closes the connection, and a
  stream whose reader is gone for STALL_S is dropped, so no provider makes the relay hold
  more than those bounds.
- The relayed route is admitted like the OpenAI routes (the gateway's API keys and rate
  limits: `admission`), and passes the provider the client it admitted
  (`x-allmende-relay-client`: the key's hash or the peer address), which the provider's own
  per-client rate limits then see instead of the relay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse

from allmende.api.headers import RELAY_CLIENT_HEADER
from allmende.api.relay import challenge_text, relay_name
from allmende.gateway.errors import openai_error

log = logging.getLogger("allmende.gateway.relay")

RELAY_PATH = "/v1/relay"
MAX_BODY = 4 * 1024 * 1024
HEAD_TIMEOUT = 120.0  # seconds until a provider answers a forwarded request's headers
MAX_FRAME = 2 * 1024 * 1024  # characters of one frame from a provider (a 1 MiB chunk in base64, and room)
MAX_QUEUED_FRAMES = 256  # frames of one connection waiting for their readers
MAX_QUEUED_BYTES = 8 * 1024 * 1024  # ... and their characters
STALL_S = 30.0  # seconds a full stream may wait for its reader before it is dropped
MAX_UNREGISTERED = 4  # connections of keys that are no staked provider, at once
WS_QUEUE = 4  # frames the server's WebSocket buffers before the relay reads them (uvicorn's ws_max_queue)


@dataclass
class _Connection:
    address: str
    socket: WebSocket
    registered: bool = True
    streams: dict[int, asyncio.Queue[dict[str, Any] | None]] = field(default_factory=dict)
    next_id: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued_frames: int = 0
    queued_bytes: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.socket.send_text(json.dumps(frame))

    def full(self) -> bool:
        return self.queued_frames >= MAX_QUEUED_FRAMES or self.queued_bytes >= MAX_QUEUED_BYTES

    def taken(self, frame: dict[str, Any] | None) -> None:
        """A reader took `frame` off its queue."""
        if frame is not None:
            self.queued_frames -= 1
            self.queued_bytes -= len(str(frame.get("body", "")))
            if not self.full():
                self.drained.set()

    def drop(self, stream_id: int) -> None:
        """The stream's reader is gone: its queued frames no longer count."""
        queue = self.streams.pop(stream_id, None)
        if queue is None:
            return
        while not queue.empty():
            self.taken(queue.get_nowait())
        queue.put_nowait(None)  # a reader still waiting breaks off


def _unlimited(_: str) -> bool:
    return True


class Relay:
    """The connected providers of this gateway, by address.

    `names`: the `host:port`s this gateway is reached at (logins naming another relay are
    refused; empty: any, for tests only), `chain_id`: its chain (None: any, tests only),
    `staked`: whether an address is a registered provider with stake (chain reads, run off
    the event loop), `admission`: the gateway's API keys and rate limits for the relayed route."""

    def __init__(
        self,
        names: Iterable[str] = (),
        chain_id: int | None = None,
        staked: Callable[[str], bool] = _unlimited,
        admission: Any = None,
    ) -> None:
        self._connections: dict[str, _Connection] = {}
        self.names = {relay_name(n) for n in names}
        self.chain_id = chain_id
        self.staked = staked
        self.admission = admission

    def connected(self) -> list[str]:
        return list(self._connections)

    def _login(self, hello: dict[str, Any], nonce: str) -> tuple[str, str | None]:
        """(the signer, why it is refused or None)."""
        claimed, relay, chain_id = str(hello["address"]), relay_name(str(hello["relay"])), int(hello["chain_id"])
        signer = str(
            Account.recover_message(
                encode_defunct(text=challenge_text(nonce, relay, chain_id)), signature=hello["signature"]
            )
        )
        if signer.lower() != claimed.lower():
            return signer, "signature does not match the address"
        if self.names and relay not in self.names:
            return signer, f"this login is for the relay {relay}, not this one"
        if self.chain_id is not None and chain_id != self.chain_id:
            return signer, f"this login is for chain {chain_id}, not {self.chain_id}"
        return signer, None

    async def accept(self, socket: WebSocket) -> None:
        """Authenticate a provider by a signature over a fresh nonce, then pump its answers."""
        await socket.accept()
        nonce = secrets.token_hex(16)
        await socket.send_text(json.dumps({"t": "challenge", "nonce": nonce}))
        try:
            hello = json.loads(await asyncio.wait_for(socket.receive_text(), timeout=10))
            signer, refused = self._login(hello, nonce)
        except (TimeoutError, ValueError, KeyError, TypeError, WebSocketDisconnect):
            await _close(socket, 1008, "bad hello")
            return
        if refused is not None:
            log.warning("relay login of %s refused: %s", signer, refused)
            await _close(socket, 1008, refused)
            return
        registered = await asyncio.to_thread(self.staked, signer)
        unregistered = sum(not c.registered for a, c in self._connections.items() if a != signer)
        if not registered and unregistered >= MAX_UNREGISTERED:
            await _close(socket, 1008, "not a registered provider with stake, and the relay's quota for those is full")
            return
        connection = _Connection(signer, socket, registered)
        old = self._connections.get(signer)
        self._connections[signer] = connection
        if old is not None:
            await _close(old.socket, 1000, "replaced by a newer connection")
        await socket.send_text(json.dumps({"t": "ok"}))
        log.info("provider %s connected to the relay", signer)
        try:
            while True:
                text = await socket.receive_text()
                if len(text) > MAX_FRAME:
                    await _close(socket, 1009, f"frames are at most {MAX_FRAME} characters")
                    break
                frame = json.loads(text)
                if not isinstance(frame, dict):
                    continue
                stream_id = int(frame.get("id", -1))
                queue = connection.streams.get(stream_id)
                if queue is None:
                    continue  # no request waits for it: dropped
                while connection.full():  # backpressure: read nothing more until readers catch up
                    connection.drained.clear()
                    try:
                        await asyncio.wait_for(connection.drained.wait(), STALL_S)
                    except TimeoutError:
                        stalled = max(connection.streams, key=lambda i: connection.streams[i].qsize())
                        connection.drop(stalled)  # its reader is gone or stuck: the stream breaks off
                if stream_id not in connection.streams:
                    continue
                connection.queued_frames += 1
                connection.queued_bytes += len(str(frame.get("body", "")))
                queue.put_nowait(frame)
        except (WebSocketDisconnect, ValueError, RuntimeError, TypeError):
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
        client = _client_of(request)
        connection.next_id += 1
        stream_id = connection.next_id
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        connection.streams[stream_id] = queue
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        headers[RELAY_CLIENT_HEADER] = client  # who the relay admitted: the provider's rate limits see them
        frame = {"t": "req", "id": stream_id, "method": request.method, "path": "/" + path,
                 "query": request.url.query, "headers": headers, "body": base64.b64encode(body).decode()}  # fmt: skip
        try:
            await connection.send(frame)
            head = await asyncio.wait_for(queue.get(), timeout=HEAD_TIMEOUT)
        except (TimeoutError, RuntimeError, WebSocketDisconnect):
            head = None
        connection.taken(head)
        if head is None or head.get("t") != "head":
            connection.drop(stream_id)
            return _error(502, "relay_unavailable", f"provider {address} did not answer through the relay")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    frame = await queue.get()
                    connection.taken(frame)
                    if frame is None:
                        raise ConnectionError(f"relay connection of {address} lost mid-answer")
                    if frame.get("t") == "end":
                        return
                    yield base64.b64decode(frame.get("body", ""))
            finally:
                connection.drop(stream_id)

        media = dict(head.get("headers", {})).get("content-type")
        return StreamingResponse(chunks(), status_code=int(head["status"]), media_type=media)

    def mount(self, app: FastAPI) -> None:
        @app.websocket(RELAY_PATH)
        async def relay_socket(socket: WebSocket) -> None:
            await self.accept(socket)

        @app.api_route(RELAY_PATH + "/{address}/{path:path}", methods=["GET", "POST"], include_in_schema=False)
        async def relayed(address: str, path: str, request: Request) -> Response:
            if self.admission is not None:  # the gateway's API keys and rate limits, as on its OpenAI routes
                try:
                    key = self.admission.api_key(request)
                    self.admission.throttle(request, key)
                except Exception as exc:
                    return self.admission_error(exc)
                request.state.relay_client = _key_client(key) if key else None
            return await self.forward(address, path, request)

    @staticmethod
    def admission_error(exc: Exception) -> JSONResponse:
        return openai_error(exc)


def _key_client(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _client_of(request: Request) -> str:
    """Who the relay admitted this request for: its API key's hash, or its peer address."""
    vouched = getattr(request.state, "relay_client", None)
    if vouched:
        return str(vouched)
    return "peer:" + (request.client.host if request.client else "?")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError):
        await socket.close(code=code, reason=reason)

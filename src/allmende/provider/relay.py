"""A provider that accepts no inbound connections: it dials out to a relay (a gateway's
`/v1/relay` WebSocket), proves its address by signing the relay's nonce together with the
relay's own name (`host:port` as dialled) and its chain (allmende.api.relay: a relay cannot
replay the login at another gateway), and answers the
requests the relay forwards by running them through its own ASGI app, streaming each answer
back frame by frame. Its endpoint on chain is `<relay>/v1/relay/<address>`. Each forwarded
request is run as coming from the client the relay admitted it for (`x-allmende-relay-client`),
so the provider's per-client rate limits hold per relayed client, not for the relay as one.
See allmende.gateway.relay for the frames. The connection is re-dialled after a loss.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from allmende.api.headers import RELAY_CLIENT_HEADER
from allmende.api.relay import challenge_text, relay_name

log = logging.getLogger("allmende.provider.relay")

RETRY_S = 1.0


def relay_socket_url(relay: str) -> str:
    """http://gateway:8000[/v1] → ws://gateway:8000/v1/relay."""
    base = relay.strip().rstrip("/").removesuffix("/v1")
    return "ws" + base.removeprefix("http") + "/v1/relay"


def relayed_endpoint(relay: str, address: str) -> str:
    """The endpoint registered on chain for a provider reached through `relay`."""
    return relay.strip().rstrip("/").removesuffix("/v1") + f"/v1/relay/{address}"


async def serve_relayed(app: Any, relay: str, account: LocalAccount, stop: asyncio.Event, chain_id: int) -> None:
    """Keep a connection to the relay until `stop` is set, answering what it forwards."""
    url = relay_socket_url(relay)
    while not stop.is_set():
        try:
            async with connect(url, max_size=8 * 1024 * 1024, open_timeout=10) as socket:
                await _hello(socket, account, relay_name(relay), chain_id)
                log.info("connected to the relay %s", url)
                await _pump(socket, app, stop)
        except (OSError, TimeoutError, WebSocketException, ValueError, KeyError) as exc:
            if not stop.is_set():
                log.warning("relay %s: %s; dialling again in %.0fs", url, exc, RETRY_S)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=RETRY_S)


async def _hello(socket: ClientConnection, account: LocalAccount, relay: str, chain_id: int) -> None:
    challenge = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    signed = account.sign_message(encode_defunct(text=challenge_text(str(challenge["nonce"]), relay, chain_id)))
    hello = {"t": "hello", "address": account.address, "relay": relay, "chain_id": chain_id,
             "signature": signed.signature.to_0x_hex()}  # fmt: skip
    await socket.send(json.dumps(hello))
    accepted = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    if accepted.get("t") != "ok":
        raise ValueError(f"the relay refused this node: {accepted}")


async def _pump(socket: ClientConnection, app: Any, stop: asyncio.Event) -> None:
    send_lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def send(frame: dict[str, Any]) -> None:
        async with send_lock:
            await socket.send(json.dumps(frame))

    stopping = asyncio.create_task(stop.wait())
    try:
        while True:
            receiving = asyncio.create_task(socket.recv())
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                receiving.cancel()
                return
            frame = json.loads(receiving.result())
            if frame.get("t") == "req":
                task = asyncio.create_task(_answer(app, frame, send))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        stopping.cancel()
        for task in tasks:
            task.cancel()


async def _answer(app: Any, frame: dict[str, Any], send: Any) -> None:
    """Run one forwarded request through the ASGI app, streaming the answer back."""
    stream_id = frame["id"]
    body = base64.b64decode(frame.get("body", ""))
    path = str(frame.get("path", "/"))
    headers = {str(k).lower(): str(v) for k, v in dict(frame.get("headers", {})).items()}
    client = headers.pop(RELAY_CLIENT_HEADER, "relay")[:80]  # the client the relay vouches for
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": str(frame.get("method", "GET")),
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": str(frame.get("query", "")).encode(),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": (client, 0), "server": ("relay", 0),
    }  # fmt: skip
    delivered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not delivered.is_set():
            delivered.set()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect until the relay connection goes
        return {"type": "http.disconnect"}

    async def reply(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            await send({"t": "head", "id": stream_id, "status": message["status"], "headers": headers})
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                await send({"t": "data", "id": stream_id, "body": base64.b64encode(chunk).decode()})
            if not message.get("more_body", False):
                await send({"t": "end", "id": stream_id})

    try:
        await app(scope, receive, reply)
    except (WebSocketException, OSError) as exc:
        log.info("relayed request %s cut off: %s", stream_id, exc)

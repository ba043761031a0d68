"""What a relay connection may do (gateway.relay, provider.relay; issue 29): a login names the
relay and the chain, so a malicious relay cannot replay it at another gateway; unregistered
keys get a small bounded quota of connections; a provider that floods its connection is
held to the per-connection caps (the relay stops reading: backpressure) and an oversized
frame closes it; the relayed route needs the gateway's API key, is rate-limited like the
OpenAI routes, and the provider sees each relayed client as its own peer.

A real uvicorn server in a thread (the WebSocket needs one), providers as `websockets`
clients or the real provider side (`serve_relayed`)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from allmende.api.relay import challenge_text, relay_name
from allmende.chain.anvil import free_port
from allmende.gateway import relay as relay_module
from allmende.gateway.relay import RELAY_PATH, Relay
from allmende.gateway.serving import Admission, GatewayLimits
from allmende.provider.relay import serve_relayed

CHAIN = 31337


class Server:
    """`relay` mounted on an app, served by uvicorn on a free port in a thread."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.port = free_port()
        app = FastAPI()
        relay.mount(app)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", ws_max_queue=4)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}{RELAY_PATH}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture
def served() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.stop()


def start(servers: list[Server], relay: Relay) -> Server:
    server = Server(relay)
    servers.append(server)
    return server


async def login(url: str, account: Any, relay: str, chain_id: int = CHAIN) -> tuple[ClientConnection, dict[str, Any]]:
    """Dial `url` and log in naming `relay`; the relay's answer (ok, or the close reason)."""
    socket = await connect(url, max_size=None)
    nonce = json.loads(await socket.recv())["nonce"]
    signed = account.sign_message(encode_defunct(text=challenge_text(nonce, relay, chain_id)))
    hello = {"t": "hello", "address": account.address, "relay": relay, "chain_id": chain_id,
             "signature": signed.signature.to_0x_hex()}  # fmt: skip
    await socket.send(json.dumps(hello))
    try:
        return socket, json.loads(await socket.recv())
    except ConnectionClosed as closed:
        return socket, {"closed": closed.rcvd.reason if closed.rcvd else ""}


def test_a_login_a_malicious_relay_replays_at_another_gateway_is_refused(served: list[Server]) -> None:
    gateway = start(served, Relay([f"127.0.0.1:{free_port()}"], CHAIN))  # its own name: set below
    gateway.relay.names = {relay_name(gateway.url)}
    provider = Account.create()

    async def go() -> list[dict[str, Any]]:
        answers = []
        # the evil relay the provider dialled passes it the gateway's nonce; the provider signs
        # what it dialled (evil.example:8000), which the gateway refuses
        for relay, chain in (
            ("evil.example:8000", CHAIN),
            (relay_name(gateway.url), 1),
            (relay_name(gateway.url), CHAIN),
        ):
            socket, answer = await login(gateway.ws, provider, relay, chain)
            answers.append(answer)
            await socket.close()
        return answers

    replayed, other_chain, own = asyncio.run(go())
    assert "for the relay evil.example:8000, not this one" in replayed["closed"]
    assert "for chain 1" in other_chain["closed"]
    assert own == {"t": "ok"}


def test_a_signature_over_another_relays_name_does_not_pass_as_this_ones(served: list[Server]) -> None:
    gateway = start(served, Relay(["127.0.0.1:1"], CHAIN))
    gateway.relay.names = {relay_name(gateway.url)}
    provider = Account.create()

    async def go() -> dict[str, Any]:
        socket = await connect(gateway.ws)
        nonce = json.loads(await socket.recv())["nonce"]
        signed = provider.sign_message(encode_defunct(text=challenge_text(nonce, "evil.example:8000", CHAIN)))
        hello = {
            "t": "hello",
            "address": provider.address,
            "relay": relay_name(gateway.url),
            "chain_id": CHAIN,
            "signature": signed.signature.to_0x_hex(),
        }  # fmt: skip: the name swapped after signing
        await socket.send(json.dumps(hello))
        try:
            return dict(json.loads(await socket.recv()))
        except ConnectionClosed as closed:
            return {"closed": closed.rcvd.reason if closed.rcvd else ""}

    assert "does not match" in asyncio.run(go())["closed"]


def test_unregistered_keys_get_a_small_bounded_quota_staked_providers_do_not(served: list[Server]) -> None:
    staked = Account.create()
    gateway = start(served, Relay((), CHAIN, staked=lambda a: a == staked.address))

    async def go() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        name = relay_name(gateway.url)
        held = [await login(gateway.ws, Account.create(), name) for _ in range(relay_module.MAX_UNREGISTERED)]
        extra_socket, extra = await login(gateway.ws, Account.create(), name)
        staked_socket, registered = await login(gateway.ws, staked, name)
        for socket, _ in [*held, (extra_socket, None), (staked_socket, None)]:
            await socket.close()
        return [answer for _, answer in held], extra, registered

    held, extra, registered = asyncio.run(go())
    assert held == [{"t": "ok"}] * relay_module.MAX_UNREGISTERED
    assert "quota for those is full" in extra["closed"]
    assert registered == {"t": "ok"}


class FloodingSocket:
    """The relay's side of a provider's WebSocket, fed from a list: counts what the relay reads."""

    def __init__(self, frames: list[str]) -> None:
        self.frames, self.pulled, self.sent, self.closed = frames, 0, [], None
        self.more = asyncio.Event()

    async def accept(self) -> None:
        pass

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def add(self, frames: list[str]) -> None:
        self.frames.extend(frames)
        self.more.set()

    async def receive_text(self) -> str:
        while self.pulled == len(self.frames):  # nothing more to send: wait (as an idle provider does)
            self.more.clear()
            await self.more.wait()
        self.pulled += 1
        return self.frames[self.pulled - 1]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


def hello_for(relay: Relay, account: Any) -> FloodingSocket:
    """A socket that logs `account` in, answering the nonce the relay sends."""
    socket = FloodingSocket([])

    async def send_text(text: str) -> None:
        frame = json.loads(text)
        socket.sent.append(frame)
        if frame.get("t") == "challenge":
            signed = account.sign_message(encode_defunct(text=challenge_text(frame["nonce"], "relay:80", CHAIN)))
            hello = {"t": "hello", "address": account.address, "relay": "relay:80", "chain_id": CHAIN,
                     "signature": signed.signature.to_0x_hex()}  # fmt: skip
            socket.add([json.dumps(hello)])

    socket.send_text = send_text  # type: ignore[method-assign]
    return socket


def test_a_provider_flooding_its_connection_is_held_to_the_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: small caps; a request in flight whose reader reads nothing; 200 frames of 512 KiB
    monkeypatch.setattr(relay_module, "MAX_QUEUED_FRAMES", 8)
    monkeypatch.setattr(relay_module, "MAX_QUEUED_BYTES", 2 * 1024 * 1024)
    relay, provider = Relay(["relay:80"], CHAIN), Account.create()
    chunk = base64.b64encode(b"x" * (512 * 1024)).decode()
    flood = [json.dumps({"t": "data", "id": 1, "body": chunk}) for _ in range(200)]
    socket = hello_for(relay, provider)

    async def go() -> tuple[int, int, int, int]:
        reader_queue: asyncio.Queue[Any] = asyncio.Queue()
        accepting = asyncio.create_task(relay.accept(socket))  # type: ignore[arg-type]
        while provider.address not in relay.connected():
            await asyncio.sleep(0.01)
        connection = relay._connections[provider.address]
        connection.streams[1] = reader_queue  # a request in flight, its reader stuck
        socket.add(flood)
        await asyncio.sleep(0.5)
        pulled, queued = socket.pulled, connection.queued_bytes
        for _ in range(2):  # the reader takes two frames: the relay reads on, as far as the caps allow
            connection.taken(reader_queue.get_nowait())
        await asyncio.sleep(0.2)
        pulled_after, queued_after = socket.pulled, connection.queued_bytes
        accepting.cancel()
        return pulled, queued, pulled_after, queued_after

    # Execute
    pulled, queued, pulled_after, queued_after = asyncio.run(go())

    # Assert: the relay stopped reading at the bytes cap (3 frames reach 2 MiB; a 4th read waits),
    # held no more, and read exactly as many more frames as the reader took
    frame_chars = len(chunk)
    assert queued <= 2 * 1024 * 1024 + frame_chars and pulled <= 1 + 5  # the hello and the frames that fit
    assert pulled < 1 + len(flood) and queued > 0  # backpressure: 195 of 200 frames were never read
    assert pulled_after - pulled == 2 and queued_after == queued


def test_an_oversized_frame_closes_the_connection() -> None:
    relay, provider = Relay(["relay:80"], CHAIN), Account.create()
    socket = hello_for(relay, provider)

    async def go() -> None:
        accepting = asyncio.create_task(relay.accept(socket))  # type: ignore[arg-type]
        while provider.address not in relay.connected():
            await asyncio.sleep(0.01)
        socket.add(["y" * (relay_module.MAX_FRAME + 1)])
        await asyncio.wait_for(accepting, 5)

    asyncio.run(go())

    assert socket.closed is not None and socket.closed[0] == 1009
    assert provider.address not in relay.connected()


def echo_client_app() -> Any:
    """A provider app that answers with the client it sees."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        await receive()
        body = json.dumps({"client": scope["client"][0]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_the_relayed_route_needs_a_key_is_rate_limited_and_each_client_is_its_own_peer(served: list[Server]) -> None:
    # Prepare: a gateway with API keys and a tight rate limit; the real provider side dialled in
    registry = CollectorRegistry()
    limits = GatewayLimits(api_keys=frozenset({"k1", "k2"}), rate_limit=0.001, rate_burst=2)
    admission = Admission(
        limits, Counter("r", "r", ["endpoint", "status"], registry=registry), Gauge("g", "g", registry=registry)
    )
    gateway = start(served, Relay((), CHAIN, admission=admission))
    gateway.relay.names = {relay_name(gateway.url)}
    provider = Account.create()

    async def go() -> list[tuple[int, Any]]:
        stop = asyncio.Event()
        dialled = asyncio.create_task(serve_relayed(echo_client_app(), gateway.url, provider, stop, CHAIN))
        path = f"{RELAY_PATH}/{provider.address}/v1/info"
        try:
            for _ in range(100):
                if provider.address in gateway.relay.connected():
                    break
                await asyncio.sleep(0.05)
            out = []
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
                for key in (None, "k1", "k1", "k1", "k2"):
                    headers = {"authorization": f"Bearer {key}"} if key else {}
                    reply = await http.get(path, headers=headers)
                    out.append((reply.status_code, reply.json()))
            return out
        finally:
            stop.set()
            await dialled

    anonymous, first, second, third, other = asyncio.run(go())
    assert anonymous[0] == 401
    assert first[0] == second[0] == 200 and third[0] == 429  # bursts of 2 per key, as on the OpenAI routes
    assert other[0] == 200  # another key has its own limit
    assert first[1]["client"].startswith("key:") and first[1]["client"] == second[1]["client"] != other[1]["client"]

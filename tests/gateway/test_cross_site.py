"""A web page cannot spend the user's gateway (issue #39), in process: the real gateway app,
guarded as `allmende gateway` guards it (`GatewayConfig.guard`), over a fake provider.

Each attack is what a page the user opens can send: a simple cross-site POST (text/plain, a
form, `no-cors`), a DNS-rebinding page whose Host is its own name, a preflight from another
origin. Each is refused before any work is done: no provider is asked, no receipt is kept,
nothing is owed. The gateway's own pages, the openai client and an allowed web app still work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import openai
import pytest
from starlette.datastructures import Headers
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from allmende.api.guard import GuardConfig, host_name
from allmende.gateway.app import create_app
from allmende.gateway.node import GatewayConfig
from allmende.gateway.relay import RELAY_PATH, Relay
from allmende.provider.app import create_app as create_provider_app
from allmende.provider.node import ProviderConfig
from allmende.validator.app import create_app as create_validator_app
from allmende.vault.node import VaultConfig
from allmende.vault.node import guard_of as vault_guard
from tests.gateway.fakes import CHAIN_ID, FakeProvider, Network, network

T = TypeVar("T")
GATEWAY = "127.0.0.1:8000"  # where the user's gateway listens
APP = "https://app.example"  # a web app the operator allowed (--allow-origin)
EVIL = "http://evil.example"
MESSAGES: Any = [{"role": "user", "content": "spend it"}]
CHAT = {"model": "fake", "messages": MESSAGES, "max_tokens": 2}


def gateway_config(**options: Any) -> GatewayConfig:
    fields: dict[str, Any] = {"rpc_url": "", "key": b"", "deployments": Path(), "state_dir": Path(), "port": 8000}
    return GatewayConfig(**{**fields, "allowed_origins": (APP,), **options})


def guarded(tmp: Path, unguarded: bool = False, **options: Any) -> tuple[Network, Any]:
    """A gateway app over one fake provider, guarded as the node guards it with `options`."""
    net = network(tmp, [FakeProvider(tmp)])
    contracts = net.service.directory.contracts  # the explorer's chain view reads these lazily
    for name in ("channels", "verdicts", "governor"):
        if not hasattr(contracts, name):
            setattr(contracts, name, SimpleNamespace())
        getattr(contracts, name).contract = None
    contracts.deployment = SimpleNamespace(deploy_block=0)
    app = create_app(net.service, guard=None if unguarded else gateway_config(**options).guard)
    Relay().mount(app)
    return net, app


def run(app: Any, call: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{GATEWAY}") as http:
            return await call(http)

    return asyncio.run(go())


def money(net: Network) -> tuple[int, int, list[int]]:
    """What the gateway has paid or owes: receipts kept, provider requests sent, owed per channel."""
    owed = [net.store.total_owed(channel) for _, channel, _ in net.store.all_channels()]
    return net.store.receipt_count(), sum(net.hosts.hits.values()), owed


def assert_refused(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert "access-control-allow-origin" not in reply.headers


ATTACKS = {
    # a page's simple request: no preflight, the browser sends it and hides the answer
    "text-plain-cross-site": ("POST", "/v1/chat/completions", {"origin": EVIL, "content-type": "text/plain"}),
    "form-cross-site": (
        "POST",
        "/v1/chat/completions",
        {"origin": EVIL, "content-type": "application/x-www-form-urlencoded"},
    ),
    "multipart-cross-site": ("POST", "/v1/completions", {"origin": EVIL, "content-type": "multipart/form-data"}),
    "json-cross-site": ("POST", "/v1/chat/completions", {"origin": EVIL, "content-type": "application/json"}),
    "sandboxed-page": ("POST", "/v1/chat/completions", {"origin": "null", "content-type": "text/plain"}),
    "another-local-port": (
        "POST",
        "/v1/chat/completions",
        {"origin": "http://127.0.0.1:3000", "content-type": "application/json"},
    ),
    "embeddings-cross-site": ("POST", "/v1/embeddings", {"origin": EVIL, "content-type": "text/plain"}),
    "responses-cross-site": ("POST", "/v1/responses", {"origin": EVIL, "content-type": "text/plain"}),
    "messages-cross-site": ("POST", "/v1/messages", {"origin": EVIL, "content-type": "text/plain"}),
    # a browser that sends no Origin with a form post still sends its content type
    "text-plain-without-origin": ("POST", "/v1/chat/completions", {"content-type": "text/plain"}),
    "no-content-type": ("POST", "/v1/chat/completions", {}),
    # DNS rebinding: the page is same-origin under its own name, which the browser sends as Host
    "rebinding-chat": (
        "POST",
        "/v1/chat/completions",
        {
            "host": "rebind.evil.example:8000",
            "origin": "http://rebind.evil.example:8000",
            "content-type": "application/json",
        },
    ),
    "rebinding-models": ("GET", "/v1/models", {"host": "rebind.evil.example:8000"}),
    "rebinding-explorer-money": ("GET", "/explorer/api/money", {"host": "rebind.evil.example:8000"}),
    "rebinding-explorer-page": ("GET", "/", {"host": "rebind.evil.example"}),
    "rebinding-relay": ("POST", f"{RELAY_PATH}/0x{'ab' * 20}/v1/infer", {"host": "rebind.evil.example:8000"}),
    # reading the explorer's data from a page on another origin
    "cross-site-explorer-read": ("GET", "/explorer/api/activity", {"origin": EVIL}),
    # a preflight from another origin: refused, and no CORS header says otherwise
    "preflight-from-elsewhere": (
        "OPTIONS",
        "/v1/chat/completions",
        {"origin": EVIL, "access-control-request-method": "POST", "access-control-request-headers": "content-type"},
    ),
}
EXPECTED = {
    "text-plain-without-origin": (415, "unsupported_media_type"),
    "no-content-type": (415, "unsupported_media_type"),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_a_web_page_cannot_make_the_gateway_pay(tmp_path: Path, attack: str) -> None:
    # Prepare
    net, app = guarded(tmp_path)
    method, path, headers = ATTACKS[attack]
    before = money(net)
    status, code = EXPECTED.get(attack) or (
        (403, "host_not_allowed") if "host" in headers else (403, "origin_not_allowed")
    )

    # Execute: the body is a valid chat request, which an unguarded gateway serves and pays for
    reply = run(app, lambda http: http.request(method, path, content=json.dumps(CHAT), headers=headers))

    # Assert
    assert_refused(reply, status, code)
    assert money(net) == before == (0, 0, [0])


def test_the_attacks_are_served_by_an_unguarded_gateway(tmp_path: Path) -> None:
    """The control: without the guard, the simple cross-site POST is served and paid for."""
    net, app = guarded(tmp_path, unguarded=True)
    _, path, headers = ATTACKS["text-plain-cross-site"]

    reply = run(app, lambda http: http.post(path, content=json.dumps(CHAT), headers=headers))

    assert reply.status_code == 200
    assert money(net)[0] == 1 and money(net)[2][0] > 0


@pytest.mark.parametrize(
    ("host", "options"),
    [
        ("127.0.0.1:8000", {}),
        ("localhost:8000", {}),
        ("[::1]:8000", {}),
        ("localhost", {}),
        ("127.0.0.2:9999", {}),
        ("gateway.lan:8000", {"public_host": "gateway.lan"}),
        ("gw.example.org", {"allowed_hosts": ("gw.example.org",)}),
        ("a.proxy.example", {"allowed_hosts": ("*.proxy.example",)}),
        ("192.168.1.10:8000", {"host": "192.168.1.10"}),
        ("10.1.2.3:8000", {"host": "0.0.0.0"}),  # every interface: any address it is reached at
        ("[fd00::7]:8000", {"host": "::"}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_openai_client_is_served_at_every_name_of_the_gateway(
    tmp_path: Path, host: str, options: dict[str, Any]
) -> None:
    net, app = guarded(tmp_path, **options)

    async def call(http: httpx.AsyncClient) -> Any:
        http.headers["host"] = host
        client = openai.AsyncOpenAI(base_url=f"http://{GATEWAY}/v1", api_key="k", http_client=http, max_retries=0)
        return await client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=2)

    reply = run(app, call)
    assert len(reply.choices[0].message.content or "") == 2
    assert money(net)[0] == 1


@pytest.mark.parametrize(
    ("host", "options"),
    [
        ("10.1.2.3:8000", {}),  # bound to loopback: its LAN address is not one of its names
        ("gateway.lan:8000", {"host": "0.0.0.0"}),  # every interface serves IP literals, not names
        ("evil.proxy.example.com", {"allowed_hosts": ("*.proxy.example",)}),
        ("localhost.evil.example", {}),
        ("127.0.0.1.evil.example", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_other_host_names_are_refused(tmp_path: Path, host: str, options: dict[str, Any]) -> None:
    net, app = guarded(tmp_path, **options)

    reply = run(app, lambda http: http.post("/v1/chat/completions", json=CHAT, headers={"host": host}))

    assert_refused(reply, 403, "host_not_allowed")
    assert money(net) == (0, 0, [0])


def test_the_explorer_page_and_its_playground_post_are_served_to_the_gateways_own_origin(tmp_path: Path) -> None:
    net, app = guarded(tmp_path)
    own = {"origin": f"http://{GATEWAY}"}  # what a browser sends with the playground's POST

    async def call(http: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        page = await http.get("/")
        stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        chat = await http.post("/v1/chat/completions", json=stream, headers=own)
        localhost = await http.get("/v1/models", headers={"host": "localhost:8000", "origin": "http://localhost:8000"})
        return page, chat, localhost

    page, chat, localhost = run(app, call)

    assert page.status_code == 200 and "<html" in page.text.lower()
    assert chat.status_code == 200 and chat.text.rstrip().endswith("data: [DONE]")
    assert localhost.status_code == 200
    assert "access-control-allow-origin" not in chat.headers  # same origin: no CORS needed
    assert money(net)[0] == 1


def test_an_allowed_web_app_gets_its_preflight_answered_and_its_request_served(tmp_path: Path) -> None:
    net, app = guarded(tmp_path)
    asked = "content-type, authorization, x-stainless-os"  # what the openai SDK sends from a browser

    async def call(http: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        preflight = await http.options(
            "/v1/chat/completions",
            headers={"origin": APP, "access-control-request-method": "POST", "access-control-request-headers": asked},
        )
        served = await http.post("/v1/chat/completions", json=CHAT, headers={"origin": APP})
        typed_wrong = await http.post(
            "/v1/chat/completions", content=json.dumps(CHAT), headers={"origin": APP, "content-type": "text/plain"}
        )
        return preflight, served, typed_wrong

    preflight, served, typed_wrong = run(app, call)

    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert set(asked.split(", ")) <= {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert "Origin" in preflight.headers["vary"]
    assert served.status_code == 200, served.text
    assert served.headers["access-control-allow-origin"] == APP and "Origin" in served.headers["vary"]
    # still JSON only; the allowed app may read why
    assert typed_wrong.status_code == 415 and typed_wrong.headers["access-control-allow-origin"] == APP
    assert typed_wrong.json()["error"]["code"] == "unsupported_media_type"
    assert money(net)[0] == 1


def test_any_origin_when_the_operator_says_so(tmp_path: Path) -> None:
    net, app = guarded(tmp_path, allowed_origins=("*",))

    reply = run(app, lambda http: http.post("/v1/chat/completions", json=CHAT, headers={"origin": EVIL}))

    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == EVIL
    assert money(net)[0] == 1


@pytest.mark.parametrize(
    "headers",
    [{"host": "rebind.evil.example:8000"}, {"host": GATEWAY, "origin": EVIL}],
    ids=["rebinding", "cross-site"],
)
def test_the_relay_socket_refuses_web_pages(tmp_path: Path, headers: dict[str, str]) -> None:
    """Browsers do not apply CORS to WebSockets: the handshake itself is checked."""
    _, app = guarded(tmp_path)
    with TestClient(app, base_url=f"http://{GATEWAY}") as client:
        with client.websocket_connect(f"ws://{GATEWAY}{RELAY_PATH}") as socket:  # a provider's (no Origin) is accepted
            assert json.loads(socket.receive_text())["t"] == "challenge"
        refused = pytest.raises(WebSocketDisconnect)
        with refused, client.websocket_connect(f"ws://{GATEWAY}{RELAY_PATH}", headers=headers):
            pass


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost.", "localhost"),
        ("[::1]:8000", "::1"),
        ("::1", "::1"),
        ("http://gw.example:8000/v1", "gw.example"),
        ("https://user@gw.example", "gw.example"),
        ("gw.example", "gw.example"),
    ],
    ids=lambda v: v,
)
def test_host_names_are_read_without_port_case_or_brackets(value: str, name: str) -> None:
    assert host_name(value) == name


def test_a_node_guard_serves_its_bind_address_and_public_url() -> None:
    guard = GuardConfig.serving("10.0.0.5", ["http://203.0.113.7:9000"], ["node.example"])

    assert all(guard.host_allowed(h) for h in ("10.0.0.5:9000", "203.0.113.7:9000", "node.example", "localhost"))
    assert not guard.host_allowed("198.51.100.1:9000") and not guard.host_allowed("evil.example")
    assert guard.host_allowed(None)  # the relay's forwarded requests carry no Host; no browser sends one


# ------------------------------------------------------------------------------------------
# The same rules on the other nodes that hold a key or data, configured as their nodes do.


def provider_guard(**options: Any) -> GuardConfig:
    fields: dict[str, Any] = {"rpc_url": "", "key": b"", "deployments": Path(), "models": [], "state_dir": Path()}
    return ProviderConfig(**{**fields, **options}).guard


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/v1/info", {"host": "203.0.113.7:9000"}, 200, None),  # its public URL, as gateways reach it
        ("GET", "/v1/info", {"host": "10.9.8.7:9000"}, 200, None),  # another of its addresses (bound to 0.0.0.0)
        ("GET", "/v1/info", {"host": "rebind.evil.example:9000"}, 403, "host_not_allowed"),
        ("POST", "/v1/infer", {"origin": EVIL, "content-type": "application/json"}, 403, "origin_not_allowed"),
        ("POST", "/v1/infer", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ],
    ids=["public-url", "any-address", "rebinding", "cross-site", "text-plain"],
)
def test_a_provider_serves_its_own_names_and_refuses_web_pages(
    tmp_path: Path, method: str, path: str, headers: dict[str, str], status: int, code: str | None
) -> None:
    provider = FakeProvider(tmp_path)
    guard = provider_guard(host="0.0.0.0", public_url="http://203.0.113.7:9000")
    app = create_provider_app(provider.service, CHAIN_ID, guard=guard)

    reply = run(app, lambda http: http.request(method, path, content=b"{}", headers=headers))

    assert reply.status_code == status, reply.text
    if code is not None:
        assert reply.json()["error"]["code"] == code
    assert provider.store.all_ledger() == []  # nothing admitted, nothing owed


def test_a_validator_serves_its_endpoint_and_refuses_a_rebinding_page() -> None:
    validator: Any = SimpleNamespace(address="0x" + "11" * 20, store=SimpleNamespace(audit_count=lambda: 0))
    app = create_validator_app(validator, GuardConfig.serving("127.0.0.1", ["http://validator.example:9500"]))

    async def call(http: httpx.AsyncClient) -> list[httpx.Response]:
        hosts = ("validator.example:9500", "localhost:9500", "rebind.evil.example:9500")
        return [await http.get("/healthz", headers={"host": host}) for host in hosts]

    served, local, refused = run(app, call)

    assert served.status_code == local.status_code == 200
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize(
    ("content_type", "refused"),
    [("application/json", False), ("application/x-protobuf", False), ("text/plain", True), (None, True)],
    ids=["json", "flower-protobuf", "text-plain", "untyped"],
)
def test_a_vault_takes_json_and_flower_messages_only(content_type: str | None, refused: bool) -> None:
    config = VaultConfig(rpc_url="", key=b"", deployments=Path(), data=[], state_dir=Path(), host="0.0.0.0")
    headers = Headers({"host": "10.0.0.9:9500", **({"content-type": content_type} if content_type else {})})

    why = vault_guard(config).refusal("POST", headers)

    assert (why is not None) == refused
    assert why is None or why.code == "unsupported_media_type"

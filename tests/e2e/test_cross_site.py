"""A web page cannot spend the user's gateway (issue #39), through real HTTP against `allmende up`:
what a page the user opens can make the browser send — a simple cross-site POST (text/plain, a
form, no-cors), a DNS-rebinding page's requests under its own Host, a preflight from another
origin — sent by 32 clients at once, every one refused, and the gateway's channels, what it
owes and the receipts it keeps are unchanged: no money moved. The providers refuse the same.
The openai client and the web app the network allows (`up --allow-origin`) are still served."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx

from allmende.payer.store import GatewayStore
from tests.e2e.conftest import WEB_APP, Network

CLIENTS = 32
ORIGIN = "origin_not_allowed"
EVIL = "http://evil.example"
CHAT = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "spend it"}], "max_tokens": 4}


def money(network: Network) -> dict[str, Any]:
    """What the gateway has paid or owes: its channels and deposits, owed per channel, receipts kept."""
    store = GatewayStore(network.root / "run" / "gateway" / "gateway.db")  # read beside the gateway (WAL)
    channels = sorted(store.all_channels())
    owed = {provider: store.total_owed(channel) for provider, channel, _ in channels}
    return {"channels": channels, "owed": owed, "receipts": store.receipt_count()}


def attacks(gateway: str) -> list[tuple[str, str, dict[str, str], int, str]]:
    """(method, url, headers, status, code): each what a browser sends for a hostile page."""
    port = urlsplit(gateway).port
    rebind = f"rebind.evil.example:{port}"
    chat, models = f"{gateway}/v1/chat/completions", f"{gateway}/v1/models"
    form = "application/x-www-form-urlencoded"
    return [
        ("POST", chat, {"origin": EVIL, "content-type": "text/plain"}, 403, "origin_not_allowed"),
        ("POST", chat, {"origin": EVIL, "content-type": form}, 403, "origin_not_allowed"),
        ("POST", f"{gateway}/v1/completions", {"origin": "null", "content-type": "text/plain"}, 403, ORIGIN),
        ("POST", chat, {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ("POST", chat, {"host": rebind, "origin": f"http://{rebind}", "content-type": "application/json"}, 403,
         "host_not_allowed"),
        ("GET", f"{gateway}/explorer/api/money", {"host": rebind}, 403, "host_not_allowed"),
        ("GET", models, {"origin": EVIL}, 403, "origin_not_allowed"),
        ("OPTIONS", chat, {"origin": EVIL, "access-control-request-method": "POST",
                           "access-control-request-headers": "content-type"}, 403, "origin_not_allowed"),
    ]  # fmt: skip


def test_no_web_page_request_is_served_or_paid_by_32_clients_at_once(network: Network) -> None:
    # Prepare: one answer first, so that the gateway has open channels whose balances can move
    network.client.chat.completions.create(model="allmende:tiny", messages=CHAT["messages"], max_tokens=2)  # type: ignore[arg-type]
    gateway = network.data["gateway_url"].removesuffix("/v1")
    tried = attacks(gateway)
    before = money(network)
    assert before["channels"] and before["receipts"] > 0

    # Execute: every attack, by 32 clients at once, each body a chat request worth paying for
    def attempt(i: int) -> tuple[int, httpx.Response]:
        method, url, headers, _, _ = tried[i % len(tried)]
        return i, httpx.request(method, url, content=json.dumps(CHAT), headers=headers, timeout=60)

    with ThreadPoolExecutor(CLIENTS) as pool:
        replies = list(pool.map(attempt, range(CLIENTS * 2)))

    # Assert: each refused as it should be, in OpenAI's error shape, and not a cent moved
    for i, reply in replies:
        method, url, headers, status, code = tried[i % len(tried)]
        assert reply.status_code == status, (method, url, headers, reply.text)
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
        assert "access-control-allow-origin" not in reply.headers
    assert money(network) == before


def test_the_providers_refuse_web_pages_too(network: Network) -> None:
    before = money(network)
    for provider in network.data["providers"]:
        url = provider["url"]
        rebind = f"rebind.evil.example:{urlsplit(url).port}"

        rebound = httpx.get(f"{url}/v1/info", headers={"host": rebind}, timeout=30)
        cross_site = httpx.post(f"{url}/v1/infer", json={}, headers={"origin": EVIL}, timeout=30)
        text = httpx.post(f"{url}/v1/infer", content=b"{}", headers={"content-type": "text/plain"}, timeout=30)

        assert (rebound.status_code, rebound.json()["error"]["code"]) == (403, "host_not_allowed")
        assert (cross_site.status_code, cross_site.json()["error"]["code"]) == (403, "origin_not_allowed")
        assert (text.status_code, text.json()["error"]["code"]) == (415, "unsupported_media_type")
        assert httpx.get(f"{url}/v1/info", timeout=30).status_code == 200  # as gateways reach it
    assert money(network) == before


def test_the_allowed_web_app_and_the_openai_client_are_served(network: Network) -> None:
    gateway = network.data["gateway_url"].removesuffix("/v1")
    chat = f"{gateway}/v1/chat/completions"
    before = money(network)

    preflight = httpx.options(
        chat,
        headers={"origin": WEB_APP, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"},
        timeout=30,
    )  # fmt: skip
    served = httpx.post(chat, json=CHAT, headers={"origin": WEB_APP}, timeout=120)
    reply = network.client.chat.completions.create(model="allmende:tiny", messages=CHAT["messages"], max_tokens=2)  # type: ignore[arg-type]

    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == WEB_APP
    assert "POST" in preflight.headers["access-control-allow-methods"] and "Origin" in preflight.headers["vary"]
    assert served.status_code == 200 and served.headers["access-control-allow-origin"] == WEB_APP
    assert served.json()["choices"][0]["message"]["role"] == "assistant"
    assert reply.choices[0].message.role == "assistant"
    assert money(network)["receipts"] == before["receipts"] + 2  # both paid, as they should be

"""A web page cannot spend the user's gateway (issue #39), in a real browser (Debian's headless
Chromium) against `allmende up`. Chromium's --host-resolver-rules gives local servers the names
an attacker's would have:

- evil.example: a page on another origin that tries `fetch` with `text/plain` (a simple
  request, sent without a preflight), with `mode: "no-cors"`, with a form body and with JSON
  (preflighted): the gateway's channels, what it owes and its receipts stay as they were;
- rebind.evil.example → 127.0.0.1: a DNS-rebinding page, same-origin with the gateway under its
  own name: it gets neither the explorer nor any answer, and pays for nothing;
- webapp.example: the web app the network allows (`up --allow-origin`) is served through CORS;
- and the explorer's own playground still streams an answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from allmende.testing.browser import available, chromium
from tests.e2e.conftest import WEB_APP, Network
from tests.e2e.test_cross_site import money

pytestmark = pytest.mark.skipif(not available(), reason="chromium and chromium-driver are not installed")

CHAT = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "spend it"}], "max_tokens": 4}

# Each attempt as a page's script makes it; resolves to what the page can see of the answer.
ATTEMPTS = """
const [url, body, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const tries = {
  "text-plain": {method: "POST", headers: {"content-type": "text/plain"}, body},
  "no-cors": {method: "POST", mode: "no-cors", headers: {"content-type": "text/plain"}, body},
  "no-cors-form": {method: "POST", mode: "no-cors", body: new URLSearchParams({q: body})},
  "no-cors-untyped": {method: "POST", mode: "no-cors", body: new Blob([body])},
  "json-preflighted": {method: "POST", headers: {"content-type": "application/json"}, body},
};
(async () => {
  const seen = {};
  for (const [name, init] of Object.entries(tries)) {
    try {
      const reply = await fetch(url, init);
      seen[name] = reply.type === "opaque" ? "opaque" : String(reply.status);
    } catch (error) {
      seen[name] = "blocked";
    }
  }
  done(seen);
})();
"""

# Same-origin requests of a page under the rebinding name: it may read whatever it gets.
READS = """
const [body, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const json = {"content-type": "application/json"};
  const chat = await fetch("/v1/chat/completions", {method: "POST", headers: json, body});
  const money = await fetch("/explorer/api/money");
  done({chat: chat.status, chatText: await chat.text(), money: money.status});
})();
"""

# The allowed web app's call, as it would make it with the openai SDK in a browser.
WEB_APP_CALL = """
const [url, body, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(url, {method: "POST", headers: {"content-type": "application/json", authorization: "Bearer unused"}, body})
  .then(async reply => done({status: reply.status, body: await reply.json()}))
  .catch(error => done({status: "blocked", body: String(error)}));
"""


class Page(BaseHTTPRequestHandler):
    """Any path: an empty page (the attacker's site, or the web app's)."""

    def do_GET(self) -> None:
        page = b"<!doctype html><html><body>a page</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def pages() -> Iterator[int]:
    """A local web server for the attacker's and the web app's pages; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(pages: int) -> Iterator[Any]:
    names = (
        f"--host-resolver-rules=MAP evil.example 127.0.0.1:{pages},"
        f"MAP {urlsplit(WEB_APP).hostname} 127.0.0.1:{pages},MAP rebind.evil.example 127.0.0.1"
    )
    with chromium(flags=(names, "--disable-features=HttpsUpgrades")) as driver:
        driver.set_script_timeout(120)
        yield driver


def test_a_page_on_another_origin_cannot_spend_the_gateway(network: Network, browser: Any) -> None:
    # Prepare: an answer first, so that the gateway has channels whose balances could move
    network.client.chat.completions.create(model="allmende:tiny", messages=CHAT["messages"], max_tokens=2)  # type: ignore[arg-type]
    gateway = network.data["gateway_url"].removesuffix("/v1")
    before = money(network)

    # Execute: the attacker's page, opened by the user, tries every request a page can send
    browser.get("http://evil.example/")
    seen = browser.execute_async_script(ATTEMPTS, f"{gateway}/v1/chat/completions", json.dumps(CHAT))

    # Assert: the page learns nothing, and not a cent moved (an unguarded gateway paid for
    # text-plain and every no-cors attempt: the browser sends them, it only hides the answer)
    assert seen == {
        "text-plain": "blocked",
        "no-cors": "opaque",
        "no-cors-form": "opaque",
        "no-cors-untyped": "opaque",
        "json-preflighted": "blocked",
    }
    assert money(network) == before


def test_a_dns_rebinding_page_gets_nothing_and_spends_nothing(network: Network, browser: Any) -> None:
    # Prepare
    port = urlsplit(network.data["gateway_url"]).port
    before = money(network)

    # Execute: the page's name now resolves to 127.0.0.1: the gateway, under the attacker's name
    browser.get(f"http://rebind.evil.example:{port}/")
    shown = browser.find_element(By.TAG_NAME, "body").text
    read = browser.execute_async_script(READS, json.dumps(CHAT))

    # Assert: no explorer, no answer, no explorer data, nothing paid
    assert "host_not_allowed" in shown and "playground" not in shown.lower()
    assert (read["chat"], read["money"]) == (403, 403)
    assert json.loads(read["chatText"])["error"]["code"] == "host_not_allowed"
    assert money(network) == before


def test_the_allowed_web_app_is_served_through_cors(network: Network, browser: Any) -> None:
    gateway = network.data["gateway_url"].removesuffix("/v1")
    before = money(network)

    browser.get(WEB_APP + "/")
    reply = browser.execute_async_script(WEB_APP_CALL, f"{gateway}/v1/chat/completions", json.dumps(CHAT))

    assert reply["status"] == 200, reply
    assert reply["body"]["choices"][0]["message"]["role"] == "assistant"
    assert money(network)["receipts"] == before["receipts"] + 1


def test_the_explorers_own_playground_still_streams_an_answer(network: Network, browser: Any) -> None:
    explorer = network.data["gateway_url"].removesuffix("/v1") + "/"
    before = money(network)

    browser.get(explorer + "#playground")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.loaded") == "playground")
    WebDriverWait(browser, 30).until(
        lambda d: (
            "allmende:tiny"
            in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#chat-model option")]
        )
    )
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("allmende:tiny")
    prompt = browser.find_element(By.ID, "chat-input")
    prompt.clear()
    prompt.send_keys("Wem gehört die Allmende?")
    browser.find_element(By.ID, "chat-send").click()

    answer = browser.find_element(By.ID, "chat-answer")
    WebDriverWait(browser, 120).until(lambda _: answer.get_attribute("data-done") == "true")
    assert "error" not in (answer.get_attribute("class") or ""), answer.text
    assert int(answer.get_attribute("data-deltas") or 0) > 1  # drawn piece by piece from the SSE stream
    assert "verified" in browser.find_element(By.ID, "receipt").text
    assert money(network)["receipts"] == before["receipts"] + 1

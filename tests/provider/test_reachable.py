"""The reachability check before anything is staked waits for a relay that answers 502 while
this node's own connection to it is still being dialled (`tests/e2e/test_hosts.py` failed
now and then: the relayed provider stopped at the first `relay_unavailable`, 23 ms after
dialling), and still stops at once when another server answers there; a node listening on
loopback only is told to listen beyond it."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from allmende.core.errors import InvalidInput
from allmende.provider.node import check_reachable

KEY = os.urandom(32)
ME = Account.from_key(KEY).address
X25519 = b"\x07" * 32


def signed_info() -> bytes:
    info = {"address": ME, "x25519_key": "0x" + X25519.hex(), "chain_id": 31337, "models": []}
    message = json.dumps(info, sort_keys=True, separators=(",", ":"))
    signature = Account.from_key(KEY).sign_message(encode_defunct(text=message)).signature
    return json.dumps({"info": info, "signed": message, "signature": "0x" + bytes(signature).hex()}).encode()


def server(answers: list[tuple[int, bytes]]) -> Iterator[str]:
    """Answers GET /v1/info with `answers` in turn (the last one for ever)."""
    asked = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers[min(asked[0], len(answers) - 1)]
            asked[0] += 1
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def node_at(url: str, host: str = "127.0.0.1") -> Any:
    return SimpleNamespace(
        config=SimpleNamespace(endpoint=url, host=host, relay=None),
        contracts=SimpleNamespace(client=SimpleNamespace(address=ME)), x25519_public=X25519,
    )  # fmt: skip


@pytest.fixture
def relay_still_dialling() -> Iterator[str]:
    unavailable = (502, b'{"error": {"code": "relay_unavailable", "message": "not connected"}}')
    yield from server([unavailable, unavailable, unavailable, (200, signed_info())])


@pytest.fixture
def another_server() -> Iterator[str]:
    yield from server([(404, b"not here")])


def test_a_relay_that_has_no_connection_yet_is_asked_again(relay_still_dialling: str) -> None:
    check_reachable(node_at(relay_still_dialling), timeout=20)  # returns: this node answered in the end


def test_another_server_at_the_url_stops_the_start_at_once(another_server: str) -> None:
    with pytest.raises(InvalidInput, match="answers 404"):
        check_reachable(node_at(another_server), timeout=20)


@pytest.mark.parametrize(
    ("host", "advice"),
    [("127.0.0.1", "listens on 127.0.0.1 only"), ("0.0.0.0", "check port forwarding")],
    ids=["forgot --host 0.0.0.0", "listens everywhere"],
)
def test_a_node_on_loopback_is_told_to_listen_beyond_it(host: str, advice: str) -> None:
    """A public URL at another address cannot reach a node that listens on 127.0.0.1, whatever
    the port forwarding: the advice says --host 0.0.0.0 (it gave the port-forwarding hint)."""
    with pytest.raises(InvalidInput, match=advice):
        check_reachable(node_at("http://192.0.2.1:9", host), timeout=1)  # TEST-NET-1: nothing answers

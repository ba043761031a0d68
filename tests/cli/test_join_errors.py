"""Joining a network by a URL that does not answer says why (issue 38: every such URL was
"neither an Allmende gateway nor a JSON-RPC endpoint", the first error a two-host newcomer
met): nothing listening, https against a plain-HTTP server, and a server that answers but is
neither keep their own messages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from allmende.chain import DeploymentNotFound
from allmende.chain.anvil import free_port
from allmende.chain.network import resolve_network


@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-HTTP server that is neither a gateway nor a chain: 404 to everything."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()


def test_nothing_listening_is_named_with_what_to_check() -> None:
    with pytest.raises(DeploymentNotFound) as raised:
        resolve_network(f"http://127.0.0.1:{free_port()}")
    message = str(raised.value)
    assert "nothing answers at http://127.0.0.1:" in message and "--public-host" in message and "firewall" in message


def test_https_against_plain_http_suggests_http(plain_http: int) -> None:
    with pytest.raises(DeploymentNotFound) as raised:
        resolve_network(f"https://127.0.0.1:{plain_http}")
    assert f"use http://127.0.0.1:{plain_http}" in str(raised.value)


def test_a_server_that_is_neither_says_so(plain_http: int) -> None:
    with pytest.raises(DeploymentNotFound, match="neither an Allmende gateway"):
        resolve_network(f"http://127.0.0.1:{plain_http}")

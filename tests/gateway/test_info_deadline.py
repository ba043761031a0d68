"""A provider's /v1/info has a deadline for the whole answer, not per read: a registered
provider that drips its info a byte at a time held the directory's refresh (every gateway's
and validator's) for as long as it liked, each read within httpx's per-read timeout. Now the
answer must arrive within the deadline and a size bound, or the provider is not used."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from allmende.api.client import MAX_INFO, fetch_info


class Tarpit(BaseHTTPRequestHandler):
    body = b'{"info": {"address": "0x0"}, "signed": "{}", "signature": "0x00"}'
    pause = 0.3  # between bytes: each read is quick, the whole answer takes ~20 s

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for byte in self.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.pause)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


class Flood(Tarpit):
    body = b'{"info": "' + b"x" * (2 * MAX_INFO) + b'"}'
    pause = 0.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(self.body)


def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def tarpit() -> Iterator[str]:
    yield from serve(Tarpit)


@pytest.fixture
def flood() -> Iterator[str]:
    yield from serve(Flood)


def test_a_provider_that_drips_its_info_is_cut_off_at_the_deadline(tarpit: str) -> None:
    with httpx.Client(timeout=5) as http, pytest.raises(httpx.ReadTimeout, match="too slow or too large"):
        fetch_info(http, tarpit, deadline=1.0)


def test_an_info_larger_than_the_bound_is_refused(flood: str) -> None:
    with httpx.Client(timeout=5) as http, pytest.raises(httpx.ReadTimeout, match="too slow or too large"):
        fetch_info(http, flood)

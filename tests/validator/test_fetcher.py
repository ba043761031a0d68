"""Case evidence downloads (issue 29, "validators never stall"): a total deadline, not one
per read, a size cap, and downloads that run off the thread that audits and votes. The slow
server is a real HTTP server that sends one byte every 0.2 s for as long as it is up."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from typing import Any

import httpx
import pytest
from eth_utils import keccak

from allmende.validator import fetcher as fetcher_module
from allmende.validator.evidence import (
    EVIDENCE_DEADLINE,
    MAX_EVIDENCE_BYTES,
    MAX_STAGE_EVIDENCE_BYTES,
    deadline_for,
    fetch_evidence,
)
from allmende.validator.fetcher import EvidenceFetcher
from tests.validator.test_evidence import BODY, TEXT, evidence_for


class Tarpit:
    """An evidence server that answers 200 and then sends one byte every 0.2 s, forever."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.requests = 0
        self.bytes_sent = 0
        self.dropped = 0  # connections the client closed
        tarpit = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tarpit.requests += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                try:
                    while not tarpit.stopping.wait(0.2):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        tarpit.bytes_sent += 1
                except OSError:
                    tarpit.dropped += 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/evidence/0x{'ab' * 32}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def serving(blob: bytes) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(200, content=blob))


def eventually(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_a_download_that_drips_is_cut_off_at_its_deadline_not_per_read() -> None:
    # each read gets a byte within 0.2 s, far inside any per-read timeout: only a deadline on
    # the whole download ends it (before the fix this call never returned)
    tarpit = Tarpit()
    try:
        assert fetch_evidence(httpx.Client(), tarpit.url, b"\x00" * 32, deadline=1.0) is None
        fetcher = EvidenceFetcher(deadline=1.0)
        assert fetcher.wait(tarpit.url, b"\x00" * 32) is None
        eventually(lambda: tarpit.dropped >= 2, "the tarpit to see both downloads given up")
        fetcher.close()
    finally:
        tarpit.close()


def test_polling_never_waits_and_other_evidence_arrives_while_one_server_drips() -> None:
    tarpit = Tarpit()
    evidence = evidence_for(BODY, TEXT)
    blob = evidence.to_bytes()
    good = "http://good/v1/evidence/0x01"

    class Both(httpx.AsyncBaseTransport):
        """The good server in process, the tarpit over the network."""

        def __init__(self) -> None:
            self.network = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "good":
                return httpx.Response(200, content=blob)
            return await self.network.handle_async_request(request)

    fetcher = EvidenceFetcher(deadline=3600.0, transport=Both())  # the tarpit's download never ends here
    try:
        assert fetcher.poll(tarpit.url, b"\x00" * 32) is None  # pending: the poll returned at once
        assert eventually(lambda: fetcher.poll(good, keccak(blob)), "the good evidence") == evidence
        dripped = tarpit.bytes_sent
        eventually(lambda: tarpit.bytes_sent > dripped, "the tarpit to drip on")
        assert fetcher.poll(tarpit.url, b"\x00" * 32) is None  # still pending
    finally:
        tarpit.close()
        fetcher.close()


def test_evidence_over_the_size_cap_is_not_downloaded() -> None:
    huge = b"x" * (MAX_EVIDENCE_BYTES + 1)
    fetcher = EvidenceFetcher(transport=serving(huge))

    assert fetcher.wait("http://v/e", keccak(huge)) is None

    fetcher.close()


def test_a_stage_cases_larger_cap_takes_evidence_past_a_mebibyte_with_time_for_it() -> None:
    """A stage's case carries the stage's inputs: past 1 MiB at a few hundred positions. The
    whole-model cap refuses it (the juror abstains); the stage cap takes it, with a deadline
    grown by the extra bytes; past the stage cap it is refused too."""
    evidence = dataclasses.replace(evidence_for(BODY, TEXT), reason="x" * (2 * MAX_EVIDENCE_BYTES))
    blob = evidence.to_bytes()
    huge = b"x" * (MAX_STAGE_EVIDENCE_BYTES + 1)
    fetcher = EvidenceFetcher(transport=serving(blob))
    too_much = EvidenceFetcher(transport=serving(huge))

    assert fetcher.wait("http://v/e", keccak(blob)) is None
    assert fetcher.wait("http://v/e", keccak(blob), MAX_STAGE_EVIDENCE_BYTES) == evidence
    assert too_much.wait("http://v/e", keccak(huge), MAX_STAGE_EVIDENCE_BYTES) is None
    assert deadline_for(MAX_EVIDENCE_BYTES) == EVIDENCE_DEADLINE < deadline_for(MAX_STAGE_EVIDENCE_BYTES) <= 30

    fetcher.close()
    too_much.close()


def test_evidence_that_could_not_be_had_is_asked_for_again_later() -> None:
    evidence = evidence_for(BODY, TEXT)
    blob = evidence.to_bytes()
    answers = iter([httpx.Response(503), httpx.Response(200, content=blob)])
    # (a retry delay of 0 would let wait's own second look start the retry at once, and the
    # mock's 200 could then arrive before that look returns: the delay passes between rounds)
    fetcher = EvidenceFetcher(retry_after=3600.0, transport=httpx.MockTransport(lambda _: next(answers)))

    assert fetcher.wait("http://v/e", keccak(blob)) is None  # unavailable: the juror abstains ...
    assert fetcher.poll("http://v/e", keccak(blob)) is None  # ... and is not asked again too soon ...
    fetcher.retry_after = 0.0  # (the delay has passed)
    assert fetcher.wait("http://v/e", keccak(blob)) == evidence  # ... and its next round gets it

    fetcher.close()


def test_only_the_last_downloads_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    evidence = evidence_for(BODY, TEXT)
    blob = evidence.to_bytes()
    monkeypatch.setattr(fetcher_module, "KEPT", 2)
    fetcher = EvidenceFetcher(transport=serving(blob))

    for i in range(5):
        assert fetcher.wait(f"http://v/e{i}", keccak(blob)) == evidence

    assert len(fetcher._jobs) <= 3  # the two last finished, and the one that made it evict
    assert fetcher.wait("http://v/e0", keccak(blob)) == evidence  # forgotten, fetched again
    fetcher.close()

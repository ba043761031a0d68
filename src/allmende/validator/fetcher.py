"""Case evidence, downloaded off the thread that audits, votes and resolves.

A case's evidence URL is chosen by whoever reported it, and a colluder can point it at a
server that sends one byte every few seconds. Downloaded on the validator's own thread, that
would stop all of its audits, votes and resolutions for as long as the server stays up. Here
every download runs on one background event loop with a deadline on the whole download
(`EVIDENCE_DEADLINE`, not per read) and a size cap (`MAX_EVIDENCE_BYTES`; a stage's case asks
for a larger cap and gets time for it); the validator's
thread only polls for the result and goes on with its other work while one is pending. A
slow or hostile evidence server costs its own case at most its deadline (the juror abstains
on what it could not fetch, and asks again `RETRY_AFTER` seconds later); every other case,
audit and resolution keeps its schedule.

Evidence is addressed by its hash, so a fetched document never changes: the last `KEPT`
downloads are kept (at most their caps each), older finished ones are forgotten and fetched again
if a case still needs them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time

import httpx

from allmende.validator.evidence import (
    EVIDENCE_DEADLINE,
    MAX_EVIDENCE_BYTES,
    Evidence,
    afetch_evidence,
    deadline_for,
)

log = logging.getLogger("allmende.validator")

# seconds after which evidence that could not be had is asked for again
RETRY_AFTER = 30.0
# finished downloads kept (each at most its cap)
KEPT = 256

Key = tuple[str, bytes, int]  # (uri, keccak hash of the evidence, the most bytes taken)


class EvidenceFetcher:
    """Background downloads of case evidence (see the module doc)."""

    def __init__(
        self,
        deadline: float = EVIDENCE_DEADLINE,
        retry_after: float = RETRY_AFTER,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: an httpx.MockTransport
    ) -> None:
        self.deadline = deadline
        self.retry_after = retry_after
        self._transport = transport
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="evidence-fetcher", daemon=True)
        self._thread.start()
        self._client: httpx.AsyncClient | None = None
        self._jobs: dict[Key, concurrent.futures.Future[Evidence | None]] = {}
        self._finished_at: dict[Key, float] = {}
        self._lock = threading.Lock()

    def poll(self, uri: str, digest: bytes, limit: int = MAX_EVIDENCE_BYTES) -> Evidence | None:
        """The evidence at `uri` once it has arrived and hashes to `digest`; None while the
        download runs (it starts on the first poll) or when it could not be had within `limit`
        bytes and its deadline (a juror abstains, and polls again in its next round);
        BadEvidence if it is not evidence. Never waits."""
        key = (uri, digest, limit)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and self._stale(key, job):
                job = None  # unavailable a while ago: ask again
            if job is None:
                job = asyncio.run_coroutine_threadsafe(self._fetch(key), self._loop)
                self._jobs.pop(key, None)
                self._jobs[key] = job  # the newest last: older finished downloads go first
                self._forget_old()
        if not job.done():
            return None
        return job.result()  # raises BadEvidence

    def _stale(self, key: Key, job: concurrent.futures.Future[Evidence | None]) -> bool:
        """A download that ended without evidence, `retry_after` seconds ago or more."""
        if not job.done() or job.exception() is not None or job.result() is not None:
            return False
        return time.monotonic() - self._finished_at.get(key, 0.0) >= self.retry_after

    def wait(self, uri: str, digest: bytes, limit: int = MAX_EVIDENCE_BYTES) -> Evidence | None:
        """`poll`, waiting for the download to end (at most its deadline, and a little)."""
        self.poll(uri, digest, limit)
        with self._lock:
            job = self._jobs.get((uri, digest, limit))
        if job is not None:
            concurrent.futures.wait([job], timeout=deadline_for(limit, self.deadline) + 5)
        return self.poll(uri, digest, limit)

    def _forget_old(self) -> None:
        """Keep at most KEPT finished downloads (the oldest go; called with the lock held)."""
        finished = [k for k, job in self._jobs.items() if job.done()]
        for key in finished[: max(0, len(finished) - KEPT)]:
            del self._jobs[key]
            self._finished_at.pop(key, None)

    def close(self) -> None:
        async def stop() -> None:
            if self._client is not None:
                await self._client.aclose()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def _fetch(self, key: Key) -> Evidence | None:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
        uri, digest, limit = key
        deadline = deadline_for(limit, self.deadline)
        try:
            evidence = await afetch_evidence(self._client, uri, digest, deadline, limit)
        finally:
            self._finished_at[key] = time.monotonic()
        if evidence is None:
            log.info("case evidence at %s: none within %gs and %d bytes", uri, deadline, limit)
        return evidence


__all__ = ["EvidenceFetcher"]

"""What the explorer shows per provider beyond the chain: its throughput through this gateway
and its uptime history as this gateway's health checks saw it. In memory only, like the
activity series: they describe what this gateway observed since it started.

Uptime is sampled from the directory (the providers whose signed /v1/info checked out, and
whether a failing request suspended them), once per `sample_s`, into buckets of `bucket_s`;
a bucket holds the share of its samples in which the provider was serving. A provider that
stops serving keeps its history; one never seen serving has none."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class Served:
    """One answer a provider served: its output tokens and how long it took."""

    tokens_out: int
    seconds: float


class Throughput:
    """Per provider, the last `keep` answers through this gateway: tokens per second of
    generation as the client saw it (output tokens over the answers' wall time), and counts."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._recent: dict[str, deque[Served]] = {}
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, provider: str, tokens_out: int, seconds: float) -> None:
        with self._lock:
            self._recent.setdefault(provider, deque(maxlen=self.keep)).append(Served(tokens_out, seconds))
            self._requests[provider] = self._requests.get(provider, 0) + 1
            self._tokens[provider] = self._tokens.get(provider, 0) + tokens_out

    def of(self, provider: str) -> dict[str, float | int | None]:
        with self._lock:
            recent = list(self._recent.get(provider, ()))
            requests, tokens = self._requests.get(provider, 0), self._tokens.get(provider, 0)
        seconds = sum(s.seconds for s in recent)
        rate = sum(s.tokens_out for s in recent) / seconds if recent and seconds > 0 else None
        return {
            "requests": requests,
            "tokens_out": tokens,
            "tokens_per_s": round(rate, 1) if rate is not None else None,
            "window": len(recent),  # answers the rate is measured over
        }


class Uptime:
    """Serving or not, per provider, in buckets of `bucket_s` over the last `keep` buckets."""

    def __init__(self, bucket_s: int = 60, keep: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.bucket_s = bucket_s
        self.keep = keep
        self.clock = clock
        self._buckets: dict[str, dict[int, list[int]]] = {}  # provider -> bucket start -> [up, samples]
        self._lock = threading.Lock()

    def sample(self, serving: Iterable[str], degraded: Iterable[str] = ()) -> None:
        """One look: `serving` providers are up unless also `degraded` (suspended after failing
        requests); every provider seen before and not serving now is down."""
        now = self.clock()
        start = int(now) // self.bucket_s * self.bucket_s
        up = set(serving) - set(degraded)
        with self._lock:
            for provider in set(self._buckets) | set(serving):
                buckets = self._buckets.setdefault(provider, {})
                counts = buckets.setdefault(start, [0, 0])
                counts[0] += provider in up
                counts[1] += 1
                for old in [b for b in buckets if b <= start - self.keep * self.bucket_s]:
                    del buckets[old]

    def of(self, provider: str) -> dict[str, object]:
        """`history`: one entry per bucket, oldest first: the share of samples it served (None:
        not sampled); `uptime`: the share over every sample kept (None: never seen)."""
        now = self.clock()
        last = int(now) // self.bucket_s * self.bucket_s
        with self._lock:
            buckets = dict(self._buckets.get(provider, {}))
        history: list[float | None] = []
        for i in range(self.keep - 1, -1, -1):
            counts = buckets.get(last - i * self.bucket_s)
            history.append(round(counts[0] / counts[1], 3) if counts and counts[1] else None)
        ups, samples = sum(c[0] for c in buckets.values()), sum(c[1] for c in buckets.values())
        return {
            "bucket_s": self.bucket_s,
            "history": history,
            "uptime": round(ups / samples, 4) if samples else None,
        }

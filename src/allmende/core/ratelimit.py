"""Token-bucket rate limiting, pure: the caller passes the clock.

Each key (an API key, or a peer's address) gets `burst` requests at once and
`rate` more per second; a request that finds the bucket empty is refused and told
how long to wait. Idle buckets are forgotten so a flood of distinct keys cannot grow
memory without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    rate: float  # tokens added per second (0 = unlimited)
    burst: float  # bucket size
    max_keys: int = 100_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, updated)

    def allow(self, key: str, now: float) -> float:
        """0.0 if the request may pass, else the seconds until it would."""
        if self.rate <= 0:
            return 0.0
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens >= 1.0:
            self._remember(key, tokens - 1.0, now)
            return 0.0
        self._remember(key, tokens, now)
        return (1.0 - tokens) / self.rate

    def _remember(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            # drop buckets that have refilled completely: they carry no information
            full = [k for k, (t, u) in self._buckets.items() if t + (now - u) * self.rate >= self.burst]
            for k in full:
                del self._buckets[k]
            if len(self._buckets) >= self.max_keys:
                self._buckets.pop(next(iter(self._buckets)))
        self._buckets[key] = (tokens, now)

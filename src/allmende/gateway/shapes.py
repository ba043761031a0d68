"""Counting the shapes of the requests this gateway forwards, and publishing the counts
(`GET /v1/shapes`): validators draw their audits' shapes from them (validator.prompts), so
a provider meets audits in every structure users send, as often as users send it.

Only the shape is counted (allmende.api.shapes: fields present, coarse values, role
sequences, length buckets), never content or who sent it. Requests that ask for evidence
(`x-allmende-evidence`: validators' audits) are not counted, so audits do not feed their
own distribution. The table is bounded: shapes beyond `max_shapes` are counted as
`dropped` only.
"""

from __future__ import annotations

import json
import time
from typing import Any

from allmende.api.shapes import key_of, shape_of


class ShapeCounts:
    """Counts of request shapes since the gateway started."""

    def __init__(self, max_shapes: int = 4096) -> None:
        self.max_shapes = max_shapes
        self.counts: dict[str, int] = {}
        self.dropped = 0
        self.since = int(time.time())

    def count(self, kind: str, body: dict[str, Any], endpoint: str | None = None) -> None:
        shape = shape_of(kind, body, endpoint)
        if shape is None:
            return
        key = key_of(shape)
        if key in self.counts:
            self.counts[key] += 1
        elif len(self.counts) < self.max_shapes:
            self.counts[key] = 1
        else:
            self.dropped += 1

    def published(self) -> dict[str, Any]:
        """What `GET /v1/shapes` answers: every shape with its count, most frequent first."""
        items = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "object": "list",
            "since": self.since,
            "total": sum(self.counts.values()),
            "dropped": self.dropped,
            "data": [{"shape": json.loads(key), "count": n} for key, n in items],
        }


__all__ = ["ShapeCounts"]

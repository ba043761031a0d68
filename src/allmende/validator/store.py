"""The validator's durable state in SQLite (WAL): every audit it made, from which the
per-provider scores it publishes are computed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from allmende.node.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    provider   TEXT NOT NULL,
    ok         INTEGER NOT NULL,
    counted    INTEGER NOT NULL,      -- 0: the provider was unreachable, not scored
    reason     TEXT NOT NULL,
    latency    REAL NOT NULL,
    case_id    INTEGER,
    at         REAL NOT NULL
);
"""


@dataclass
class AuditRecord:
    provider: str
    ok: bool
    reason: str
    latency: float
    case_id: int | None = None


@dataclass(frozen=True)
class ProviderScore:
    audits: int
    passed: int

    @property
    def score_bps(self) -> int:
        return 10_000 * self.passed // max(self.audits, 1)


class ValidatorStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()

    def record(self, audit: AuditRecord, counted: bool = True) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audits (provider, ok, counted, reason, latency, case_id, at) VALUES (?,?,?,?,?,?,?)",
                (audit.provider, int(audit.ok), int(counted), audit.reason, audit.latency, audit.case_id, time.time()),
            )

    def audit_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM audits").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Audits made: checked (passed or failed) and unavailable (not scored)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(counted), 0), COALESCE(SUM(counted * ok), 0) FROM audits"
            ).fetchone()
        total, counted, passed = (int(v) for v in row)
        return {"total": total, "passed": passed, "failed": counted - passed, "unavailable": total - counted}

    def scores(self) -> dict[str, ProviderScore]:
        """Per provider: audits that reached it, and how many passed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT provider, COUNT(*), SUM(ok) FROM audits WHERE counted = 1 GROUP BY provider"
            ).fetchall()
        return {r[0]: ProviderScore(int(r[1]), int(r[2] or 0)) for r in rows}

    def records(self) -> list[AuditRecord]:
        with self._lock:
            rows = self._db.execute("SELECT provider, ok, reason, latency, case_id FROM audits ORDER BY id").fetchall()
        return [AuditRecord(r[0], bool(r[1]), r[2], float(r[3]), r[4]) for r in rows]

    def close(self) -> None:
        self._db.close()

"""The evidence ledger: per provider and model, every audited completion's divergence
statistics (validator/divergence.py) with the audit itself (the request, the answer, the
proof and the provider's signed receipt), in the validator's SQLite state next to its audits.

Audits count in windows: the sequential test (core/evidence_test.py) runs over the open
window of a (provider, model) after every audit. "honest" closes the window and a new one
begins; "cheating" is reported by the validator (an accumulated-evidence case, see
validator/accumulated.py) with the window's audits as the evidence, and the window closes
with the case. The audits are stored so that a juror can recompute every number: nothing in
a case rests on this validator's arithmetic.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.core.evidence_test import Counts, Decision, Profile, SequentialTest
from allmende.node.sqlite import open_database
from allmende.validator.divergence import AuditStats

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    provider   TEXT NOT NULL,
    model_id   TEXT NOT NULL,
    window     INTEGER NOT NULL,
    tokens     INTEGER NOT NULL,
    stats      TEXT NOT NULL,          -- JSON {gaps, chunk_errors}, every choice in order
    audit      TEXT NOT NULL,          -- JSON: the audit's evidence (validator/evidence.py)
    at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_window ON ledger (provider, model_id, window);
CREATE TABLE IF NOT EXISTS ledger_windows (
    provider   TEXT NOT NULL,
    model_id   TEXT NOT NULL,
    window     INTEGER NOT NULL,
    decision   TEXT NOT NULL,          -- honest | cheating
    statistic  REAL NOT NULL,
    tokens     INTEGER NOT NULL,
    case_id    INTEGER,
    closed_at  REAL NOT NULL,
    PRIMARY KEY (provider, model_id, window)
);
"""


@dataclass(frozen=True)
class Standing:
    """Where the open window of one (provider, model) stands."""

    decision: Decision
    statistic: float  # the smallest log-likelihood ratio over the honest profiles allowed
    tokens: int
    audits: int
    window: int
    ratios: dict[str, float] = field(default_factory=dict)  # per profile

    def to_json(self) -> dict[str, Any]:
        return {"decision": self.decision.value, "statistic": round(self.statistic, 3), "tokens": self.tokens,
                "audits": self.audits, "window": self.window,
                "ratios": {k: round(v, 3) for k, v in self.ratios.items()}}  # fmt: skip


def counts_of(stats: list[AuditStats], profiles: list[Profile]) -> dict[str, Counts]:
    """Each profile's counts over `stats`."""
    totals = {p.name: Counts() for p in profiles}
    for s in stats:
        for p in profiles:
            totals[p.name] = totals[p.name] + p.counts(s.gaps, s.chunk_errors)
    return totals


def standing_of(stats: list[AuditStats], profiles: list[Profile], test: SequentialTest, window: int = 0) -> Standing:
    """The test's decision on `stats` against the honest `profiles`."""
    counts = counts_of(stats, profiles)
    ratios = {p.name: p.llr(counts[p.name]) for p in profiles}
    statistic = min(ratios.values())
    tokens = sum(s.tokens for s in stats)
    return Standing(test.decide(statistic), statistic, tokens, len(stats), window, ratios)


class EvidenceLedger:
    """The ledger in SQLite (WAL); `profiles` maps a model id (0x…) to the honest engines its
    registration allows. A model without profiles is recorded but never judged."""

    def __init__(self, path: Path, profiles: dict[str, list[Profile]], test: SequentialTest | None = None) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()
        self.profiles = profiles
        self.test = test or SequentialTest()

    def _window(self, provider: str, model_id: str) -> int:
        row = self._db.execute(
            "SELECT COALESCE(MAX(window), -1) FROM ledger_windows WHERE provider = ? AND model_id = ?",
            (provider, model_id),
        ).fetchone()
        return int(row[0]) + 1

    def add(self, provider: str, model_id: str, stats: AuditStats, audit: dict[str, Any]) -> Standing:
        """Record one audit in the open window; the window's standing after it."""
        with self._lock:
            window = self._window(provider, model_id)
            self._db.execute(
                "INSERT INTO ledger (provider, model_id, window, tokens, stats, audit, at) VALUES (?,?,?,?,?,?,?)",
                (provider, model_id, window, stats.tokens, json.dumps(stats.to_json()), json.dumps(audit), time.time()),
            )
        return self.standing(provider, model_id)

    def window_audits(self, provider: str, model_id: str) -> list[tuple[AuditStats, dict[str, Any]]]:
        """The open window's audits, oldest first."""
        with self._lock:
            window = self._window(provider, model_id)
            rows = self._db.execute(
                "SELECT stats, audit FROM ledger WHERE provider = ? AND model_id = ? AND window = ? ORDER BY id",
                (provider, model_id, window),
            ).fetchall()
        return [(AuditStats.from_json(json.loads(s)), json.loads(a)) for s, a in rows]

    def standing(self, provider: str, model_id: str) -> Standing:
        profiles = self.profiles.get(model_id, [])
        audits = self.window_audits(provider, model_id)
        with self._lock:
            window = self._window(provider, model_id)
        if not profiles:
            tokens = sum(s.tokens for s, _ in audits)
            return Standing(Decision.CONTINUE, 0.0, tokens, len(audits), window)
        return standing_of([s for s, _ in audits], profiles, self.test, window)

    def close(self, provider: str, model_id: str, standing: Standing, case_id: int | None = None) -> None:
        """End the open window with its decision (a new one begins with the next audit)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO ledger_windows VALUES (?,?,?,?,?,?,?,?)",
                (provider, model_id, standing.window, standing.decision.value, standing.statistic, standing.tokens,
                 case_id, time.time()),
            )  # fmt: skip

    def closed(self, provider: str, model_id: str) -> list[tuple[str, float, int, int | None]]:
        """The closed windows of (provider, model): (decision, statistic, tokens, case id)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT decision, statistic, tokens, case_id FROM ledger_windows "
                "WHERE provider = ? AND model_id = ? ORDER BY window",
                (provider, model_id),
            ).fetchall()
        return [(str(r[0]), float(r[1]), int(r[2]), r[3]) for r in rows]

    def summary(self) -> dict[str, dict[str, Any]]:
        """For /status: per provider and model, the open window's standing and the closed
        windows' decisions."""
        with self._lock:
            pairs = self._db.execute("SELECT DISTINCT provider, model_id FROM ledger").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for provider, model_id in pairs:
            closed = self.closed(provider, model_id)
            out.setdefault(provider, {})[model_id] = {
                **self.standing(provider, model_id).to_json(),
                "windows_honest": sum(1 for c in closed if c[0] == Decision.HONEST.value),
                "windows_cheating": sum(1 for c in closed if c[0] == Decision.CHEATING.value),
            }
        return out

    def shut(self) -> None:
        self._db.close()

"""The vault's SQLite state: every job it ran and the privacy spent per grant.

A job row is written before its access is logged on chain and marked logged after,
so a crash between the two is found on restart (`pending()`) and reconciled against
the chain's `job_logged` of the job's own dataset.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id BLOB PRIMARY KEY,
    grant_id INTEGER NOT NULL,
    dataset_id BLOB NOT NULL,
    template TEXT NOT NULL,
    model_id BLOB NOT NULL,
    result_hash BLOB NOT NULL,
    epsilon_micro INTEGER NOT NULL,
    rho REAL NOT NULL,
    tx_hash TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id INTEGER PRIMARY KEY,
    rho REAL NOT NULL,
    epsilon_micro INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class JobRow:
    job_id: bytes
    grant_id: int
    dataset_id: bytes
    template: str
    model_id: bytes
    result_hash: bytes
    epsilon_micro: int
    rho: float
    tx_hash: str | None


class VaultStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def spent(self, grant_id: int) -> tuple[float, int]:
        """(ρ, epsilon in millionths) charged to this grant by this vault."""
        with self._lock:
            row = self._db.execute("SELECT rho, epsilon_micro FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
        return (float(row[0]), int(row[1])) if row else (0.0, 0)

    def begin(self, job: JobRow) -> None:
        """Record a job (and charge its grant) before its access is logged on chain."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                    (
                        job.job_id,
                        job.grant_id,
                        job.dataset_id,
                        job.template,
                        job.model_id,
                        job.result_hash,
                        job.epsilon_micro,
                        job.rho,
                        time.time(),
                    ),
                )
                self._db.execute(
                    "INSERT INTO grants VALUES (?, ?, ?) ON CONFLICT(grant_id) DO UPDATE SET "
                    "rho = rho + excluded.rho, epsilon_micro = epsilon_micro + excluded.epsilon_micro",
                    (job.grant_id, job.rho, job.epsilon_micro),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def logged(self, job_id: bytes, tx_hash: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET tx_hash = ? WHERE job_id = ?", (tx_hash, job_id))

    def forget(self, job_id: bytes) -> None:
        """Undo `begin` for a job whose access the chain refused (its result was never released)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT grant_id, rho, epsilon_micro FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row:
                self._db.execute(
                    "UPDATE grants SET rho = rho - ?, epsilon_micro = epsilon_micro - ? WHERE grant_id = ?",
                    (row[1], row[2], row[0]),
                )
                self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self._db.execute("COMMIT")

    def jobs(self) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, grant_id, dataset_id, template, model_id, result_hash, epsilon_micro, rho, tx_hash "
                "FROM jobs ORDER BY at"
            ).fetchall()
        return [JobRow(bytes(r[0]), r[1], bytes(r[2]), r[3], bytes(r[4]), bytes(r[5]), r[6], r[7], r[8]) for r in rows]

    def pending(self) -> list[JobRow]:
        return [j for j in self.jobs() if j.tx_hash is None]

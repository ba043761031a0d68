"""The vault's SQLite state: every job it ran and the privacy spent per grant, the
parameters each federated round trained from and released (the lineage later rounds
must descend from), the nonces of the signed requests it admitted (until they expire),
the data owner's per-grant consent to exact aggregates, and the
cells of each dataset that exact answers have revealed (`allmende.vault.audit`).

A secure federated round's job is *reserved* (written, with a `reservations` row) when the
vault trains, and logged on chain only when the coordinator asks for its SecAgg+ unmask
shares, i.e. once every vault of the round has trained; an aborted round forgets it. Every
request the vault refuses is kept in `refusals` (what `allmende data refusals` shows).

A grant's books (`ledger`) are read from the jobs themselves: those logged on chain, and
those open (reserved, or written and not yet known to be logged). A job's charge is set
(`set_charge`) from the logged part alone just before its access is sent to the chain, so
forgetting an open job changes no other job's charge (`allmende.core.privacy`).

A job row is written before its access is logged on chain and marked logged after,
so a crash between the two is found on restart (`pending()`) and reconciled against
the chain's `job_logged` of the job's own dataset. A job's round and its refined cells are written in the same
transaction; forgetting the job forgets its round, while the cells stay refined (the
stricter state, so a crash never loosens the audit).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allmende.core.privacy import GrantLedger
from allmende.node.sqlite import open_database

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
CREATE TABLE IF NOT EXISTS rounds (
    job_id BLOB PRIMARY KEY,
    grant_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    root_model BLOB NOT NULL,
    spec TEXT NOT NULL,
    input_hash BLOB NOT NULL,
    input BLOB NOT NULL,
    clip REAL NOT NULL,
    released_hash BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rounds_by_run ON rounds (grant_id, run_id, at);
CREATE TABLE IF NOT EXISTS lora_inputs (
    grant_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    input_hash BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS lora_inputs_by_run ON lora_inputs (grant_id, run_id);
CREATE TABLE IF NOT EXISTS exact_grants (
    grant_id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS exact_cells (
    dataset_id BLOB PRIMARY KEY,
    cells BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    job_id BLOB PRIMARY KEY,
    grant_id INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    signer TEXT NOT NULL,
    at REAL NOT NULL,
    round INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nonces (
    signer TEXT NOT NULL,
    nonce BLOB NOT NULL,
    expiry INTEGER NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces (expiry);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    path TEXT NOT NULL,
    code TEXT NOT NULL,
    signer TEXT,
    grant_id INTEGER,
    dataset_id BLOB,
    message TEXT NOT NULL
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


@dataclass(frozen=True)
class RoundRow:
    """One federated round a vault ran: what it trained from and what it released."""

    grant_id: int
    run_id: int
    root_model: bytes  # the granted model id this lineage starts from
    spec: str  # the model spec, canonical JSON
    input_hash: bytes  # model id of the parameters it trained from
    input: bytes  # those parameters (npz), to bound the next round's step
    clip: float  # the L2 bound on the update it released (Flower's clipping norm)
    released_hash: bytes  # model id of the parameters it trained


@dataclass(frozen=True)
class Refusal:
    """A request the vault refused."""

    at: float
    path: str  # the API path it came to
    code: str  # the error's code (access_denied, privacy_budget_exceeded, ...)
    signer: str | None  # who signed it, when the signature checked out
    grant_id: int | None
    dataset_id: bytes | None
    message: str


class VaultStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA, synchronous="FULL")
        self._lock = threading.Lock()
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(reservations)").fetchall()}
        if "round" not in columns:  # a database from before rounds were part of a reservation's key
            self._db.execute("ALTER TABLE reservations ADD COLUMN round INTEGER NOT NULL DEFAULT 0")

    def use_nonce(self, signer: str, nonce: bytes, expiry: int, now: float) -> bool:
        """Admit a signed request's (signer, nonce) once: False if it was seen before. Nonces are
        kept until their request expires (an expired request is refused for its expiry)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM nonces WHERE expiry < ?", (int(now),))
                fresh = self._db.execute(
                    "INSERT OR IGNORE INTO nonces VALUES (?, ?, ?)", (signer.lower(), nonce, expiry)
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return fresh == 1

    def spent(self, grant_id: int) -> tuple[float, int]:
        """(ρ, epsilon in millionths) charged to this grant by this vault: logged, and open
        (reserved or on its way to the chain, at the charge estimated for it)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(rho), 0.0), COALESCE(SUM(epsilon_micro), 0) FROM jobs WHERE grant_id = ?",
                (grant_id,),
            ).fetchone()
        return float(row[0]), int(row[1])

    def ledger(self, grant_id: int) -> GrantLedger:
        """The grant's books: what is logged on chain, and what is open (`allmende.core.privacy`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rho, epsilon_micro, tx_hash IS NOT NULL FROM jobs WHERE grant_id = ? ORDER BY at",
                (grant_id,),
            ).fetchall()
        logged_rho, zcdp, logged, open_rho, open_micro = 0.0, 0, 0, 0.0, 0
        for rho, micro, done in rows:
            if done:
                logged_rho, logged = logged_rho + float(rho), logged + int(micro)
                zcdp += int(micro) if rho > 0 else 0
            elif rho > 0:
                open_rho += float(rho)
            else:
                open_micro += int(micro)
        return GrantLedger(logged_rho, zcdp, logged, open_rho, open_micro)

    def set_charge(self, job_id: bytes, epsilon_micro: int) -> None:
        """The charge a reserved job's access is about to be logged with, written before it is
        sent: from here on the job is no reservation (nothing undoes it but the chain's refusal,
        or a restart that finds it was never logged), and a restart finds what the chain was
        asked to record."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE jobs SET epsilon_micro = ? WHERE job_id = ? AND tx_hash IS NULL",
                             (epsilon_micro, job_id))  # fmt: skip
            self._db.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))
            self._db.execute("COMMIT")

    def begin(
        self,
        job: JobRow,
        round_row: RoundRow | None = None,
        cells: np.ndarray | None = None,
        reserve_for: str | None = None,
        round_number: int = 0,
    ) -> None:
        """Record a job (and charge its grant) before its access is logged on chain; with it,
        the federated round it is, or the dataset's cells its exact answer refines. With
        `reserve_for` (the grantee), the job is a reservation, logged later by `reserved`'s
        caller or undone by `forget`."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if reserve_for is not None:
                    assert round_row is not None, "only federated rounds are reserved"
                    self._db.execute(
                        "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?)",
                        (job.job_id, job.grant_id, round_row.run_id, reserve_for.lower(), time.time(), round_number),
                    )
                if round_row is not None:
                    r = round_row
                    self._db.execute(
                        "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (job.job_id, r.grant_id, r.run_id, r.root_model, r.spec, r.input_hash, r.input, r.clip,
                         r.released_hash, time.time()),
                    )  # fmt: skip
                if cells is not None:
                    self._db.execute(
                        "INSERT INTO exact_cells VALUES (?, ?) "
                        "ON CONFLICT(dataset_id) DO UPDATE SET cells = excluded.cells",
                        (job.dataset_id, np.asarray(cells, dtype="<i8").tobytes()),
                    )
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
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def logged(self, job_id: bytes, tx_hash: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE jobs SET tx_hash = ? WHERE job_id = ?", (tx_hash, job_id))
            self._db.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))
            self._db.execute("COMMIT")

    def reserved(self, grant_id: int, run_id: int, round_number: int, signer: str) -> list[JobRow]:
        """The reserved (trained, not yet logged) jobs of this grantee's round of this grant and run."""
        with self._lock:
            ids = [
                bytes(r[0])
                for r in self._db.execute(
                    "SELECT job_id FROM reservations WHERE grant_id = ? AND run_id = ? AND round = ? AND signer = ? "
                    "ORDER BY at",
                    (grant_id, run_id, round_number, signer.lower()),
                ).fetchall()
            ]
        return [j for j in self.jobs() if j.job_id in ids]

    def stale_reservations(self, older_than: float) -> list[bytes]:
        """Reservations made before `older_than` (a coordinator that never came back)."""
        with self._lock:
            rows = self._db.execute("SELECT job_id FROM reservations WHERE at < ?", (older_than,)).fetchall()
        return [bytes(r[0]) for r in rows]

    def forget(self, job_id: bytes) -> None:
        """Undo `begin` for an open job whose access the chain refused or never got (its result was
        never released). No other job's charge depends on it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            # only an open job: a logged one stays charged (the chain has it)
            if self._db.execute("DELETE FROM jobs WHERE job_id = ? AND tx_hash IS NULL", (job_id,)).rowcount:
                self._db.execute("DELETE FROM rounds WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))
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

    def in_flight(self, grant_id: int) -> list[JobRow]:
        """This grant's jobs written and not marked logged that are no reservation (their access
        was sent, or is being sent, to the chain)."""
        with self._lock:
            ids = {
                bytes(r[0])
                for r in self._db.execute(
                    "SELECT job_id FROM jobs WHERE grant_id = ? AND tx_hash IS NULL "
                    "AND job_id NOT IN (SELECT job_id FROM reservations)",
                    (grant_id,),
                ).fetchall()
            }
        return [j for j in self.jobs() if j.job_id in ids] if ids else []

    # ------------------------------------------------------- federated lineage

    def last_round(self, grant_id: int, run_id: int) -> RoundRow | None:
        """The latest round this vault ran for this grant in this Flower run."""
        with self._lock:
            r = self._db.execute(
                "SELECT grant_id, run_id, root_model, spec, input_hash, input, clip, released_hash FROM rounds "
                "WHERE grant_id = ? AND run_id = ? ORDER BY at DESC LIMIT 1",
                (grant_id, run_id),
            ).fetchone()
        if r is None:
            return None
        return RoundRow(r[0], r[1], bytes(r[2]), r[3], bytes(r[4]), bytes(r[5]), r[6], bytes(r[7]))

    def record_lora_input(self, grant_id: int, run_id: int, round_number: int, input_hash: bytes) -> None:
        """A LoRA round this vault trained (and logged): the round number and the adapter it trained from."""
        with self._lock:
            self._db.execute(
                "INSERT INTO lora_inputs VALUES (?, ?, ?, ?, ?)",
                (grant_id, run_id, round_number, input_hash, time.time()),
            )

    def lora_inputs(self, grant_id: int, run_id: int) -> list[tuple[int, bytes]]:
        """(round, input adapter hash) of every LoRA round this vault trained for this grant and run, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round, input_hash FROM lora_inputs WHERE grant_id = ? AND run_id = ? ORDER BY at",
                (grant_id, run_id),
            ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def last_round_in_run(self, run_id: int) -> RoundRow | None:
        """The latest round this vault ran in this Flower run, under any grant."""
        with self._lock:
            r = self._db.execute(
                "SELECT grant_id, run_id, root_model, spec, input_hash, input, clip, released_hash FROM rounds "
                "WHERE run_id = ? ORDER BY at DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        if r is None:
            return None
        return RoundRow(r[0], r[1], bytes(r[2]), r[3], bytes(r[4]), bytes(r[5]), r[6], bytes(r[7]))

    # ------------------------------------------------------- exact aggregates

    def allow_exact(self, grant_id: int, allowed: bool = True) -> None:
        """The data owner's consent (or its withdrawal) to exact aggregates for one grant."""
        with self._lock:
            if allowed:
                self._db.execute("INSERT OR IGNORE INTO exact_grants VALUES (?, ?)", (grant_id, time.time()))
            else:
                self._db.execute("DELETE FROM exact_grants WHERE grant_id = ?", (grant_id,))

    def exact_allowed(self, grant_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM exact_grants WHERE grant_id = ?", (grant_id,)).fetchone()
        return row is not None

    def cells(self, dataset_id: bytes) -> np.ndarray | None:
        """The cells exact answers on this dataset have revealed so far (None: none yet)."""
        with self._lock:
            row = self._db.execute("SELECT cells FROM exact_cells WHERE dataset_id = ?", (dataset_id,)).fetchone()
        return None if row is None else np.frombuffer(bytes(row[0]), dtype="<i8").astype(np.int64)

    # ---------------------------------------------------------------- refusals

    def refused(
        self, path: str, code: str, message: str, signer: str | None, grant_id: int | None, dataset_id: bytes | None
    ) -> None:
        """Keep one refused request (who asked, under which grant, why)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO refusals (at, path, code, signer, grant_id, dataset_id, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), path, code, signer, grant_id, dataset_id, message[:500]),
            )

    def refusals(self, limit: int = 100) -> list[Refusal]:
        """The latest refused requests, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, path, code, signer, grant_id, dataset_id, message FROM refusals ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Refusal(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else bytes(r[5]), r[6]) for r in rows]

    def refusal_counts(self) -> dict[str, int]:
        """Refused requests so far, by error code."""
        with self._lock:
            rows = self._db.execute("SELECT code, COUNT(*) FROM refusals GROUP BY code").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

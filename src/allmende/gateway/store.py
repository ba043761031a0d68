"""The gateway's durable payment state in SQLite (WAL).

Per provider one channel; per (channel, model) what the receipts say is owed and the
highest voucher already signed. A voucher's cumulative is written here *before* it is
signed and sent, and the receipt's amount is added before the answer is returned, so a
restart never signs a lower cumulative and never pays for the same work twice.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    provider    TEXT PRIMARY KEY,
    channel_id  BLOB NOT NULL,
    deposit     TEXT NOT NULL,
    opened_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS owed (
    channel_id  BLOB NOT NULL,
    model_id    BLOB NOT NULL,
    owed        TEXT NOT NULL DEFAULT '0',
    signed      TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (channel_id, model_id)
);
CREATE TABLE IF NOT EXISTS receipts (
    request_id  BLOB PRIMARY KEY,
    provider    TEXT NOT NULL,
    model_id    BLOB NOT NULL,
    amount      TEXT NOT NULL,
    api_key     TEXT,
    receipt     TEXT NOT NULL,
    at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS spend (
    api_key     TEXT PRIMARY KEY,
    spent       TEXT NOT NULL DEFAULT '0'
);
"""


class GatewayStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def channel(self, provider: str) -> tuple[bytes, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT channel_id, deposit FROM channels WHERE provider=?", (provider.lower(),)
            ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def put_channel(self, provider: str, channel_id: bytes, deposit: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO channels VALUES (?,?,?,?) ON CONFLICT(provider) DO UPDATE SET "
                "channel_id=excluded.channel_id, deposit=excluded.deposit",
                (provider.lower(), channel_id, str(deposit), time.time()),
            )

    def drop_channel(self, provider: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM channels WHERE provider=?", (provider.lower(),))

    def all_channels(self) -> list[tuple[str, bytes, int]]:
        with self._lock:
            rows = self._db.execute("SELECT provider, channel_id, deposit FROM channels").fetchall()
        return [(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def owed(self, channel_id: bytes, model_id: bytes) -> tuple[int, int]:
        """(owed according to receipts, highest cumulative signed)."""
        with self._lock:
            row = self._db.execute(
                "SELECT owed, signed FROM owed WHERE channel_id=? AND model_id=?", (channel_id, model_id)
            ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def total_owed(self, channel_id: bytes) -> int:
        with self._lock:
            rows = self._db.execute("SELECT owed FROM owed WHERE channel_id=?", (channel_id,)).fetchall()
        return sum(int(r[0]) for r in rows)

    def claim_voucher(self, channel_id: bytes, model_id: bytes) -> int | None:
        """The cumulative to sign now (everything owed), recorded first; None if nothing new is owed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT owed, signed FROM owed WHERE channel_id=? AND model_id=?", (channel_id, model_id)
                ).fetchone()
                owed, signed = (0, 0) if row is None else (int(row[0]), int(row[1]))
                if owed <= signed:
                    self._db.execute("COMMIT")
                    return None
                self._db.execute(
                    "UPDATE owed SET signed=? WHERE channel_id=? AND model_id=?", (str(owed), channel_id, model_id)
                )
                self._db.execute("COMMIT")
                return owed
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_receipt(
        self,
        request_id: bytes,
        provider: str,
        channel_id: bytes,
        model_id: bytes,
        amount: int,
        receipt_json: str,
        api_key: str | None,
    ) -> bool:
        """Add a receipt's amount to what is owed; False (and nothing added) if seen before."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                try:
                    self._db.execute(
                        "INSERT INTO receipts VALUES (?,?,?,?,?,?,?)",
                        (request_id, provider.lower(), model_id, str(amount), api_key, receipt_json, time.time()),
                    )
                except sqlite3.IntegrityError:
                    self._db.execute("ROLLBACK")
                    return False
                row = self._db.execute(
                    "SELECT owed FROM owed WHERE channel_id=? AND model_id=?", (channel_id, model_id)
                ).fetchone()
                owed = (int(row[0]) if row else 0) + amount
                self._db.execute(
                    "INSERT INTO owed (channel_id, model_id, owed) VALUES (?,?,?) "
                    "ON CONFLICT(channel_id, model_id) DO UPDATE SET owed=excluded.owed",
                    (channel_id, model_id, str(owed)),
                )
                if api_key is not None:
                    spent = self._db.execute("SELECT spent FROM spend WHERE api_key=?", (api_key,)).fetchone()
                    self._db.execute(
                        "INSERT INTO spend VALUES (?,?) ON CONFLICT(api_key) DO UPDATE SET spent=excluded.spent",
                        (api_key, str((int(spent[0]) if spent else 0) + amount)),
                    )
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def spent(self, api_key: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT spent FROM spend WHERE api_key=?", (api_key,)).fetchone()
        return 0 if row is None else int(row[0])

    def receipt_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])

    def receipts(self) -> list[tuple[str, bytes, int, str]]:
        with self._lock:
            rows = self._db.execute("SELECT provider, model_id, amount, receipt FROM receipts").fetchall()
        return [(r[0], bytes(r[1]), int(r[2]), r[3]) for r in rows]

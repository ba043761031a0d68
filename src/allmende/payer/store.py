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

from allmende.node.sqlite import open_database

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
    acked       TEXT NOT NULL DEFAULT '0',   -- highest cumulative the provider is known to hold
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
-- an agent's per-day and per-model caps read the receipts since a time before each request
CREATE INDEX IF NOT EXISTS receipts_at ON receipts (at);
CREATE TABLE IF NOT EXISTS spend (
    api_key     TEXT PRIMARY KEY,
    spent       TEXT NOT NULL DEFAULT '0'
);
"""


class GatewayStore:
    def __init__(self, path: Path) -> None:
        self._db = open_database(path, SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(owed)")}
        if "acked" not in columns:  # a state dir from before `acked` existed
            self._db.execute("ALTER TABLE owed ADD COLUMN acked TEXT NOT NULL DEFAULT '0'")
        self._lock = threading.Lock()

    def channel(self, provider: str) -> tuple[bytes, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT channel_id, deposit FROM channels WHERE provider=?", (provider.lower(),)
            ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def channel_owed(self, provider: str) -> tuple[bytes, int, int] | None:
        """`channel(provider)` and the `total_owed` of that channel, read in one statement
        (`channel_exposure` without the unacked part)."""
        known = self.channel_exposure(provider)
        return None if known is None else known[:3]

    def exposure(self, channel_id: bytes) -> tuple[int, int, int]:
        """(deposit, total owed, unacked) of a channel, read in one statement: the deposit of
        the first channel row with this id (0 if none, as `all_channels` gives it), `total_owed`
        and `unacked` (every request asks for all three: one statement instead of three)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT 0, deposit, NULL FROM channels WHERE channel_id=:c UNION ALL "
                "SELECT 1, owed, acked FROM owed WHERE channel_id=:c",
                {"c": channel_id},
            ).fetchall()
        deposits = [int(r[1]) for r in rows if r[0] == 0]
        owed = [(int(r[1]), int(r[2])) for r in rows if r[0] == 1]
        return (
            deposits[0] if deposits else 0,
            sum(o for o, _ in owed),
            sum(max(0, o - acked) for o, acked in owed),
        )

    def channel_exposure(self, provider: str) -> tuple[bytes, int, int, int] | None:
        """(channel id, deposit, total owed, unacked) of the channel to `provider`, read in one
        statement: what `channel_owed` and then `exposure` of its channel read in two, for a
        request that finds its channel ready and reserves its cost on it at once."""
        with self._lock:
            rows = self._db.execute(
                "SELECT channel_id, deposit, NULL, NULL FROM channels WHERE provider=:p UNION ALL "
                "SELECT NULL, NULL, owed, acked FROM owed "
                "WHERE channel_id=(SELECT channel_id FROM channels WHERE provider=:p)",
                {"p": provider.lower()},
            ).fetchall()
        if not rows or rows[0][0] is None:
            return None
        owed = [(int(r[2]), int(r[3])) for r in rows[1:]]
        return (
            bytes(rows[0][0]),
            int(rows[0][1]),
            sum(o for o, _ in owed),
            sum(max(0, o - acked) for o, acked in owed),
        )

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

    def unacked(self, channel_id: bytes) -> int:
        """Σ over models of owed − acked: what the provider may still be waiting a voucher for."""
        with self._lock:
            rows = self._db.execute("SELECT owed, acked FROM owed WHERE channel_id=?", (channel_id,)).fetchall()
        return sum(max(0, int(r[0]) - int(r[1])) for r in rows)

    def unacked_models(self, channel_id: bytes) -> list[bytes]:
        """The models of a channel the provider may still be waiting a voucher for."""
        with self._lock:
            rows = self._db.execute("SELECT model_id, owed, acked FROM owed WHERE channel_id=?", (channel_id,))
            return [bytes(r[0]) for r in rows.fetchall() if int(r[1]) > int(r[2])]

    def ack(self, channel_id: bytes, model_id: bytes, cumulative: int) -> None:
        """The provider holds a voucher for `cumulative` (it said so): raise `acked` to it."""
        with self._lock:
            row = self._db.execute(
                "SELECT acked FROM owed WHERE channel_id=? AND model_id=?", (channel_id, model_id)
            ).fetchone()
            if row is not None and cumulative > int(row[0]):
                self._db.execute(
                    "UPDATE owed SET acked=? WHERE channel_id=? AND model_id=?", (str(cumulative), channel_id, model_id)
                )

    def claim_voucher(self, channel_id: bytes, model_id: bytes) -> int | None:
        """The cumulative to sign now (everything owed), recorded first; None if the provider
        is known to hold a voucher for all of it already. A cumulative is signed again until
        the provider has acknowledged it (answered a request that carried it), so a voucher
        lost with a failed request is sent again; the provider keeps the highest it sees."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT owed, signed, acked FROM owed WHERE channel_id=? AND model_id=?", (channel_id, model_id)
                ).fetchone()
                owed, signed, acked = (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))
                if owed <= acked:
                    self._db.execute("COMMIT")
                    return None
                if owed > signed:
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
        acked: int = 0,
    ) -> bool:
        """Add a receipt's amount to what is owed, and raise `acked` to the cumulative of the
        voucher the answered request carried; False (and nothing added) if seen before."""
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
                    "SELECT owed, acked FROM owed WHERE channel_id=? AND model_id=?", (channel_id, model_id)
                ).fetchone()
                owed = (int(row[0]) if row else 0) + amount
                acked = max(acked, int(row[1]) if row else 0)
                self._db.execute(
                    "INSERT INTO owed (channel_id, model_id, owed, acked) VALUES (?,?,?,?) "
                    "ON CONFLICT(channel_id, model_id) DO UPDATE SET owed=excluded.owed, acked=excluded.acked",
                    (channel_id, model_id, str(owed), str(acked)),
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

    def paid_since(self, since: float) -> list[tuple[bytes, int]]:
        """(model id, amount) of every receipt paid since `since` (a time.time())."""
        with self._lock:
            rows = self._db.execute("SELECT model_id, amount FROM receipts WHERE at >= ?", (since,)).fetchall()
        return [(bytes(r[0]), int(r[1])) for r in rows]

    def receipt_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])

    def receipts(self) -> list[tuple[str, bytes, int, str]]:
        with self._lock:
            rows = self._db.execute("SELECT provider, model_id, amount, receipt FROM receipts").fetchall()
        return [(r[0], bytes(r[1]), int(r[2]), r[3]) for r in rows]

"""The provider's durable state in SQLite (WAL).

One row per (channel, model) holds what was earned from receipts, the latest
voucher (cumulative + signature) and what has been redeemed on chain. A voucher is
committed before the request it pays for is served and a receipt before its
answer is sent, so after kill -9 at any moment no voucher and no receipt is lost.
A stream cut before its end gets its receipt (for what was sent) when the cut is
noticed. A voucher whose redeem the chain refuses for good (its channel closed, its
deposit withdrawn) is kept in `dropped` with the reason, so settlement reports it once
and goes on with the other channels.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from allmende.core import SignedVoucher, Voucher
from allmende.node.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    channel_id   BLOB NOT NULL,
    model_id     BLOB NOT NULL,
    earned       TEXT NOT NULL DEFAULT '0',   -- integers as decimal text: no 64-bit limit
    cumulative   TEXT NOT NULL DEFAULT '0',   -- latest voucher's cumulative amount
    signature    BLOB,                        -- latest voucher's signature
    redeemed     TEXT NOT NULL DEFAULT '0',   -- last cumulative redeemed on chain
    voucher_at   REAL,
    PRIMARY KEY (channel_id, model_id)
);
CREATE TABLE IF NOT EXISTS channels (
    channel_id   BLOB PRIMARY KEY,
    payer        TEXT NOT NULL,
    deposit      TEXT NOT NULL,
    closes_at    INTEGER NOT NULL,
    refreshed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id   BLOB PRIMARY KEY,
    channel_id   BLOB NOT NULL,
    model_id     BLOB NOT NULL,
    started_at   REAL NOT NULL,
    amount       TEXT,
    receipt      TEXT                          -- signed receipt JSON once served
);
CREATE TABLE IF NOT EXISTS dropped (
    channel_id   BLOB NOT NULL,
    model_id     BLOB NOT NULL,
    cumulative   TEXT NOT NULL,                -- the voucher the chain refused to redeem
    reason       TEXT NOT NULL,
    dropped_at   REAL NOT NULL,
    PRIMARY KEY (channel_id, model_id)
);
"""


@dataclass(frozen=True)
class ChannelState:
    channel_id: bytes
    payer: str
    deposit: int
    closes_at: int
    refreshed_at: float


@dataclass(frozen=True)
class LedgerRow:
    channel_id: bytes
    model_id: bytes
    earned: int
    cumulative: int
    signature: bytes | None
    redeemed: int
    voucher_at: float | None

    def signed_voucher(self) -> SignedVoucher:
        assert self.signature is not None
        return SignedVoucher(Voucher(self.channel_id, self.model_id, self.cumulative), self.signature)


class ProviderStore:
    def __init__(self, path: Path, now: Callable[[], float] = time.time) -> None:
        self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()
        self.now = now  # wall clock of the timestamps kept (injected by tests)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ channels

    def channel(self, channel_id: bytes) -> ChannelState | None:
        with self._lock:
            row = self._db.execute(
                "SELECT payer, deposit, closes_at, refreshed_at FROM channels WHERE channel_id=?", (channel_id,)
            ).fetchone()
        return None if row is None else ChannelState(channel_id, row[0], int(row[1]), int(row[2]), float(row[3]))

    def put_channel(self, channel_id: bytes, payer: str, deposit: int, closes_at: int) -> ChannelState:
        now = self.now()
        with self._lock:
            self._db.execute(
                "INSERT INTO channels VALUES (?,?,?,?,?) ON CONFLICT(channel_id) DO UPDATE SET "
                "payer=excluded.payer, deposit=excluded.deposit, closes_at=excluded.closes_at, "
                "refreshed_at=excluded.refreshed_at",
                (channel_id, payer, str(deposit), closes_at, now),
            )
        return ChannelState(channel_id, payer, deposit, closes_at, now)

    # -------------------------------------------------------------- ledger

    def ledger(self, channel_id: bytes) -> list[LedgerRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM ledger WHERE channel_id=?", (channel_id,)).fetchall()
        return [self._row(r) for r in rows]

    def all_ledger(self) -> list[LedgerRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM ledger").fetchall()
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(r: tuple) -> LedgerRow:  # type: ignore[type-arg]
        return LedgerRow(bytes(r[0]), bytes(r[1]), int(r[2]), int(r[3]), r[4], int(r[5]), r[6])

    def store_voucher(self, signed: SignedVoucher) -> None:
        """Record a voucher (already verified); durable when this returns."""
        v = signed.voucher
        with self._lock:
            self._db.execute(
                "INSERT INTO ledger (channel_id, model_id, cumulative, signature, voucher_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(channel_id, model_id) DO UPDATE SET cumulative=excluded.cumulative, "
                "signature=excluded.signature, voucher_at=excluded.voucher_at",
                (v.channel_id, v.model_id, str(v.cumulative_amount), signed.signature, self.now()),
            )

    def drop_voucher(self, channel_id: bytes, model_id: bytes, cumulative: int, reason: str) -> None:
        """Give up redeeming the (channel, model)'s vouchers up to `cumulative`: the chain
        refused it for good (`reason`). A higher voucher later is pending again."""
        with self._lock:
            self._db.execute(
                "INSERT INTO dropped VALUES (?,?,?,?,?) ON CONFLICT(channel_id, model_id) DO UPDATE SET "
                "cumulative=excluded.cumulative, reason=excluded.reason, dropped_at=excluded.dropped_at",
                (channel_id, model_id, str(cumulative), reason, self.now()),
            )

    def dropped(self) -> dict[tuple[bytes, bytes], tuple[int, str]]:
        """(channel, model) → (cumulative given up, why) for every voucher settlement dropped."""
        with self._lock:
            rows = self._db.execute("SELECT channel_id, model_id, cumulative, reason FROM dropped").fetchall()
        return {(bytes(r[0]), bytes(r[1])): (int(r[2]), str(r[3])) for r in rows}

    def mark_redeemed(self, channel_id: bytes, model_id: bytes, cumulative: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE ledger SET redeemed=? WHERE channel_id=? AND model_id=?",
                (str(cumulative), channel_id, model_id),
            )

    # ------------------------------------------------------------ requests

    def begin_request(self, request_id: bytes, channel_id: bytes, model_id: bytes) -> bool:
        """Claim a request id; False if it was seen before (a replay)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO requests (request_id, channel_id, model_id, started_at) VALUES (?,?,?,?)",
                    (request_id, channel_id, model_id, self.now()),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def finish_request(self, request_id: bytes, channel_id: bytes, model_id: bytes, amount: int, receipt: str) -> None:
        """Store the signed receipt and add its amount to what the channel earned, atomically."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE requests SET amount=?, receipt=? WHERE request_id=?", (str(amount), receipt, request_id)
                )
                row = self._db.execute(
                    "SELECT earned FROM ledger WHERE channel_id=? AND model_id=?", (channel_id, model_id)
                ).fetchone()
                earned = (int(row[0]) if row else 0) + amount
                self._db.execute(
                    "INSERT INTO ledger (channel_id, model_id, earned) VALUES (?,?,?) "
                    "ON CONFLICT(channel_id, model_id) DO UPDATE SET earned=excluded.earned",
                    (channel_id, model_id, str(earned)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def receipt(self, request_id: bytes) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT receipt FROM requests WHERE request_id=?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def receipts(self, channel_id: bytes | None = None) -> list[str]:
        """Every signed receipt (JSON), or those of one channel, oldest first."""
        query = "SELECT receipt FROM requests WHERE receipt IS NOT NULL"
        args: tuple[bytes, ...] = ()
        if channel_id is not None:
            query, args = query + " AND channel_id=?", (channel_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY started_at", args).fetchall()
        return [str(r[0]) for r in rows]

    def receipt_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM requests WHERE receipt IS NOT NULL").fetchone()[0])

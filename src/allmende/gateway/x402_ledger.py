"""The x402 side of the gateway's state, in SQLite (WAL): the `session` scheme's channels,
their sessions (windows), admitted request nonces and charges, and the `exact` refunds
still owed.

A channel has one live session at a time: the first payment of a new session id on it
ends the others, and a payment of an ended session is refused whatever its nonce. A session
ends when its agent says so (its last voucher names it) or when another begins; a new one is
refused (`ChannelInUse`) while the live one paid within IN_USE seconds: two processes of one
wallet would otherwise end each other's sessions, and their cumulative vouchers, each
counting only its own requests, cannot share a channel.

A session request's nonce is inserted (UNIQUE) when its payment is settled, with the most
it may cost held in flight; its charge (the provider's receipt) replaces that hold when it
is served. A nonce whose outcome is unknown after a crash stays held: the gateway may have
paid a provider for it. A refund is written here before it is sent and deleted when it is
mined, so one that failed is sent again (`Refunds.retry`, at the gateway's upkeep) and none is sent twice
after it was mined.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from allmende.node.sqlite import open_database

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    channel_id  BLOB PRIMARY KEY,
    payer       TEXT NOT NULL,
    cumulative  TEXT NOT NULL DEFAULT '0',   -- the highest voucher the payer signed
    voucher     BLOB,                        -- its signature
    redeemed    TEXT NOT NULL DEFAULT '0'    -- what the gateway redeemed of it on chain
);
CREATE TABLE IF NOT EXISTS windows (
    session_id  BLOB PRIMARY KEY,
    channel_id  BLOB NOT NULL,
    base        TEXT NOT NULL,               -- the channel's highest voucher when it began
    ended       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nonces (
    nonce       BLOB PRIMARY KEY,
    channel_id  BLOB NOT NULL,
    most        TEXT NOT NULL,
    state       TEXT NOT NULL                -- held | charged | released
);
CREATE TABLE IF NOT EXISTS charges (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id  BLOB NOT NULL,
    nonce       BLOB NOT NULL UNIQUE,
    amount      TEXT NOT NULL,
    receipt     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS activity (
    channel_id  BLOB PRIMARY KEY,            -- a session channel not released by the gateway
    at          REAL NOT NULL                -- when it last paid for a request
);
CREATE INDEX IF NOT EXISTS charges_of_channel ON charges (channel_id);
CREATE INDEX IF NOT EXISTS nonces_of_channel ON nonces (channel_id, state);
CREATE INDEX IF NOT EXISTS windows_of_channel ON windows (channel_id, ended);
CREATE TABLE IF NOT EXISTS refunds (
    settlement  TEXT PRIMARY KEY,            -- the x402 settlement it belongs to
    payer       TEXT NOT NULL,
    amount      TEXT NOT NULL,
    tries       INTEGER NOT NULL DEFAULT 0,
    at          REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SessionState:
    payer: str
    cumulative: int  # highest voucher
    voucher: bytes | None
    redeemed: int
    charged: int  # Σ charges (receipts)
    held: int  # Σ most of requests in flight


IN_USE = 600.0  # seconds after its last payment a live session keeps its channel from a new one


class NonceUsed(Exception):
    """The session payment's nonce was admitted before (a replay)."""


class SessionEnded(Exception):
    """The payment belongs to a session that has ended (or to another channel's)."""


class ChannelInUse(Exception):
    """A new session on a channel whose live session paid within IN_USE seconds: another
    process of the same wallet is paying from it (each needs a channel of its own)."""


class X402Ledger:
    def __init__(self, path: Path | None, in_use: float = IN_USE) -> None:
        """`in_use`: seconds after its last payment a live session keeps its channel from a new
        one (tests of a quiet session's channel taken over pass 0)."""
        self.in_use = in_use
        if path is None:  # a gateway without a state dir (tests of the gate alone)
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._db.executescript(SCHEMA)
        else:
            self._db = open_database(path, SCHEMA)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ sessions

    def session(self, channel_id: bytes) -> SessionState | None:
        with self._lock:
            return self._session(channel_id)

    def _session(self, channel_id: bytes) -> SessionState | None:
        row = self._db.execute(
            "SELECT payer, cumulative, voucher, redeemed FROM sessions WHERE channel_id=?", (channel_id,)
        ).fetchone()
        if row is None:
            return None
        charged = self._db.execute("SELECT amount FROM charges WHERE channel_id=?", (channel_id,)).fetchall()
        held = self._db.execute("SELECT most FROM nonces WHERE channel_id=? AND state='held'", (channel_id,)).fetchall()
        return SessionState(
            row[0],
            int(row[1]),
            None if row[2] is None else bytes(row[2]),
            int(row[3]),
            sum(int(a) for (a,) in charged),
            sum(int(m) for (m,) in held),
        )

    def window(self, session_id: bytes) -> tuple[bytes, int, bool] | None:
        """(channel, base, ended) of a session, None if it never paid."""
        with self._lock:
            row = self._db.execute(
                "SELECT channel_id, base, ended FROM windows WHERE session_id=?", (session_id,)
            ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), bool(row[2]))

    def live_window(self, channel_id: bytes) -> tuple[bytes, float] | None:
        """(session id, its channel's last payment time) of the channel's live session."""
        with self._lock:
            return self._live_window(channel_id)

    def _live_window(self, channel_id: bytes) -> tuple[bytes, float] | None:
        row = self._db.execute(
            "SELECT w.session_id, a.at FROM windows w LEFT JOIN activity a ON a.channel_id = w.channel_id "
            "WHERE w.channel_id=? AND w.ended=0",
            (channel_id,),
        ).fetchone()
        return None if row is None else (bytes(row[0]), float(row[1] or 0.0))

    def in_use_by(self, channel_id: bytes) -> tuple[bytes | None, bool]:
        """The channel's live session (None: none) and whether it paid within `in_use` seconds."""
        live = self.live_window(channel_id)
        if live is None:
            return None, False
        return live[0], time.time() - live[1] < self.in_use

    def end_window(self, channel_id: bytes, session_id: bytes) -> None:
        """The agent ended its session (its payments are refused from now on)."""
        with self._lock:
            self._db.execute("UPDATE windows SET ended=1 WHERE session_id=? AND channel_id=?", (session_id, channel_id))

    def admit(
        self,
        channel_id: bytes,
        session_id: bytes,
        payer: str,
        nonce: bytes,
        most: int,
        cumulative: int,
        voucher: bytes,
    ) -> None:
        """Hold `most` for the request `nonce` of session `session_id` (NonceUsed if it was
        admitted before, SessionEnded if the session ended) and keep the voucher if it is the
        highest. A new session id begins the channel's next window and ends the others,
        unless the live one paid within `self.in_use` seconds (ChannelInUse)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT channel_id, ended FROM windows WHERE session_id=?", (session_id,)).fetchone()
            if row is not None and (bytes(row[0]) != channel_id or row[1]):
                self._db.execute("ROLLBACK")
                raise SessionEnded("0x" + session_id.hex())
            if row is None:
                live = self._live_window(channel_id)
                if live is not None and time.time() - live[1] < self.in_use:
                    self._db.execute("ROLLBACK")
                    raise ChannelInUse("0x" + channel_id.hex())
            try:
                self._db.execute("INSERT INTO nonces VALUES (?,?,?, 'held')", (nonce, channel_id, str(most)))
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise NonceUsed("0x" + nonce.hex()) from None
            self._db.execute(
                "INSERT INTO sessions (channel_id, payer) VALUES (?,?) ON CONFLICT(channel_id) DO NOTHING",
                (channel_id, payer),
            )
            if row is None:
                query = "SELECT cumulative FROM sessions WHERE channel_id=?"
                base = self._db.execute(query, (channel_id,)).fetchone()[0]
                self._db.execute("UPDATE windows SET ended=1 WHERE channel_id=? AND ended=0", (channel_id,))
                self._db.execute("INSERT INTO windows VALUES (?,?,?,0)", (session_id, channel_id, str(base)))
            self._raise_voucher(channel_id, cumulative, voucher)
            self._db.execute(
                "INSERT INTO activity VALUES (?,?) ON CONFLICT(channel_id) DO UPDATE SET at=excluded.at",
                (channel_id, time.time()),
            )
            self._db.execute("COMMIT")

    def idle_channels(self, before: float) -> list[bytes]:
        """Session channels whose last payment came before `before` (unix time)."""
        with self._lock:
            rows = self._db.execute("SELECT channel_id FROM activity WHERE at < ?", (before,)).fetchall()
        return [bytes(r[0]) for r in rows]

    def released(self, channel_id: bytes) -> None:
        """The gateway released the channel: it expires no more."""
        with self._lock:
            self._db.execute("DELETE FROM activity WHERE channel_id=?", (channel_id,))

    def _raise_voucher(self, channel_id: bytes, cumulative: int, voucher: bytes) -> None:
        row = self._db.execute("SELECT cumulative FROM sessions WHERE channel_id=?", (channel_id,)).fetchone()
        if row is not None and cumulative > int(row[0]):
            self._db.execute(
                "UPDATE sessions SET cumulative=?, voucher=? WHERE channel_id=?", (str(cumulative), voucher, channel_id)
            )

    def take_voucher(self, channel_id: bytes, cumulative: int, voucher: bytes) -> None:
        """A voucher that comes without a request (the agent's last, on close)."""
        with self._lock:
            self._raise_voucher(channel_id, cumulative, voucher)

    def charge(self, nonce: bytes, amount: int, receipt: str) -> None:
        """The request `nonce` was served: its hold becomes the receipt's charge."""
        with self._lock:
            row = self._db.execute("SELECT channel_id, state FROM nonces WHERE nonce=?", (nonce,)).fetchone()
            if row is None or row[1] != "held":
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE nonces SET state='charged' WHERE nonce=?", (nonce,))
            self._db.execute(
                "INSERT INTO charges (channel_id, nonce, amount, receipt) VALUES (?,?,?,?)",
                (row[0], nonce, str(amount), receipt),
            )
            self._db.execute("COMMIT")

    def release(self, nonce: bytes) -> None:
        """The request `nonce` was not served (no receipt): nothing is charged for it."""
        with self._lock:
            self._db.execute("UPDATE nonces SET state='released' WHERE nonce=? AND state='held'", (nonce,))

    def charges(self, channel_id: bytes, after: int) -> list[tuple[int, bytes, int, str]]:
        """(seq, nonce, amount, receipt JSON) of the session's charges after `after`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, nonce, amount, receipt FROM charges WHERE channel_id=? AND seq>? ORDER BY seq",
                (channel_id, after),
            ).fetchall()
        return [(int(r[0]), bytes(r[1]), int(r[2]), str(r[3])) for r in rows]

    def last_seq(self, channel_id: bytes) -> int:
        """The sequence number of the channel's latest charge (0: none)."""
        with self._lock:
            (last,) = self._db.execute("SELECT MAX(seq) FROM charges WHERE channel_id=?", (channel_id,)).fetchone()
        return 0 if last is None else int(last)

    def set_redeemed(self, channel_id: bytes, cumulative: int) -> None:
        with self._lock:
            self._db.execute("UPDATE sessions SET redeemed=? WHERE channel_id=?", (str(cumulative), channel_id))

    def unredeemed(self) -> list[tuple[bytes, int, bytes, int]]:
        """(channel, cumulative, signature, redeemed) of every session voucher above what was
        redeemed of it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT channel_id, cumulative, voucher, redeemed FROM sessions WHERE voucher IS NOT NULL"
            ).fetchall()
        return [(bytes(c), int(cum), bytes(v), int(r)) for c, cum, v, r in rows if int(cum) > int(r)]

    # ------------------------------------------------------------- refunds

    def owe_refund(self, settlement: str, payer: str, amount: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO refunds VALUES (?,?,?,0,?) ON CONFLICT(settlement) DO NOTHING",
                (settlement, payer, str(amount), time.time()),
            )

    def refunded(self, settlement: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM refunds WHERE settlement=?", (settlement,))

    def refund_failed(self, settlement: str) -> None:
        with self._lock:
            self._db.execute("UPDATE refunds SET tries=tries+1 WHERE settlement=?", (settlement,))

    def refunds_owed(self) -> list[tuple[str, str, int, int]]:
        """(settlement, payer, amount, tries) of every refund not yet mined."""
        with self._lock:
            rows = self._db.execute("SELECT settlement, payer, amount, tries FROM refunds ORDER BY at").fetchall()
        return [(str(s), str(p), int(a), int(t)) for s, p, a, t in rows]

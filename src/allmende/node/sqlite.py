"""Opening a node's SQLite database: WAL, autocommit (transactions are explicit), usable from
the node's threads (each store serialises access with its own lock)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path, schema: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """The database at `path` with `schema` applied. NORMAL survives a killed process; FULL
    also a lost machine (the vault uses it for its access records)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db

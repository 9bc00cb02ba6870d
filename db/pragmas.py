"""What every connection to a node database runs first (`configure`, from the engine's
connect event): its PRAGMAs and the SQL functions p2pshare's queries use."""

from __future__ import annotations

import sqlite3

from .names import matches
from .wal import WAL_SIZE_LIMIT

# Writers hold the lock for milliseconds; 30 s is a wait no healthy node reaches.
BUSY_TIMEOUT_MS = 30_000
# PRAGMA synchronous levels (https://sqlite.org/pragma.html#pragma_synchronous).
NORMAL = 1
FULL = 2


def configure(conn: sqlite3.Connection) -> None:
    """Set up a new connection to a node database."""
    # Autocommit at the driver level: the engine's "begin" event emits BEGIN itself,
    # choosing IMMEDIATE (a write, which takes the lock up front) or DEFERRED.
    conn.isolation_level = None
    cur = conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    # NORMAL is durable across a crash of the process in WAL mode; a power cut may lose
    # the commits since the last checkpoint. That is right for bookkeeping a node can
    # recompute (progress, heartbeats, catalogs); what someone is told is committed with
    # `durable=True` (FULL: the WAL is fsynced at that commit, and with it every earlier one).
    cur.execute(f"PRAGMA synchronous={NORMAL}")
    # A WAL that a long reader let grow is cut back when a writer next restarts it.
    cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cur.close()
    conn.create_function("p2p_unhex", 1, _unhex, deterministic=True)
    conn.create_function("p2p_matches", 2, _matches, deterministic=True)


def _unhex(value: str | None) -> bytes | None:
    """SQL p2p_unhex(text): the bytes a hex string spells (SQLite's own unhex() is newer
    than some systems' SQLite), for blobs passed inside one JSON parameter."""
    return None if value is None else bytes.fromhex(value)


def _matches(name: str, pattern: str) -> int:
    """SQL p2p_matches(name, pattern): `names.matches` itself, so a pattern means exactly
    what it means to `p2pctl download` (Unicode case folding, fnmatch's brackets), which
    SQLite's LIKE and GLOB do not."""
    return int(matches(name, pattern))

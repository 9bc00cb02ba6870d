"""Plain sqlite3 connections for p2pctl, and what `p2pctl status` reads: importing
SQLAlchemy would cost more than the whole command otherwise takes (about 0.3 s of a
0.45 s start). Every count here is a single row or an index lookup, never a scan of a
ledger (see bench/cli_timing.py for the query plans).

The connection is set up as the roles' engine sets up its own (`configure`), and
`writing` takes the write lock up front with BEGIN IMMEDIATE, as `Database.write` does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from p2pshare.db import roles as dbroles
from p2pshare.db.version import SCHEMA_VERSION, SchemaError
from p2pshare.db.wal import WAL_SIZE_LIMIT, Sizes, sizes

# Writers hold the lock for milliseconds; 30 s is a wait no healthy node reaches.
BUSY_TIMEOUT_MS = 30_000
RUNNING_STATUSES = ("queued", "active", "waiting")
# PRAGMA synchronous levels (https://sqlite.org/pragma.html#pragma_synchronous).
NORMAL = 1
FULL = 2

COUNT_QUERIES = {
    "shared": "SELECT count(*), coalesce(sum(size), 0) FROM local_files",
    # Contents offered on the network, read off ix_holdings_file alone: a distinct
    # SHA-256 would join every offer to `files` (22 s at a million offers, against 0.2);
    # the two differ only by a content offered under two roots, a liar's.
    "network": "SELECT count(*), 0 FROM (SELECT DISTINCT file_id FROM holdings)",
    "peers": "SELECT count(*), 0 FROM peers",
    "running": "SELECT count(*), 0 FROM downloads WHERE status IN ('queued', 'active', 'waiting')",
    # Finished downloads rolled up past the history horizon still count (download_days
    # holds a row per day and ending, so its sum stays a few hundred rows at most).
    "done": (
        "SELECT (SELECT count(*) FROM downloads WHERE status = 'done')"
        " + (SELECT coalesce(sum(downloads), 0) FROM download_days WHERE status = 'done'), 0"
    ),
    "uploads": "SELECT chunks, bytes FROM upload_totals WHERE id = 1",
}


@dataclass(frozen=True)
class Counts:
    shared_files: int
    shared_bytes: int
    network_files: int
    peers: int
    downloads_running: int
    downloads_done: int
    uploads: int
    uploaded_bytes: int


@dataclass(frozen=True)
class NodeRow:
    tcp_port: int | None
    node_id: str | None
    catalog_version: int


@dataclass(frozen=True)
class StatusFacts:
    roles: list[dbroles.RoleStatus]
    node: NodeRow | None
    recorded: dict[str, dict[str, str]]
    counts: Counts
    sizes: Sizes


def configure(conn: sqlite3.Connection) -> None:
    """What every connection to a node database runs first (the roles' engine too)."""
    # Autocommit at the driver level: callers emit BEGIN themselves, choosing IMMEDIATE
    # (a write, which takes the lock up front) or DEFERRED.
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


def connect(path: Path) -> sqlite3.Connection:
    """A connection to an existing node database at this schema version.

    Raises SchemaError when there is none or it has another version.
    """
    if not path.is_file():
        raise SchemaError(f"there is no node database at {path}")
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    configure(conn)
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version != SCHEMA_VERSION:
        conn.close()
        raise SchemaError(
            f"the database at {path} is at schema version {version}, "
            f"this p2pctl expects {SCHEMA_VERSION}; restart the node"
        )
    return conn


@contextmanager
def writing(conn: sqlite3.Connection, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
    """A BEGIN IMMEDIATE transaction, committed on success, rolled back on error.

    durable: the commit survives a power cut once it returns (what the user is told next,
    "queued", must be true after one)."""
    if durable:  # SQLite refuses to change it inside a transaction
        conn.execute(f"PRAGMA synchronous={FULL}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if durable and not conn.in_transaction:  # a failed COMMIT leaves it to its caller
            conn.execute(f"PRAGMA synchronous={NORMAL}")


@contextmanager
def reading(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A deferred transaction: one consistent snapshot for several queries."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def role_statuses(
    conn: sqlite3.Connection, *, now: float, with_web: bool = False
) -> list[dbroles.RoleStatus]:
    """The four roles; with_web, p2p-web and p2p-torrent too when each has a heartbeat row
    (it runs, or died without clearing it): a node without them is not missing anything."""
    rows = conn.execute("SELECT role, pid, started_at, beat_at, detail FROM heartbeats").fetchall()
    beating = {row[0] for row in rows}
    extra = tuple(r for r in dbroles.OPTIONAL_ROLES if with_web and r in beating)
    return dbroles.statuses(rows, now=now, roles=(*dbroles.ROLES, *extra))


def counts(conn: sqlite3.Connection) -> Counts:
    values: list[int] = []
    for query in COUNT_QUERIES.values():
        row = conn.execute(query).fetchone() or (0, 0)
        values.append(int(row[0] or 0))
        values.append(int(row[1] or 0))
    shared, shared_bytes, network, _, peers, _, running, _, done, _, up, up_bytes = values
    return Counts(shared, shared_bytes, network, peers, running, done, up, up_bytes)


def status_facts(conn: sqlite3.Connection, path: Path, *, now: float) -> StatusFacts:
    """Everything `p2pctl status` shows, from one read snapshot."""
    conn.execute("BEGIN")
    try:
        roles = role_statuses(conn, now=now, with_web=True)
        row = conn.execute("SELECT tcp_port, node_id, catalog_version FROM node WHERE id = 1")
        found = row.fetchone()
        node = NodeRow(found[0], found[1], int(found[2])) if found else None
        recorded: dict[str, dict[str, str]] = {}
        for role, name, value in conn.execute(
            "SELECT role, name, value FROM role_settings ORDER BY role, name"
        ):
            recorded.setdefault(role, {})[name] = value
        facts = counts(conn)
    finally:
        conn.execute("COMMIT")
    return StatusFacts(roles, node, recorded, facts, sizes(path))


def started_since(conn: sqlite3.Connection, since: float) -> tuple[set[str], dict[str, str]]:
    """The programs that began beating after `since`, and those that recorded since
    then why they cannot start (program -> its sentence): what `p2pctl start` waits on."""
    query = "SELECT role FROM heartbeats WHERE started_at >= ?"
    beating = {row[0] for row in conn.execute(query, (since,))}
    failed = dict(
        conn.execute(
            "SELECT role, value FROM role_settings WHERE name = ? AND recorded_at >= ?",
            (dbroles.START_ERROR, since),
        ).fetchall()
    )
    return beating - set(failed), failed

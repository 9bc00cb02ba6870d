"""Engine, sessions and schema versioning for the one SQLite database of a node.

Four processes write to this file. What keeps them from ever seeing
`database is locked`:
- WAL, so readers never block the writer and the writer never blocks readers;
- every write transaction starts with BEGIN IMMEDIATE, so it takes the write
  lock up front and waits in SQLite's busy handler (busy_timeout) instead of
  failing when a deferred reader tries to upgrade;
- callers keep transactions short and never hold one across network or disk I/O.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from p2pshare.db.models import Base

SCHEMA_VERSION = 1
# Writers hold the lock for milliseconds; 30 s is a wait no healthy node reaches.
BUSY_TIMEOUT_MS = 30_000
WAL_RETRY_SECONDS = 30.0


class SchemaError(Exception):
    """The database cannot be used by this version of p2pshare."""


def _create_v1(conn: Connection) -> None:
    Base.metadata.create_all(conn)


# Version N is reached by running MIGRATIONS[N] on a database at version N - 1.
# A new version appends a function; old ones never change.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _create_v1}


def make_engine(path: Path) -> Engine:
    """An engine whose connections use WAL, foreign keys and a long busy timeout."""
    engine = create_engine(
        f"sqlite:///{path}",
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=8,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" event below
        # emits BEGIN itself, so we choose IMMEDIATE or DEFERRED.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        # NORMAL is durable across a crash of the process in WAL mode; a power
        # cut may lose the last commits, which only means refetching chunks.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("p2p_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _set_wal(engine: Engine) -> None:
    """Switch the file to WAL, retrying while another process holds it."""
    deadline = time.monotonic() + WAL_RETRY_SECONDS
    while True:
        try:
            # Outside any transaction (SQLite ignores the change inside one), so on
            # the driver connection rather than through SQLAlchemy's autobegin.
            raw = engine.raw_connection()
            try:
                mode = raw.cursor().execute("PRAGMA journal_mode=WAL").fetchone()[0]
            finally:
                raw.close()
            if str(mode).lower() != "wal":
                raise SchemaError(f"the database cannot use WAL mode (got {mode})")
            return
        except Exception as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def ensure_schema(engine: Engine) -> int:
    """Bring the database to SCHEMA_VERSION; safe when several processes call it at once.

    Raises SchemaError for a database written by a newer p2pshare.
    """
    _set_wal(engine)
    with engine.connect() as conn, conn.begin():  # BEGIN IMMEDIATE: one migrator at a time
        version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the database is at schema version {version}, newer than this "
                f"p2pshare understands ({SCHEMA_VERSION}); upgrade p2pshare"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](conn)
        if version != SCHEMA_VERSION:
            conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
    return SCHEMA_VERSION


class Database:
    """One node's database: short write and read transactions as context managers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = make_engine(path)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(
            self.engine.execution_options(p2p_begin="DEFERRED"), expire_on_commit=False
        )
        # Write transactions begun by this process; the benchmark reads it from the
        # downloader's heartbeat to show chunk bookkeeping is batched.
        self.write_count = 0

    @classmethod
    def open(cls, path: Path) -> Database:
        """Open (creating or upgrading) the database. Raises SchemaError."""
        path.parent.mkdir(parents=True, exist_ok=True)
        database = cls(path)
        ensure_schema(database.engine)
        return database

    @classmethod
    def open_existing(cls, path: Path) -> Database:
        """Open a database the node already created, for p2pctl. Raises SchemaError."""
        if not path.is_file():
            raise SchemaError(f"there is no node database at {path}")
        database = cls(path)
        with database.engine.connect() as conn:
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"the database at {path} is at schema version {version}, "
                f"this p2pctl expects {SCHEMA_VERSION}; restart the node"
            )
        return database

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A BEGIN IMMEDIATE transaction, committed on success, rolled back on error."""
        self.write_count += 1
        with self._writer() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A deferred (read) transaction; never upgrades to a write."""
        with self._reader() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

"""Engine, transactions and schema versioning for the one SQLite database of a node.

Four processes write to this file. What keeps them from ever seeing
`database is locked`:
- WAL, so readers never block the writer and the writer never blocks readers;
- every write transaction starts with BEGIN IMMEDIATE, so it takes the write
  lock up front and waits in SQLite's busy handler (busy_timeout) instead of
  failing when a deferred reader tries to upgrade;
- callers keep transactions short and never hold one across network or disk I/O.

Every query runs on a SQLAlchemy Core `Connection` that `Database.write()` or
`Database.read()` yields inside its transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import QueuePool

from . import catalog_log
from .migrations import MIGRATIONS
from .pragmas import BUSY_TIMEOUT_MS, FULL, NORMAL, configure
from .schema import METADATA, SCHEMA_VERSION, SchemaError
from .watch import ChangeWatch

__all__ = [
    "BUSY_TIMEOUT_MS",
    "SCHEMA_VERSION",
    "ChangeWatch",
    "Database",
    "SchemaError",
    "ensure_schema",
    "make_engine",
]

WAL_RETRY_SECONDS = 30.0
# Execution option: run statements in the driver's autocommit, with no BEGIN, for the
# PRAGMAs SQLite ignores inside a transaction.
NO_TRANSACTION = "p2p_no_transaction"


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
        configure(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(NO_TRANSACTION):
            return
        # Durability is chosen per transaction, before BEGIN (SQLite refuses to change it
        # inside one); the level a pooled connection was left at is remembered with it.
        level = FULL if options.get("p2p_durable") else NORMAL
        if conn.info.get("p2p_synchronous", NORMAL) != level:
            conn.exec_driver_sql(f"PRAGMA synchronous={level}")
            conn.info["p2p_synchronous"] = level
        mode = options.get("p2p_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def outside_transaction(conn: Connection, pragma: str) -> list[Any]:
    """Run a PRAGMA that SQLite ignores inside a transaction (journal_mode, foreign_keys):
    the connection begins none for it, so the driver runs it in autocommit. Returns its rows."""
    conn.execution_options(**{NO_TRANSACTION: True})
    try:
        result = conn.exec_driver_sql(pragma)
        rows = list(result.fetchall()) if result.returns_rows else []
        conn.commit()  # ends only SQLAlchemy's idea of a transaction: no BEGIN was sent
    finally:
        conn.execution_options(**{NO_TRANSACTION: False})
    return rows


def _set_wal(engine: Engine) -> None:
    """Switch the file to WAL, retrying while another process holds it."""
    deadline = time.monotonic() + WAL_RETRY_SECONDS
    while True:
        try:
            with engine.connect() as conn:
                # Only a database with no table yet takes this without a VACUUM (a no-op
                # otherwise): pages freed by a rollup go back on incremental_vacuum.
                outside_transaction(conn, "PRAGMA auto_vacuum=INCREMENTAL")
                mode = outside_transaction(conn, "PRAGMA journal_mode=WAL")[0][0]
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
    # Durable before any role uses it: a power cut in a fresh node's first second must not
    # leave a database without tables (or without the version a migration reached).
    with engine.connect() as conn:
        # Rebuilding a table that others refer to (files, in _to_v2) needs foreign keys
        # off around the transaction, checked before it commits: with them on, DROP TABLE's
        # implicit DELETE leaves deferred violations that fail the COMMIT even once the new
        # table holds every referenced id (https://sqlite.org/lang_altertable.html#otheralter).
        outside_transaction(conn, "PRAGMA foreign_keys=OFF")
        try:
            conn.execution_options(p2p_durable=True)
            with conn.begin():  # BEGIN IMMEDIATE: one migrator at a time
                created = _create_or_migrate(conn)
        finally:
            conn.execution_options(p2p_durable=False)
            outside_transaction(conn, "PRAGMA foreign_keys=ON")
    if created:
        _checkpoint_and_fsync_folder(engine)
    return SCHEMA_VERSION


def _create_or_migrate(conn: Connection) -> bool:
    """Inside the schema transaction: create the tables, or run the migrations the
    database lacks. Returns whether anything changed."""
    version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the database is at schema version {version}, newer than this "
            f"p2pshare understands ({SCHEMA_VERSION}); upgrade p2pshare"
        )
    if version == 0:
        METADATA.create_all(conn)
        catalog_log.start(conn)
    else:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[target](conn)
        if conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
            raise SchemaError(
                f"upgrading the database from schema version {version} left rows "
                "pointing at nothing; nothing was changed"
            )
    if version == SCHEMA_VERSION:
        return False
    conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
    return True


def _checkpoint_and_fsync_folder(engine: Engine) -> None:
    """A new or upgraded schema into the database file itself, synced (SQLite deletes a WAL
    found beside an empty database file, so a durable WAL alone is not enough), and the
    file's and its WAL's names made durable in their folder. Never os.open the database
    file here: closing any descriptor of it drops this process's SQLite locks on it."""
    with engine.connect() as conn:
        outside_transaction(conn, "PRAGMA wal_checkpoint(PASSIVE)")  # syncs the WAL, then the file
    if engine.url.database:
        fd = os.open(Path(engine.url.database).parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Database:
    """One node's database: short write and read transactions as context managers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = make_engine(path)
        self._durable = self.engine.execution_options(p2p_durable=True)
        self._reader = self.engine.execution_options(p2p_begin="DEFERRED")
        # Write transactions begun by this process; the benchmark reads it from the
        # downloader's heartbeat to show chunk bookkeeping is batched.
        self.write_count = 0

    @classmethod
    def open(cls, path: Path) -> Database:
        """Open (creating or upgrading) the database. Raises SchemaError."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made private before SQLite first writes it, whatever the umask: SQLite gives its
        # WAL and shared-memory files the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        database = cls(path)
        ensure_schema(database.engine)
        return database

    @classmethod
    def open_existing(cls, path: Path) -> Database:
        """Open a database the node already created, for p2pctl. Raises SchemaError."""
        if not path.is_file():
            raise SchemaError(f"there is no node database at {path}")
        database = cls(path)
        with database.read() as conn:
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        if version != SCHEMA_VERSION:
            database.close()
            raise SchemaError(
                f"the database at {path} is at schema version {version}, "
                f"this p2pctl expects {SCHEMA_VERSION}; restart the node"
            )
        return database

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[Connection]:
        """A BEGIN IMMEDIATE transaction, committed on success, rolled back on error.

        durable: its commit survives a power cut once this returns (synchronous=FULL, one
        fsync of the WAL, which makes every earlier commit durable too). For what a user or
        a peer is told next; bookkeeping a restart can recompute stays cheap without it."""
        self.write_count += 1
        with (self._durable if durable else self.engine).begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A deferred (read) transaction; never upgrades to a write."""
        with self._reader.begin() as conn:
            yield conn

    def watch(self) -> ChangeWatch:
        """A cheap test for commits by any other connection (see ChangeWatch)."""
        return ChangeWatch(self.path)

    def close(self) -> None:
        self.engine.dispose()

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

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from p2pshare.db import catalog_log
from p2pshare.db.models import Base, CatalogLogEntry, ManifestSource
from p2pshare.db.quick import BUSY_TIMEOUT_MS, FULL, NORMAL, configure
from p2pshare.db.schema import SCHEMA_VERSION, SchemaError
from p2pshare.db.watch import ChangeWatch

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


def _to_v2(conn: Connection) -> None:
    """Protocol v2: manifests are SHA-256 chaining states under a root, keyed in `files`.

    v1 chunk hashes mean nothing to v2 peers, so everything derived from them goes
    (the indexer hashes local files again, peers' catalogs are fetched again) and
    unfinished downloads fail with a sentence saying why; history stays. `files`
    is rebuilt for its new unique key, keeping its ids for `downloads` to point at
    (ensure_schema runs this with foreign keys off and checks them before committing,
    SQLite's documented way to rebuild a table others refer to).
    """
    sql = conn.exec_driver_sql
    sql(
        "UPDATE downloads SET status='failed', temp_path=NULL, finished_at=?,"
        " reason='p2pshare was upgraded to protocol v2; download it again'"
        " WHERE status IN ('queued','active','waiting')",
        (time.time(),),
    )
    for table in ("holdings", "local_files", "chunks", "bad_peers"):
        sql(f"DELETE FROM {table}")
    sql("UPDATE peers SET catalog_synced=-1")
    sql(
        "CREATE TABLE files_v2 (id INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL,"
        " size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, root VARCHAR(64) NOT NULL,"
        " chunk_count INTEGER NOT NULL, first_seen DOUBLE NOT NULL, PRIMARY KEY (id),"
        " UNIQUE (sha256, chunk_size, root))"
    )
    sql(
        "INSERT INTO files_v2 (id, sha256, size, chunk_size, root, chunk_count, first_seen)"
        " SELECT f.id, f.sha256, f.size, f.chunk_size, '', f.chunk_count, f.first_seen"
        " FROM files f WHERE EXISTS (SELECT 1 FROM downloads d WHERE d.file_id = f.id)"
    )
    sql("DROP TABLE files")
    sql("ALTER TABLE files_v2 RENAME TO files")
    sql("CREATE INDEX ix_files_sha256 ON files (sha256)")


def _to_v3(conn: Connection) -> None:
    """Requests (a folder or glob is one request of many downloads), pinned versions,
    paused downloads (a status, no column), and the settings each role runs with."""
    sql = conn.exec_driver_sql
    sql(
        "CREATE TABLE requests (id INTEGER NOT NULL, pattern VARCHAR NOT NULL,"
        " kind VARCHAR(8) NOT NULL, requested_at DOUBLE NOT NULL, files INTEGER NOT NULL,"
        " already_here INTEGER NOT NULL, PRIMARY KEY (id))"
    )
    sql("ALTER TABLE downloads ADD COLUMN request_id INTEGER REFERENCES requests (id)")
    sql("ALTER TABLE downloads ADD COLUMN pinned BOOLEAN NOT NULL DEFAULT 0")
    sql("ALTER TABLE downloads ADD COLUMN switched VARCHAR")
    sql("CREATE INDEX ix_downloads_request ON downloads (request_id)")
    sql(
        "CREATE TABLE role_settings (role VARCHAR(16) NOT NULL, name VARCHAR(32) NOT NULL,"
        " value VARCHAR NOT NULL, recorded_at DOUBLE NOT NULL, PRIMARY KEY (role, name))"
    )


def _to_v4(conn: Connection) -> None:
    """Peers are known by the fingerprint of their certificate, and whether they speak TLS."""
    sql = conn.exec_driver_sql
    sql("ALTER TABLE peers ADD COLUMN fingerprint VARCHAR(64)")
    sql("ALTER TABLE peers ADD COLUMN tls BOOLEAN NOT NULL DEFAULT 0")


def _to_v5(conn: Connection) -> None:
    """Ledgers with a horizon: per-day upload totals, lifetime totals kept as rows are
    recorded (seeded here from what `uploads` holds), and an index for expiring bad peers.

    A database created before v5 has auto_vacuum off; the server switches it with one
    VACUUM after its first rollup (VACUUM cannot run inside this transaction)."""
    sql = conn.exec_driver_sql
    sql(
        "CREATE TABLE upload_days (day INTEGER NOT NULL, peer_address VARCHAR NOT NULL,"
        " sha256 VARCHAR(64) NOT NULL, name VARCHAR NOT NULL, chunks INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL, seconds DOUBLE NOT NULL,"
        " PRIMARY KEY (day, peer_address, sha256, name))"
    )
    sql(
        "CREATE TABLE upload_totals (id INTEGER NOT NULL, chunks INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL, PRIMARY KEY (id))"
    )
    sql(
        "INSERT INTO upload_totals (id, chunks, bytes)"
        " SELECT 1, count(*), coalesce(sum(bytes), 0) FROM uploads"
    )
    sql("CREATE INDEX ix_bad_peers_marked_at ON bad_peers (marked_at)")


def _to_v6(conn: Connection) -> None:
    """Reports that scale and history with a horizon (issue 22): indexes for `p2pctl files`
    (offers by name) and for finding old or referenced downloads, and per-day totals
    of the downloads and requests rolled up after P2P_HISTORY_DAYS. Indexes only: no
    table is rewritten."""
    sql = conn.exec_driver_sql
    sql("CREATE INDEX IF NOT EXISTS ix_holdings_name ON holdings (name, file_id)")
    sql("CREATE INDEX IF NOT EXISTS ix_downloads_file ON downloads (file_id)")
    sql("CREATE INDEX IF NOT EXISTS ix_downloads_finished_at ON downloads (finished_at)")
    sql(
        "CREATE TABLE download_days (day INTEGER NOT NULL, status VARCHAR(16) NOT NULL,"
        " downloads INTEGER NOT NULL, bytes INTEGER NOT NULL, bytes_received INTEGER NOT NULL,"
        " bad_chunks INTEGER NOT NULL, seconds DOUBLE NOT NULL, PRIMARY KEY (day, status))"
    )
    sql(
        "CREATE TABLE request_days (day INTEGER NOT NULL, kind VARCHAR(8) NOT NULL,"
        " requests INTEGER NOT NULL, files INTEGER NOT NULL, already_here INTEGER NOT NULL,"
        " PRIMARY KEY (day, kind))"
    )


def _to_v7(conn: Connection) -> None:
    """BitTorrent (issue 24): cached piece hashes per file content, and the torrents made."""
    sql = conn.exec_driver_sql
    sql(
        "CREATE TABLE torrent_pieces (sha256 VARCHAR(64) NOT NULL, kind VARCHAR(8) NOT NULL,"
        " piece_size INTEGER NOT NULL, phase INTEGER NOT NULL, hashes BLOB NOT NULL,"
        " computed_at DOUBLE NOT NULL, PRIMARY KEY (sha256, kind, piece_size, phase))"
    )
    sql(
        "CREATE TABLE torrents (id INTEGER NOT NULL, info_hash VARCHAR(64) NOT NULL,"
        " name VARCHAR NOT NULL, root VARCHAR(16) NOT NULL, format VARCHAR(8) NOT NULL,"
        " files VARCHAR NOT NULL, metainfo BLOB NOT NULL, created_at DOUBLE NOT NULL,"
        " PRIMARY KEY (id), UNIQUE (info_hash))"
    )


def _to_v8(conn: Connection) -> None:
    """BitTorrent downloads (issue 24): `torrent_downloads`, and `downloads.file_id` may be
    NULL (a torrent's content has no `files` row until it arrives). SQLite cannot drop a
    NOT NULL, so `downloads` is rebuilt keeping its ids (SQLite's documented procedure,
    foreign keys off around it as for _to_v2)."""
    sql = conn.exec_driver_sql
    sql(
        "CREATE TABLE downloads_v8 (id INTEGER NOT NULL, request_id INTEGER,"
        " file_id INTEGER, name VARCHAR NOT NULL, sha256 VARCHAR(64) NOT NULL,"
        " size INTEGER NOT NULL, status VARCHAR(16) NOT NULL, pinned BOOLEAN NOT NULL,"
        " reason VARCHAR, requested_at DOUBLE NOT NULL, started_at DOUBLE,"
        " finished_at DOUBLE, bytes_done INTEGER NOT NULL, bytes_received INTEGER NOT NULL,"
        " bad_chunks INTEGER NOT NULL, have BLOB NOT NULL, temp_path VARCHAR,"
        " saved_as VARCHAR, switched VARCHAR, PRIMARY KEY (id),"
        " FOREIGN KEY(request_id) REFERENCES requests (id),"
        " FOREIGN KEY(file_id) REFERENCES files (id))"
    )
    columns = (
        "id, request_id, file_id, name, sha256, size, status, pinned, reason, requested_at,"
        " started_at, finished_at, bytes_done, bytes_received, bad_chunks, have, temp_path,"
        " saved_as, switched"
    )
    sql(f"INSERT INTO downloads_v8 ({columns}) SELECT {columns} FROM downloads")
    sql("DROP TABLE downloads")
    sql("ALTER TABLE downloads_v8 RENAME TO downloads")
    sql("CREATE INDEX ix_downloads_request ON downloads (request_id)")
    sql("CREATE INDEX ix_downloads_status ON downloads (status)")
    sql("CREATE INDEX ix_downloads_file ON downloads (file_id)")
    sql("CREATE INDEX ix_downloads_finished_at ON downloads (finished_at)")
    sql(
        "CREATE TABLE torrent_downloads (download_id INTEGER NOT NULL,"
        " info_hash VARCHAR(64) NOT NULL, magnet VARCHAR, metainfo BLOB,"
        " peers VARCHAR NOT NULL, files INTEGER, piece_size INTEGER,"
        " PRIMARY KEY (download_id),"
        " FOREIGN KEY(download_id) REFERENCES downloads (id) ON DELETE CASCADE)"
    )
    sql("CREATE INDEX ix_torrent_downloads_info_hash ON torrent_downloads (info_hash)")


def _to_v9(conn: Connection) -> None:
    """Catalogs by change (issue 34): `catalog_log` and its triggers, the log's epoch and
    floor in `node`, and the epoch of each peer's log that `peers.catalog_synced` counts in
    (NULL: every peer's catalog is fetched whole once more, then by changes)."""
    sql = conn.exec_driver_sql
    sql("ALTER TABLE node ADD COLUMN catalog_epoch VARCHAR(16)")
    sql("ALTER TABLE node ADD COLUMN catalog_floor INTEGER NOT NULL DEFAULT 0")
    sql("ALTER TABLE peers ADD COLUMN catalog_epoch VARCHAR(16)")
    # The unique key (sha256, chunk_size, root) serves a lookup by SHA-256 alone; a
    # second index on it cost every catalog entry recorded an insertion (a seventh of a
    # page's time).
    sql("DROP INDEX IF EXISTS ix_files_sha256")
    CatalogLogEntry.__table__.create(conn)  # type: ignore[attr-defined]
    catalog_log.start(_driver(conn))


def _to_v10(conn: Connection) -> None:
    """Budgets per peer (issue 37): each peer's catalog entries counted and what budget it
    reached, and which peer's manifest gave a content its chunk hashes (those known before
    are left unattributed: no peer is charged for them)."""
    sql = conn.exec_driver_sql
    sql("ALTER TABLE peers ADD COLUMN catalog_entries INTEGER NOT NULL DEFAULT 0")
    sql("ALTER TABLE peers ADD COLUMN over_budget VARCHAR")
    sql(
        "UPDATE peers SET catalog_entries ="
        " (SELECT count(*) FROM holdings h WHERE h.peer_id = peers.id)"
    )
    ManifestSource.__table__.create(conn)  # type: ignore[attr-defined]


def _to_v11(conn: Connection) -> None:
    """Who offered what a download fetches (issue 37): the certificates, proven over TLS,
    whose new version of its name it may follow (NULL: none, it follows no new version)."""
    conn.exec_driver_sql("ALTER TABLE downloads ADD COLUMN offered_by VARCHAR")


def _driver(conn: Connection) -> sqlite3.Connection:
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


# Version N is reached by running MIGRATIONS[N] on a database at version N - 1; a
# new database is created at SCHEMA_VERSION from the models. A new version appends
# a function; old ones never change.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _to_v2,
    3: _to_v3,
    4: _to_v4,
    5: _to_v5,
    6: _to_v6,
    7: _to_v7,
    8: _to_v8,
    9: _to_v9,
    10: _to_v10,
    11: _to_v11,
}


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
        # The same set-up as p2pctl's plain connections; SQLAlchemy's "begin" event
        # below emits BEGIN itself, so we choose IMMEDIATE or DEFERRED.
        configure(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        # Durability is chosen per transaction, before BEGIN (SQLite refuses to change it
        # inside one); the level a pooled connection was left at is remembered with it.
        level = FULL if options.get("p2p_durable") else NORMAL
        if conn.info.get("p2p_synchronous", NORMAL) != level:
            conn.exec_driver_sql(f"PRAGMA synchronous={level}")
            conn.info["p2p_synchronous"] = level
        mode = options.get("p2p_begin", "IMMEDIATE")
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
                # Only a database with no table yet takes this without a VACUUM (a no-op
                # otherwise): pages freed by a rollup go back on incremental_vacuum.
                raw.cursor().execute("PRAGMA auto_vacuum=INCREMENTAL")
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
    # Durable before any role uses it: a power cut in a fresh node's first second must not
    # leave a database without tables (or without the version a migration reached).
    with engine.connect().execution_options(p2p_durable=True) as conn:
        # Rebuilding a table that others refer to (files, in _to_v2) needs foreign keys
        # off around the transaction, checked before it commits: with them on, DROP TABLE's
        # implicit DELETE leaves deferred violations that fail the COMMIT even once the new
        # table holds every referenced id (https://sqlite.org/lang_altertable.html#otheralter).
        # The pragma is a no-op inside a transaction, so it goes to the driver before BEGIN.
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():  # BEGIN IMMEDIATE: one migrator at a time
                version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
                if version > SCHEMA_VERSION:
                    raise SchemaError(
                        f"the database is at schema version {version}, newer than this "
                        f"p2pshare understands ({SCHEMA_VERSION}); upgrade p2pshare"
                    )
                if version == 0:
                    Base.metadata.create_all(conn)
                    catalog_log.start(driver)
                else:
                    for target in range(version + 1, SCHEMA_VERSION + 1):
                        MIGRATIONS[target](conn)
                    if conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise SchemaError(
                            f"upgrading the database from schema version {version} left rows "
                            "pointing at nothing; nothing was changed"
                        )
                created = version != SCHEMA_VERSION
                if created:
                    conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
        finally:
            driver.execute("PRAGMA foreign_keys=ON")
    if created:
        _checkpoint_and_fsync_folder(engine)
    return SCHEMA_VERSION


def _checkpoint_and_fsync_folder(engine: Engine) -> None:
    """A new or upgraded schema into the database file itself, synced (SQLite deletes a WAL
    found beside an empty database file, so a durable WAL alone is not enough), and the
    file's and its WAL's names made durable in their folder. Never os.open the database
    file here: closing any descriptor of it drops this process's SQLite locks on it."""
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA wal_checkpoint(PASSIVE)")  # syncs the WAL, then the file
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
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._durable_writer = sessionmaker(
            self.engine.execution_options(p2p_durable=True), expire_on_commit=False
        )
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
        with database.engine.connect() as conn:
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"the database at {path} is at schema version {version}, "
                f"this p2pctl expects {SCHEMA_VERSION}; restart the node"
            )
        return database

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[Session]:
        """A BEGIN IMMEDIATE transaction, committed on success, rolled back on error.

        durable: its commit survives a power cut once this returns (synchronous=FULL, one
        fsync of the WAL, which makes every earlier commit durable too). For what a user or
        a peer is told next; bookkeeping a restart can recompute stays cheap without it."""
        self.write_count += 1
        maker = self._durable_writer if durable else self._writer
        with maker() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A deferred (read) transaction; never upgrades to a write."""
        with self._reader() as session, session.begin():
            yield session

    def watch(self) -> ChangeWatch:
        """A cheap test for commits by any other connection (see ChangeWatch)."""
        return ChangeWatch(self.path)

    def close(self) -> None:
        self.engine.dispose()


def driver_connection(session: Session) -> sqlite3.Connection:
    """The sqlite3 connection under a session's transaction (begun if it was not), its
    pending changes flushed: for the queries written in plain sqlite3 (`db.queueing`)
    to run inside a caller's ORM transaction. A caller that changes rows through it
    expires the session's objects afterwards (`session.expire_all()`)."""
    session.flush()
    raw = session.connection().connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw

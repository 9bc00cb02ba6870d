"""Schema versions: each migration brings a database from the version before it to its own.

Version N is reached by running MIGRATIONS[N] on a database at version N - 1, inside
`db.engine.ensure_schema`'s one transaction (foreign keys off around it, checked before
it commits). A new database is created from `db.schema` at SCHEMA_VERSION instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text

from . import catalog_log, schema


def _runner(conn: Connection) -> Callable[..., Any]:
    """Run one statement of a migration (DDL, or DML with named parameters)."""

    def run(sql: str, params: dict[str, Any] | None = None) -> Any:
        return conn.execute(text(sql), params or {})

    return run


def _to_v2(conn: Connection) -> None:
    """Protocol v2: manifests are SHA-256 chaining states under a root, keyed in `files`.

    v1 chunk hashes mean nothing to v2 peers, so everything derived from them goes
    (the indexer hashes local files again, peers' catalogs are fetched again) and
    unfinished downloads fail with a sentence saying why; history stays. `files`
    is rebuilt for its new unique key, keeping its ids for `downloads` to point at
    (ensure_schema runs this with foreign keys off and checks them before committing,
    SQLite's documented way to rebuild a table others refer to).
    """
    sql = _runner(conn)
    sql(
        "UPDATE downloads SET status='failed', temp_path=NULL, finished_at=:now,"
        " reason='p2pshare was upgraded to protocol v2; download it again'"
        " WHERE status IN ('queued','active','waiting')",
        {"now": time.time()},
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
    sql = _runner(conn)
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
    sql = _runner(conn)
    sql("ALTER TABLE peers ADD COLUMN fingerprint VARCHAR(64)")
    sql("ALTER TABLE peers ADD COLUMN tls BOOLEAN NOT NULL DEFAULT 0")


def _to_v5(conn: Connection) -> None:
    """Ledgers with a horizon: per-day upload totals, lifetime totals kept as rows are
    recorded (seeded here from what `uploads` holds), and an index for expiring bad peers.

    A database created before v5 has auto_vacuum off; the server switches it with one
    VACUUM after its first rollup (VACUUM cannot run inside this transaction)."""
    sql = _runner(conn)
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
    sql = _runner(conn)
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
    sql = _runner(conn)
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
    sql = _runner(conn)
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
    sql = _runner(conn)
    sql("ALTER TABLE node ADD COLUMN catalog_epoch VARCHAR(16)")
    sql("ALTER TABLE node ADD COLUMN catalog_floor INTEGER NOT NULL DEFAULT 0")
    sql("ALTER TABLE peers ADD COLUMN catalog_epoch VARCHAR(16)")
    # The unique key (sha256, chunk_size, root) serves a lookup by SHA-256 alone; a
    # second index on it cost every catalog entry recorded an insertion.
    sql("DROP INDEX IF EXISTS ix_files_sha256")
    schema.catalog_log.create(conn)
    catalog_log.start(conn)


def _to_v10(conn: Connection) -> None:
    """Budgets per peer (issue 37): each peer's catalog entries counted and what budget it
    reached, and which peer's manifest gave a content its chunk hashes (those known before
    are left unattributed: no peer is charged for them)."""
    sql = _runner(conn)
    sql("ALTER TABLE peers ADD COLUMN catalog_entries INTEGER NOT NULL DEFAULT 0")
    sql("ALTER TABLE peers ADD COLUMN over_budget VARCHAR")
    sql(
        "UPDATE peers SET catalog_entries ="
        " (SELECT count(*) FROM holdings h WHERE h.peer_id = peers.id)"
    )
    schema.manifest_sources.create(conn)


def _to_v11(conn: Connection) -> None:
    """Who offered what a download fetches (issue 37): the certificates, proven over TLS,
    whose new version of its name it may follow (NULL: none, it follows no new version)."""
    _runner(conn)("ALTER TABLE downloads ADD COLUMN offered_by VARCHAR")


# Version N is reached by running MIGRATIONS[N] on a database at version N - 1; a
# new database is created at SCHEMA_VERSION from db.schema. A new version appends
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

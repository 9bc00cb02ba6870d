"""The share index's bulk writes (`files`, `chunks`, `local_files` and their catalog entries)
in plain sqlite3, no SQLAlchemy: `db.index` calls them inside a session's transaction, and
the indexer's writer process (services/server/index_writer.py) on a connection of its own,
which then starts in a tenth of the time an import of SQLAlchemy takes.

In bulk (executemany): a catalog, a first index of 10,000 files or a folder's download is
a few statements, not 30,000, and the ORM's or Core's parameter handling per row cost more
than hashing a small file takes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from p2pshare.db import catalog_log
from p2pshare.db.inlists import in_slices, marks
from p2pshare.db.values import ContentKey, HashedFile

# A batch of at least ROOMY_ROWS files is recorded with BATCH_CACHE_KIB of page cache.
ROOMY_ROWS = 500
BATCH_CACHE_KIB = 32 * 1024


def ensure_contents(
    conn: sqlite3.Connection, contents: Iterable[HashedFile], *, now: float
) -> dict[ContentKey, int]:
    """Ids of the `files` rows for these contents, inserting missing rows and chunk hashes
    (inside the caller's write transaction)."""
    wanted = {h.key: h for h in contents}
    ids = _file_ids(conn, wanted)
    # A content already known may lack its manifest (chunk rows); a new one lacks it surely.
    unhashed = set(ids) - _hashed_keys(conn, ids)
    # New rows in key order: the unique index over the SHA-256 takes them in order.
    new = sorted(key for key in wanted if key not in ids)
    if new:
        # This write transaction is the only writer, so the new rows take the ids after the
        # largest (as SQLite itself would give them) and need not be read back.
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM files").fetchone()
        fresh = dict(zip(new, range(top + 1, top + 1 + len(new)), strict=True))
        conn.executemany(
            "INSERT INTO files (id, sha256, size, chunk_size, root, chunk_count, first_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (fid, h.sha256, h.size, h.chunk_size, h.root, len(h.chunk_hashes), now)
                for fid, h in ((fid, wanted[key]) for key, fid in fresh.items())
            ],
        )
        ids.update(fresh)
        unhashed.update(new)
    conn.executemany(
        "INSERT INTO chunks (file_id, chunk_index, size, sha256) VALUES (?, ?, ?, ?)",
        [
            (ids[key], i, size, digest)
            for key in sorted(unhashed, key=ids.__getitem__)  # in id order: rows appended
            for i, (size, digest) in enumerate(
                zip(wanted[key].chunk_sizes, wanted[key].chunk_hashes, strict=True)
            )
        ],
    )
    return ids


def _hashed_keys(conn: sqlite3.Connection, ids: dict[ContentKey, int]) -> set[ContentKey]:
    """Those of these contents whose chunk rows (their manifest) are recorded."""
    by_id = {fid: key for key, fid in ids.items()}
    hashed: set[ContentKey] = set()
    for part in in_slices(list(by_id)):
        hashed.update(
            by_id[fid]
            for (fid,) in conn.execute(
                f"SELECT file_id FROM chunks WHERE chunk_index = 0 AND file_id IN ({marks(part)})",
                part,
            )
        )
    return hashed


def _file_ids(
    conn: sqlite3.Connection, wanted: dict[ContentKey, HashedFile]
) -> dict[ContentKey, int]:
    ids: dict[ContentKey, int] = {}
    for part in in_slices(sorted({sha for sha, _, _ in wanted})):
        for sha, cs, root, fid in conn.execute(
            f"SELECT sha256, chunk_size, root, id FROM files WHERE sha256 IN ({marks(part)})",
            part,
        ):
            if (sha, cs, root) in wanted:
                ids[(sha, cs, root)] = fid
    return ids


def record_local_rows(
    conn: sqlite3.Connection, root: str, items: Sequence[tuple[str, HashedFile]], *, now: float
) -> dict[ContentKey, int]:
    """Insert or update the local_files rows for these names under root, their contents, and
    their catalog entries (inside the caller's write transaction); returns file ids."""
    with _roomy_cache(conn, len(items)):
        ids = ensure_contents(conn, (h for _, h in items), now=now)
        (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM local_files").fetchone()
        _insert_local_files(conn, root, items, ids, now=now)
        # New rows take ids above every earlier one (SQLite's rowid without AUTOINCREMENT):
        # their catalog entries go in with one statement (a name that changed content is
        # an update, which the log's trigger follows).
        catalog_log.offer_new_local_files(conn, after_id=before)
    return ids


@contextmanager
def _roomy_cache(conn: sqlite3.Connection, rows: int) -> Iterator[None]:
    """A batch of many files (a first index) lands all over the indexes of files, local_files
    and the catalog log (SHA-256s in no order): a page cache larger than SQLite's 2 MB
    default, for this batch only, keeps the b-tree pages it touches rather than reading
    and spilling them again. Set back after, so a pooled connection keeps no more."""
    if rows < ROOMY_ROWS:
        yield
        return
    (before,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size=-{BATCH_CACHE_KIB}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size={int(before)}")


def _insert_local_files(
    conn: sqlite3.Connection,
    root: str,
    items: Sequence[tuple[str, HashedFile]],
    ids: dict[ContentKey, int],
    *,
    now: float,
) -> None:
    rows = [
        (root, name, ids[h.key], h.size, h.mtime_ns, h.ctime_ns, h.inode, now) for name, h in items
    ]
    insert = (
        "INSERT INTO local_files (root, name, file_id, size, mtime_ns, ctime_ns, inode, indexed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (root, name)"
    )
    # New names first, as plain inserts: SQLite's DO UPDATE costs a plain insert's time and
    # a half a row even where no row conflicts, and a first index is all new names. Only
    # when a name had a row already (a changed file) do all of them go through it again:
    # the rows just inserted are then set to what they hold, which changes nothing.
    inserted = conn.executemany(f"{insert} DO NOTHING", rows).rowcount
    if inserted < len(rows):
        conn.executemany(
            f"{insert} DO UPDATE SET file_id = excluded.file_id, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,"
            " inode = excluded.inode, indexed_at = excluded.indexed_at",
            rows,
        )

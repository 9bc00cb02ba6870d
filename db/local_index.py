"""The share index's bulk writes (`files`, `chunks`, `local_files` and their catalog entries):
`db.index` calls them inside a role's write transaction, and the indexer's writer process
(services/server/index_writer.py) inside its own.

In bulk: each statement takes all of its rows as one JSON parameter (`json_each`), so a
catalog, a first index of 10,000 files or a folder's download is a few statements, with
no per-row parameters for Python to convert.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, text

from . import catalog_log
from .lists import json_fields
from .values import ContentKey, HashedFile

# A batch of at least ROOMY_ROWS files is recorded with BATCH_CACHE_KIB of page cache.
ROOMY_ROWS = 500
BATCH_CACHE_KIB = 32 * 1024

_INSERT_FILES = text(
    "INSERT INTO files (id, sha256, size, chunk_size, root, chunk_count, first_seen)"
    f" SELECT {json_fields(6)}, :now FROM json_each(:rows)"
)
# INSERT OR IGNORE: a manifest written in several transactions has its rows but the
# first until its last one, and counts as unhashed until then.
INSERT_CHUNKS = text(
    "INSERT OR IGNORE INTO chunks (file_id, chunk_index, size, sha256)"
    f" SELECT {json_fields(4)} FROM json_each(:rows)"
)
_FILE_IDS = text(
    "SELECT sha256, chunk_size, root, id FROM files"
    " WHERE sha256 IN (SELECT value FROM json_each(:shas))"
)
_HASHED_IDS = text(
    "SELECT file_id FROM chunks WHERE chunk_index = 0"
    " AND file_id IN (SELECT value FROM json_each(:ids))"
)


def ensure_contents(
    conn: Connection, contents: Iterable[HashedFile], *, now: float
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
        top = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM files")).scalar_one())
        fresh = dict(zip(new, range(top + 1, top + 1 + len(new)), strict=True))
        rows = [
            (fid, h.sha256, h.size, h.chunk_size, h.root, len(h.chunk_hashes))
            for fid, h in ((fid, wanted[key]) for key, fid in fresh.items())
        ]
        conn.execute(_INSERT_FILES, {"rows": json.dumps(rows), "now": now})
        ids.update(fresh)
        unhashed.update(new)
    chunk_rows = [
        (ids[key], i, size, digest)
        for key in sorted(unhashed, key=ids.__getitem__)  # in id order: rows appended
        for i, (size, digest) in enumerate(
            zip(wanted[key].chunk_sizes, wanted[key].chunk_hashes, strict=True)
        )
    ]
    if chunk_rows:
        conn.execute(INSERT_CHUNKS, {"rows": json.dumps(chunk_rows)})
    return ids


def _hashed_keys(conn: Connection, ids: dict[ContentKey, int]) -> set[ContentKey]:
    """Those of these contents whose chunk rows (their manifest) are recorded."""
    by_id = {fid: key for key, fid in ids.items()}
    if not by_id:
        return set()
    found = conn.execute(_HASHED_IDS, {"ids": json.dumps(list(by_id))})
    return {by_id[fid] for (fid,) in found}


def _file_ids(conn: Connection, wanted: dict[ContentKey, HashedFile]) -> dict[ContentKey, int]:
    ids: dict[ContentKey, int] = {}
    shas = json.dumps(sorted({sha for sha, _, _ in wanted}))
    for sha, cs, root, fid in conn.execute(_FILE_IDS, {"shas": shas}):
        if (sha, cs, root) in wanted:
            ids[(sha, cs, root)] = fid
    return ids


def record_local_rows(
    conn: Connection, root: str, items: Sequence[tuple[str, HashedFile]], *, now: float
) -> dict[ContentKey, int]:
    """Insert or update the local_files rows for these names under root, their contents, and
    their catalog entries (inside the caller's write transaction); returns file ids."""
    with _roomy_cache(conn, len(items)):
        ids = ensure_contents(conn, (h for _, h in items), now=now)
        before = int(
            conn.execute(text("SELECT coalesce(max(id), 0) FROM local_files")).scalar_one()
        )
        _insert_local_files(conn, root, items, ids, now=now)
        # New rows take ids above every earlier one (SQLite's rowid without AUTOINCREMENT):
        # their catalog entries go in with one statement (a name that changed content is
        # an update, which the log's trigger follows).
        catalog_log.offer_new_local_files(conn, after_id=before)
    return ids


@contextmanager
def _roomy_cache(conn: Connection, rows: int) -> Iterator[None]:
    """A batch of many files (a first index) lands all over the indexes of files, local_files
    and the catalog log (SHA-256s in no order): a page cache larger than SQLite's 2 MB
    default, for this batch only, keeps the b-tree pages it touches rather than reading
    and spilling them again. Set back after, so a pooled connection keeps no more."""
    if rows < ROOMY_ROWS:
        yield
        return
    before = int(conn.exec_driver_sql("PRAGMA cache_size").scalar_one())
    conn.exec_driver_sql(f"PRAGMA cache_size=-{BATCH_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={before}")


_LOCAL_ROWS = (
    "INSERT INTO local_files (root, name, file_id, size, mtime_ns, ctime_ns, inode, indexed_at)"
    f" SELECT :root, {json_fields(6)}, :now"
    " FROM json_each(:rows) WHERE true ON CONFLICT (root, name)"
)
_INSERT_NEW_LOCAL = text(f"{_LOCAL_ROWS} DO NOTHING")
_UPSERT_LOCAL = text(
    f"{_LOCAL_ROWS} DO UPDATE SET file_id = excluded.file_id, size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,"
    " inode = excluded.inode, indexed_at = excluded.indexed_at"
)


def _insert_local_files(
    conn: Connection,
    root: str,
    items: Sequence[tuple[str, HashedFile]],
    ids: dict[ContentKey, int],
    *,
    now: float,
) -> None:
    rows = json.dumps(
        [(name, ids[h.key], h.size, h.mtime_ns, h.ctime_ns, h.inode) for name, h in items]
    )
    params = {"root": root, "rows": rows, "now": now}
    # New names first, as plain inserts: SQLite's DO UPDATE costs more than a plain insert
    # even where no row conflicts, and a first index is all new names. Only when a name
    # had a row already (a changed file) do all of them go through it again: the rows
    # just inserted are then set to what they hold, which changes nothing.
    inserted = conn.execute(_INSERT_NEW_LOCAL, params).rowcount
    if inserted < len(items):
        conn.execute(_UPSERT_LOCAL, params)

"""Queries behind the share-folder index: what this node offers, and its content."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.orm import Session

from p2pshare.db import catalog_log
from p2pshare.db.engine import driver_connection
from p2pshare.db.inlists import in_slices, marks
from p2pshare.db.models import Chunk, Download, File, Holding, LocalFile
from p2pshare.db.queueing import KEEPING_TEMP
from p2pshare.db.values import ContentKey, HashedFile, IndexedStat, Stamp

__all__ = ["ContentKey", "HashedFile", "IndexedStat", "Stamp"]

# A batch of at least ROOMY_ROWS files is recorded with BATCH_CACHE_KIB of page cache.
ROOMY_ROWS = 500
BATCH_CACHE_KIB = 32 * 1024


def indexed_stats(session: Session, root: str) -> dict[str, IndexedStat]:
    """Every indexed file under one root, by name."""
    rows = session.execute(
        select(
            LocalFile.name,
            LocalFile.size,
            LocalFile.mtime_ns,
            LocalFile.ctime_ns,
            LocalFile.inode,
            LocalFile.file_id,
        ).where(LocalFile.root == root)
    )
    return {
        name: IndexedStat(Stamp(size, mtime, ctime, inode), fid)
        for name, size, mtime, ctime, inode, fid in rows
    }


def indexed_stats_page(
    session: Session, root: str, after: str | None, limit: int
) -> list[tuple[str, IndexedStat]]:
    """Up to `limit` indexed files under one root whose names follow `after` (None: from the
    first), in name order through the (root, name) index: a whole scan reads the index a
    page at a time, each in a short read of its own, never all of a large share at once."""
    conn = driver_connection(session)
    rows = conn.execute(
        "SELECT name, size, mtime_ns, ctime_ns, inode, file_id FROM local_files"
        " WHERE root = ? AND name > ? ORDER BY name LIMIT ?",
        (root, "" if after is None else after, limit),
    )
    return [
        (name, IndexedStat(Stamp(size, mtime, ctime, inode), fid))
        for name, size, mtime, ctime, inode, fid in rows
    ]


def indexed_stats_of(session: Session, root: str, names: Iterable[str]) -> dict[str, IndexedStat]:
    """The indexed files among these names under one root, and every one under them should
    a name be a folder: what a look at changed names compares with, read through the
    (root, name) index, so it costs what changed, not what is shared. In plain sqlite3:
    a folder copied in is thousands of names, two small queries each."""
    conn = driver_connection(session)
    columns = "SELECT name, size, mtime_ns, ctime_ns, inode, file_id FROM local_files"
    found: dict[str, IndexedStat] = {}
    for name in set(names):
        # '0' follows '/': the names from 'a/' up to 'a0' are exactly those under folder a.
        for query, args in (
            (f"{columns} WHERE root = ? AND name = ?", (root, name)),
            (
                f"{columns} WHERE root = ? AND name >= ? AND name < ?",
                (root, f"{name}/", f"{name}0"),
            ),
        ):
            for row_name, size, mtime, ctime, inode, fid in conn.execute(query, args):
                found[row_name] = IndexedStat(Stamp(size, mtime, ctime, inode), fid)
    return found


def ensure_files(
    session: Session, contents: Iterable[HashedFile], *, now: float
) -> dict[ContentKey, int]:
    """Ids of the `files` rows for these contents, inserting missing rows and chunk hashes.

    In bulk and in plain sqlite3 (executemany): a catalog, a first index of 10,000 files
    or a folder's download is a few statements, not 30,000, and the ORM's or Core's
    parameter handling per row cost more than hashing a small file takes.
    """
    conn = driver_connection(session)
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
    _expire(session, (File, Chunk))
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


def _expire(session: Session, classes: tuple[type, ...]) -> None:
    """Rows of these classes were changed under the session (driver_connection): any it
    holds are read again when next used."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, classes):
            session.expire(obj)


def local_file_count(session: Session) -> int:
    """How many files this node offers whole: about the size of its catalog."""
    return session.scalar(select(func.count()).select_from(LocalFile)) or 0


def publishing_names(session: Session) -> set[str]:
    """Names in the download folder that downloads are publishing: a download records its
    `saved_as` before it links the file there, and ends (its local_files row written in the
    same transaction) after. Until then the name is the downloader's to record."""
    return set(
        session.scalars(
            select(Download.saved_as).where(
                Download.status.in_(KEEPING_TEMP), Download.saved_as.is_not(None)
            )
        )
    )


def record_local_files(
    session: Session, root: str, items: Sequence[tuple[str, HashedFile]], *, now: float
) -> dict[ContentKey, int]:
    """Insert or update the local_files rows for these names under root; returns file ids."""
    conn = driver_connection(session)
    with _roomy_cache(conn, len(items)):
        ids = ensure_files(session, (h for _, h in items), now=now)
        (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM local_files").fetchone()
        _insert_local_files(conn, root, items, ids, now=now)
        # New rows take ids above every earlier one (SQLite's rowid without AUTOINCREMENT):
        # their catalog entries go in with one statement (a name that changed content is
        # an update, which the log's trigger follows).
        catalog_log.offer_new_local_files(conn, after_id=before)
    _expire(session, (LocalFile,))
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
    conn.executemany(
        "INSERT INTO local_files (root, name, file_id, size, mtime_ns, ctime_ns, inode, indexed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (root, name) DO UPDATE SET file_id = excluded.file_id,"
        " size = excluded.size, mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,"
        " inode = excluded.inode, indexed_at = excluded.indexed_at",
        [
            (root, name, ids[h.key], h.size, h.mtime_ns, h.ctime_ns, h.inode, now)
            for name, h in items
        ],
    )


def record_local_file(
    session: Session, root: str, name: str, hashed: HashedFile, *, now: float
) -> int:
    """Insert or update the local_files row for root/name; returns the file id."""
    ids = record_local_files(session, root, [(name, hashed)], now=now)
    return ids[hashed.key]


def remove_local_files(session: Session, root: str, names: Iterable[str]) -> int:
    """Forget local files that are gone; returns how many rows went."""
    names = list(names)
    removed = 0
    for part in in_slices(names):
        result = session.execute(
            delete(LocalFile).where(LocalFile.root == root, LocalFile.name.in_(part))
        )
        removed += result.rowcount or 0  # type: ignore[attr-defined]
    return removed


def orphan_file() -> ColumnElement[bool]:
    """True for a `files` row that nothing refers to any more."""
    return (
        ~exists().where(LocalFile.file_id == File.id)
        & ~exists().where(Holding.file_id == File.id)
        & ~exists().where(Download.file_id == File.id)
    )


def delete_orphan_files(session: Session, among: Collection[int] | None = None) -> int:
    """Delete `files` rows (and their chunks) that nothing refers to any more; only those
    `among` these ids when given (the contents of rows just removed or replaced: one probe
    each rather than a pass over every content known)."""
    if among is None:
        result = session.execute(delete(File).where(orphan_file()))
        return result.rowcount or 0  # type: ignore[attr-defined]
    deleted = 0
    for part in in_slices(sorted(among)):
        result = session.execute(delete(File).where(File.id.in_(part), orphan_file()))
        deleted += result.rowcount or 0  # type: ignore[attr-defined]
    return deleted

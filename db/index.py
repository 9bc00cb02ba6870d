"""Queries behind the share-folder index: what this node offers, and its content."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence

from sqlalchemy import ColumnElement, Connection, delete, exists, func, select, text

from . import local_index
from .lists import json_values
from .schema import downloads, files, holdings, local_files
from .status import KEEPING_TEMP
from .values import ContentKey, HashedFile, IndexedStat, Stamp

__all__ = ["ContentKey", "HashedFile", "IndexedStat", "Stamp"]

lf = local_files.c
_STAT_COLUMNS = (lf.name, lf.size, lf.mtime_ns, lf.ctime_ns, lf.inode, lf.file_id)


def indexed_stats(conn: Connection, root: str) -> dict[str, IndexedStat]:
    """Every indexed file under one root, by name."""
    rows = conn.execute(select(*_STAT_COLUMNS).where(lf.root == root))
    return {
        name: IndexedStat(Stamp(size, mtime, ctime, inode), fid)
        for name, size, mtime, ctime, inode, fid in rows
    }


_STATS_PAGE = text(
    "SELECT name, size, mtime_ns, ctime_ns, inode, file_id FROM local_files"
    " WHERE root = :root AND name > :after ORDER BY name LIMIT :limit"
)


def indexed_stats_page(
    conn: Connection, root: str, after: str | None, limit: int
) -> list[tuple[str, IndexedStat]]:
    """Up to `limit` indexed files under one root whose names follow `after` (None: from the
    first), in name order through the (root, name) index: a whole scan reads the index a
    page at a time, each in a short read of its own, never all of a large share at once."""
    rows = conn.execute(
        _STATS_PAGE, {"root": root, "after": "" if after is None else after, "limit": limit}
    )
    return [
        (name, IndexedStat(Stamp(size, mtime, ctime, inode), fid))
        for name, size, mtime, ctime, inode, fid in rows
    ]


# The names given, and every name under them should a name be a folder: '0' follows '/',
# so the names from 'a/' up to 'a0' are exactly those under folder a.
_STATS_OF = text(
    "SELECT l.name, l.size, l.mtime_ns, l.ctime_ns, l.inode, l.file_id"
    " FROM json_each(:names) n CROSS JOIN local_files l"
    " WHERE l.root = :root AND (l.name = n.value"
    " OR (l.name >= n.value || '/' AND l.name < n.value || '0'))"
)


def indexed_stats_of(conn: Connection, root: str, names: Iterable[str]) -> dict[str, IndexedStat]:
    """The indexed files among these names under one root, and every one under them should
    a name be a folder: what a look at changed names compares with, read through the
    (root, name) index, so it costs what changed, not what is shared."""
    rows = conn.execute(_STATS_OF, {"root": root, "names": json.dumps(sorted(set(names)))})
    return {
        name: IndexedStat(Stamp(size, mtime, ctime, inode), fid)
        for name, size, mtime, ctime, inode, fid in rows
    }


def ensure_files(
    conn: Connection, contents: Iterable[HashedFile], *, now: float
) -> dict[ContentKey, int]:
    """Ids of the `files` rows for these contents, inserting missing rows and chunk hashes
    (in bulk: see local_index.ensure_contents)."""
    return local_index.ensure_contents(conn, contents, now=now)


def local_file_count(conn: Connection) -> int:
    """How many files this node offers whole: about the size of its catalog."""
    return int(conn.scalar(select(func.count()).select_from(local_files)) or 0)


def publishing_names(conn: Connection) -> set[str]:
    """Names in the download folder that downloads are publishing: a download records its
    `saved_as` before it links the file there, and ends (its local_files row written in the
    same transaction) after. Until then the name is the downloader's to record."""
    d = downloads.c
    return set(
        conn.scalars(select(d.saved_as).where(d.status.in_(KEEPING_TEMP), d.saved_as.is_not(None)))
    )


def record_local_files(
    conn: Connection, root: str, items: Sequence[tuple[str, HashedFile]], *, now: float
) -> dict[ContentKey, int]:
    """Insert or update the local_files rows for these names under root, their contents and
    their catalog entries; returns file ids."""
    return local_index.record_local_rows(conn, root, items, now=now)


def record_local_file(
    conn: Connection, root: str, name: str, hashed: HashedFile, *, now: float
) -> int:
    """Insert or update the local_files row for root/name; returns the file id."""
    ids = record_local_files(conn, root, [(name, hashed)], now=now)
    return ids[hashed.key]


def remove_local_files(conn: Connection, root: str, names: Iterable[str]) -> int:
    """Forget local files that are gone; returns how many rows went."""
    gone = delete(local_files).where(lf.root == root, lf.name.in_(json_values(list(names))))
    return conn.execute(gone).rowcount


def orphan_file() -> ColumnElement[bool]:
    """True for a `files` row that nothing refers to any more."""
    fid = files.c.id
    return (
        ~exists().where(lf.file_id == fid)
        & ~exists().where(holdings.c.file_id == fid)
        & ~exists().where(downloads.c.file_id == fid)
    )


def delete_orphan_files(conn: Connection, among: Collection[int] | None = None) -> int:
    """Delete `files` rows (and their chunks) that nothing refers to any more; only those
    `among` these ids when given (the contents of rows just removed or replaced: one probe
    each rather than a pass over every content known)."""
    query = delete(files).where(orphan_file())
    if among is not None:
        query = query.where(files.c.id.in_(json_values(sorted(among))))
    return conn.execute(query).rowcount

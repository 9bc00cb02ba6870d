"""Queries behind the share-folder index: what this node offers, and its content."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.orm import Session

from p2pshare.db import local_index
from p2pshare.db.engine import driver_connection
from p2pshare.db.inlists import in_slices
from p2pshare.db.models import Chunk, Download, File, Holding, LocalFile
from p2pshare.db.queueing import KEEPING_TEMP
from p2pshare.db.values import ContentKey, HashedFile, IndexedStat, Stamp

__all__ = ["ContentKey", "HashedFile", "IndexedStat", "Stamp"]


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
    """Ids of the `files` rows for these contents, inserting missing rows and chunk hashes
    (in bulk, in plain sqlite3: see local_index.ensure_contents)."""
    ids = local_index.ensure_contents(driver_connection(session), contents, now=now)
    _expire(session, (File, Chunk))
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
    """Insert or update the local_files rows for these names under root, their contents and
    their catalog entries; returns file ids."""
    ids = local_index.record_local_rows(driver_connection(session), root, items, now=now)
    _expire(session, (File, Chunk, LocalFile))
    return ids


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

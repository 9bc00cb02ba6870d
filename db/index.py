"""Queries behind the share-folder index: what this node offers, and its content."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar, cast

from sqlalchemy import ColumnElement, Table, delete, exists, func, insert, select
from sqlalchemy.orm import Session

from p2pshare.db.models import Chunk, Download, File, Holding, LocalFile
from p2pshare.db.queueing import KEEPING_TEMP
from p2pshare.db.values import ContentKey, HashedFile, IndexedStat, Stamp

__all__ = ["ContentKey", "HashedFile", "IndexedStat", "Stamp"]

# The tables behind the models, for Core bulk inserts (see ensure_files).
_FILES = cast(Table, File.__table__)
_CHUNKS = cast(Table, Chunk.__table__)
_LOCAL_FILES = cast(Table, LocalFile.__table__)


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


T = TypeVar("T")
BATCH = 500  # SQLite caps bound parameters per statement; IN lists go in slices


def _slices(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def ensure_files(
    session: Session, contents: Iterable[HashedFile], *, now: float
) -> dict[ContentKey, int]:
    """Ids of the `files` rows for these contents, inserting missing rows and chunk hashes.

    In bulk: a catalog or a first index of 10,000 files is a few statements, not 30,000.
    """
    wanted = {h.key: h for h in contents}
    ids = _file_ids(session, wanted)
    new = [h for key, h in wanted.items() if key not in ids]
    if new:
        # Core inserts (the tables, not the classes): the ORM's bulk path spent more time
        # per row than hashing a small file takes.
        session.execute(
            insert(_FILES),
            [
                {
                    "sha256": h.sha256,
                    "size": h.size,
                    "chunk_size": h.chunk_size,
                    "root": h.root,
                    "chunk_count": len(h.chunk_hashes),
                    "first_seen": now,
                }
                for h in new
            ],
        )
        ids.update(_file_ids(session, {h.key: h for h in new}))
    hashed: set[int] = set()
    for part in _slices(list(ids.values())):
        hashed.update(
            session.scalars(
                select(Chunk.file_id).where(Chunk.file_id.in_(part), Chunk.chunk_index == 0)
            )
        )
    rows = [
        {"file_id": ids[key], "chunk_index": i, "size": size, "sha256": digest}
        for key, h in wanted.items()
        if ids[key] not in hashed
        for i, (size, digest) in enumerate(zip(h.chunk_sizes, h.chunk_hashes, strict=True))
    ]
    if rows:
        session.execute(insert(_CHUNKS), rows)
    return ids


def _file_ids(session: Session, wanted: dict[ContentKey, HashedFile]) -> dict[ContentKey, int]:
    ids: dict[ContentKey, int] = {}
    for part in _slices(sorted({sha for sha, _, _ in wanted})):
        for sha, cs, root, fid in session.execute(
            select(File.sha256, File.chunk_size, File.root, File.id).where(File.sha256.in_(part))
        ):
            if (sha, cs, root) in wanted:
                ids[(sha, cs, root)] = fid
    return ids


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
    ids = ensure_files(session, (h for _, h in items), now=now)
    existing: dict[str, LocalFile] = {}
    for part in _slices([name for name, _ in items]):
        existing.update(
            (row.name, row)
            for row in session.scalars(
                select(LocalFile).where(LocalFile.root == root, LocalFile.name.in_(part))
            )
        )
    new = []
    for name, h in items:
        file_id = ids[h.key]
        row = existing.get(name)
        if row is None:
            new.append(
                {
                    "root": root,
                    "name": name,
                    "file_id": file_id,
                    "size": h.size,
                    "mtime_ns": h.mtime_ns,
                    "ctime_ns": h.ctime_ns,
                    "inode": h.inode,
                    "indexed_at": now,
                }
            )
        else:
            row.file_id, row.size, row.mtime_ns, row.indexed_at = file_id, h.size, h.mtime_ns, now
            row.ctime_ns, row.inode = h.ctime_ns, h.inode
    if new:
        session.execute(insert(_LOCAL_FILES), new)
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
    # SQLite limits bound parameters per statement; delete in slices.
    for start in range(0, len(names), 500):
        result = session.execute(
            delete(LocalFile).where(
                LocalFile.root == root, LocalFile.name.in_(names[start : start + 500])
            )
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


def delete_orphan_files(session: Session) -> int:
    """Delete `files` rows (and their chunks) that nothing refers to any more."""
    result = session.execute(delete(File).where(orphan_file()))
    return result.rowcount or 0  # type: ignore[attr-defined]

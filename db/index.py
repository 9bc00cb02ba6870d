"""Queries behind the share-folder index: what this node offers, and its content."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from p2pshare.db.models import Chunk, Download, File, Holding, LocalFile


@dataclass(frozen=True)
class IndexedStat:
    """What the index remembers of a local file, to skip re-hashing it."""

    size: int
    mtime_ns: int
    file_id: int


@dataclass(frozen=True)
class HashedFile:
    """A file's content as the indexer measured it."""

    size: int
    mtime_ns: int
    sha256: str
    chunk_size: int
    chunk_hashes: Sequence[str]
    chunk_sizes: Sequence[int]


def indexed_stats(session: Session, root: str) -> dict[str, IndexedStat]:
    """Every indexed file under one root, by name."""
    rows = session.execute(
        select(LocalFile.name, LocalFile.size, LocalFile.mtime_ns, LocalFile.file_id).where(
            LocalFile.root == root
        )
    )
    return {name: IndexedStat(size, mtime, fid) for name, size, mtime, fid in rows}


def ensure_file(session: Session, hashed: HashedFile, *, now: float) -> int:
    """The id of the `files` row for this content, inserting it and its chunks if new."""
    file_id = session.scalar(
        select(File.id).where(File.sha256 == hashed.sha256, File.chunk_size == hashed.chunk_size)
    )
    if file_id is not None:
        have_chunks = session.scalar(select(exists().where(Chunk.file_id == file_id)))
        if have_chunks or not hashed.chunk_hashes:
            return file_id
    else:
        row = File(
            sha256=hashed.sha256,
            size=hashed.size,
            chunk_size=hashed.chunk_size,
            chunk_count=len(hashed.chunk_hashes),
            first_seen=now,
        )
        session.add(row)
        session.flush()
        file_id = row.id
    session.add_all(
        Chunk(file_id=file_id, chunk_index=i, size=size, sha256=digest)
        for i, (size, digest) in enumerate(
            zip(hashed.chunk_sizes, hashed.chunk_hashes, strict=True)
        )
    )
    return file_id


def record_local_file(
    session: Session, root: str, name: str, hashed: HashedFile, *, now: float
) -> int:
    """Insert or update the local_files row for root/name; returns the file id."""
    file_id = ensure_file(session, hashed, now=now)
    row = session.scalar(select(LocalFile).where(LocalFile.root == root, LocalFile.name == name))
    if row is None:
        session.add(
            LocalFile(
                root=root,
                name=name,
                file_id=file_id,
                size=hashed.size,
                mtime_ns=hashed.mtime_ns,
                indexed_at=now,
            )
        )
    else:
        row.file_id, row.size, row.mtime_ns, row.indexed_at = (
            file_id,
            hashed.size,
            hashed.mtime_ns,
            now,
        )
    return file_id


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


def delete_orphan_files(session: Session) -> int:
    """Delete `files` rows (and their chunks) that nothing refers to any more."""
    orphan = (
        ~exists().where(LocalFile.file_id == File.id)
        & ~exists().where(Holding.file_id == File.id)
        & ~exists().where(Download.file_id == File.id)
    )
    result = session.execute(delete(File).where(orphan))
    return result.rowcount or 0  # type: ignore[attr-defined]

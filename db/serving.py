"""Queries behind the chunk server: what this node offers, and where the bytes are."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import ColumnElement, Connection, exists, func, insert, select

from .index import ContentKey, Stamp
from .ledger import add_to_totals
from .lists import json_values
from .schema import chunks, downloads, files, local_files, uploads
from .status import KEEPING_TEMP

lf, f, d, ch = local_files.c, files.c, downloads.c, chunks.c

T = TypeVar("T")

# Downloads that may hold verified chunks worth offering: those whose temp file stays
# (unfinished ones, and paused ones).
OFFERING_STATUSES = KEEPING_TEMP


@dataclass(frozen=True)
class Offer:
    """One catalog entry: a file this node holds all or part of."""

    name: str
    sha256: str
    chunk_size: int
    root: str
    size: int
    # None: every chunk; else the bitfield of verified chunks (a download in progress).
    have: bytes | None


@dataclass(frozen=True)
class ByteSource:
    """A place on disk holding a file's bytes: a shared file or a download's temp file."""

    root: str | None  # 'share' / 'download' for a local file, None for a temp file
    path: str  # the name under root, or the temp file's absolute path
    size: int
    stamp: Stamp | None  # what the index saw; None for temp files (private to the node)
    have: bytes | None
    name: str


def offers(conn: Connection) -> list[Offer]:
    """Everything this node offers: shared files, finished and in-progress downloads."""
    rows = conn.execute(
        select(lf.name, f.sha256, f.chunk_size, f.root, f.size).join(files, f.id == lf.file_id)
    )
    out = [Offer(name, sha, cs, root, size, None) for name, sha, cs, root, size in rows]
    partial = conn.execute(
        select(d.name, f.sha256, f.chunk_size, f.root, f.size, d.have)
        .join(files, f.id == d.file_id)
        .where(d.status.in_(OFFERING_STATUSES), d.bytes_done > 0)
    )
    out.extend(
        Offer(name, sha, cs, root, size, bytes(have)) for name, sha, cs, root, size, have in partial
    )
    return out


def byte_sources(conn: Connection, key: ContentKey) -> list[ByteSource]:
    """Where this node holds the file's bytes; whole local files first.

    A partial download is offered only under the root it verified its chunks with.
    """
    return byte_sources_many(conn, [key])[key]


def byte_sources_many(
    conn: Connection, keys: Iterable[ContentKey]
) -> dict[ContentKey, list[ByteSource]]:
    """byte_sources of every key at once, in three statements (the chunk server looks up a
    batch of pipelined requests this way); an unknown key maps to []."""
    out: dict[ContentKey, list[ByteSource]] = {key: [] for key in keys}
    files: dict[int, tuple[ContentKey, int]] = {}  # files.id -> (key, size)
    shas = json_values(sorted({sha for sha, _, _ in out}))
    for fid, sha, chunk_size, root, size in conn.execute(
        select(f.id, f.sha256, f.chunk_size, f.root, f.size).where(f.sha256.in_(shas))
    ):
        if (sha, chunk_size, root) in out:
            files[fid] = ((sha, chunk_size, root), size)
    ids = json_values(sorted(files))
    for fid, where, name, size, mtime_ns, ctime_ns, inode in conn.execute(
        select(lf.file_id, lf.root, lf.name, lf.size, lf.mtime_ns, lf.ctime_ns, lf.inode)
        .where(lf.file_id.in_(ids))
        .order_by(lf.id)
    ):
        stamp = Stamp(size, mtime_ns, ctime_ns, inode)
        out[files[fid][0]].append(ByteSource(where, name, size, stamp, None, name))
    for held_id, temp_path, have, name in conn.execute(
        select(d.file_id, d.temp_path, d.have, d.name)
        .where(
            d.file_id.in_(ids),
            d.status.in_(OFFERING_STATUSES),
            d.bytes_done > 0,
            d.temp_path.is_not(None),
        )
        .order_by(d.id)
    ):
        assert held_id is not None  # IN (...) matched it
        key, size = files[held_id]
        out[key].append(ByteSource(None, str(temp_path), size, None, bytes(have), name))
    return out


def all_byte_sources(conn: Connection, limit: int) -> dict[ContentKey, list[ByteSource]] | None:
    """byte_sources of everything this node offers, in three statements (so a server that
    serves many small files looks each one up in memory), in the order byte_sources
    gives; None when it shares more than `limit` files."""
    count = conn.scalar(select(func.count()).select_from(local_files)) or 0
    if count > limit:
        return None
    out: dict[ContentKey, list[ByteSource]] = {}
    for sha, chunk_size, root, where, name, size, mtime_ns, ctime_ns, inode in conn.execute(
        select(
            f.sha256,
            f.chunk_size,
            f.root,
            lf.root,
            lf.name,
            lf.size,
            lf.mtime_ns,
            lf.ctime_ns,
            lf.inode,
        )
        .join(files, f.id == lf.file_id)
        .order_by(lf.id)
    ):
        stamp = Stamp(size, mtime_ns, ctime_ns, inode)
        source = ByteSource(where, name, size, stamp, None, name)
        out.setdefault((sha, chunk_size, root), []).append(source)
    for sha, chunk_size, root, size, temp_path, have, name in conn.execute(
        select(
            f.sha256,
            f.chunk_size,
            f.root,
            f.size,
            d.temp_path,
            d.have,
            d.name,
        )
        .join(files, f.id == d.file_id)
        .where(
            d.status.in_(OFFERING_STATUSES),
            d.bytes_done > 0,
            d.temp_path.is_not(None),
        )
        .order_by(d.id)
    ):
        source = ByteSource(None, str(temp_path), size, None, bytes(have), name)
        out.setdefault((sha, chunk_size, root), []).append(source)
    return out


def chunk_hashes(conn: Connection, keys: Iterable[ContentKey]) -> dict[ContentKey, list[str]]:
    """The manifest entries, in order, of each file this node offers and knows completely,
    in bulk. A manifest only learned from a peer is not served: nothing but bytes this
    node verified under it (a file of its own, a download's verified chunks) vouches for
    it, and serving it onward would spread a lie as this node's own."""
    wanted = set(keys)
    shas = sorted({sha for sha, _, _ in wanted})
    out: dict[ContentKey, list[str]] = {}
    counts: dict[ContentKey, int] = {}
    rows = conn.execute(
        select(f.sha256, f.chunk_size, f.root, f.chunk_count, ch.sha256)
        .outerjoin(chunks, ch.file_id == f.id)
        .where(f.sha256.in_(json_values(shas)), _offered_here())
        .order_by(f.id, ch.chunk_index)
    )
    for sha, cs, root, count, chunk_sha in rows:
        key = (sha, cs, root)
        if key in wanted:
            counts[key] = count
            hashes = out.setdefault(key, [])
            if chunk_sha is not None:
                hashes.append(chunk_sha)
    return {k: v for k, v in out.items() if len(v) == counts[k]}


def _offered_here() -> ColumnElement[bool]:
    """True for a `files` row this node offers: a local file, or a download's verified chunks."""
    return exists().where(lf.file_id == f.id) | exists().where(
        d.file_id == f.id,
        d.status.in_(OFFERING_STATUSES),
        d.bytes_done > 0,
    )


@dataclass(frozen=True)
class ServedChunk:
    at: float
    peer_address: str
    sha256: str
    name: str
    chunk_index: int
    offset: int
    bytes: int
    seconds: float


def record_uploads(conn: Connection, served: Iterable[ServedChunk]) -> None:
    """One row per served chunk, in one executemany (the server records thousands of chunks
    per GiB)."""
    rows = [
        {
            "at": s.at,
            "peer_address": s.peer_address,
            "sha256": s.sha256,
            "name": s.name,
            "chunk_index": s.chunk_index,
            "chunk_offset": s.offset,
            "bytes": s.bytes,
            "seconds": s.seconds,
        }
        for s in served
    ]
    if rows:
        conn.execute(insert(uploads), rows)
        add_to_totals(conn, len(rows), sum(r["bytes"] for r in rows))  # type: ignore[misc]

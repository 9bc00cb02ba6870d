"""The downloader's bookkeeping: which downloads to run, what a job needs to know at its
start, its sources, its progress made durable, and its end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, text, update

from .index import HashedFile, record_local_files
from .schema import chunks, downloads
from .sources import Source, mark_bad, sources_of
from .status import KEEPING_TEMP, UNFINISHED, Status

__all__ = ["Source"]

d = downloads.c


def unfinished_downloads(conn: Connection) -> list[int]:
    """Ids of downloads to run, oldest first (queued ones and any a crash interrupted)."""
    return list(conn.scalars(select(d.id).where(d.status.in_(UNFINISHED)).order_by(d.id)))


def downloads_keeping_temp(conn: Connection) -> set[int]:
    """Downloads whose temp file must stay."""
    return set(conn.scalars(select(d.id).where(d.status.in_(KEEPING_TEMP))))


@dataclass(frozen=True)
class JobSpec:
    """What a download job needs to know, read once at its start."""

    download_id: int
    file_id: int
    name: str
    sha256: str
    size: int
    chunk_size: int
    root: str
    # The manifest: per chunk, the SHA-256 chaining state after it (hex).
    chunk_hashes: list[str]
    have: bytes
    temp_path: str | None
    saved_as: str | None
    status: str
    # When it was asked for: a file at `saved_as` older than this is not one it published.
    requested_at: float = 0.0


_SPECS = text(
    "SELECT d.id, f.id, d.name, f.sha256, f.size, f.chunk_size, f.root, d.have, d.temp_path,"
    " d.saved_as, d.status, d.requested_at FROM downloads d JOIN files f ON f.id = d.file_id"
    " WHERE d.id IN (SELECT value FROM json_each(:ids)) ORDER BY d.id"
)
_ENTRIES = text(
    "SELECT file_id, sha256 FROM chunks WHERE file_id IN (SELECT value FROM json_each(:ids))"
    " ORDER BY file_id, chunk_index"
)


def job_specs(conn: Connection, download_ids: Sequence[int]) -> list[JobSpec]:
    """What each of these downloads' jobs needs, in two queries however many (a download
    with no `files` row, a torrent's, has none)."""
    rows = conn.execute(_SPECS, {"ids": json.dumps(sorted(set(download_ids)))}).all()
    entries: dict[int, list[str]] = {row[1]: [] for row in rows}
    for file_id, entry in conn.execute(_ENTRIES, {"ids": json.dumps(list(entries))}):
        entries[file_id].append(entry)
    return [
        JobSpec(did, fid, name, sha, size, cs, root, entries[fid], bytes(have or b""),
                temp, saved, status, requested)
        for did, fid, name, sha, size, cs, root, have, temp, saved, status, requested in rows
    ]  # fmt: skip


def job_spec(conn: Connection, download_id: int) -> JobSpec | None:
    specs = job_specs(conn, [download_id])
    return specs[0] if specs else None


def sources_for(conn: Connection, file_id: int) -> list[Source]:
    """The usable sources of the file (db.sources): peers holding any chunk of it."""
    return sources_of(conn, [file_id])[file_id]


def start_job(conn: Connection, download_id: int, temp_path: str, *, now: float) -> None:
    conn.execute(
        update(downloads)
        .where(d.id == download_id)
        .values(temp_path=temp_path, started_at=func.coalesce(d.started_at, now))
    )


@dataclass(frozen=True)
class SourceTally:
    address: str
    tcp_port: int
    username: str
    chunks: int
    bytes: int
    bad_chunks: int


@dataclass(frozen=True)
class Progress:
    """What a job learned since its last flush; every field is an increment except the state."""

    have: bytes  # the whole durable bitfield
    bytes_done: int
    new_bytes_received: int
    new_bad_chunks: int
    tallies: list[SourceTally]
    new_bad_peers: list[tuple[str, int]]
    status: str  # active or waiting
    reason: str | None


def record_progress(conn: Connection, download_id: int, p: Progress, *, now: float) -> str:
    """Write a job's batch of progress; returns the download's status (a cancel shows here)."""
    row = conn.execute(select(d.status, d.file_id).where(d.id == download_id)).first()
    if row is None:
        return Status.CANCELLED
    if row.status not in UNFINISHED:
        return str(row.status)
    conn.execute(
        update(downloads)
        .where(d.id == download_id)
        .values(
            have=p.have,
            bytes_done=p.bytes_done,
            status=p.status,
            reason=p.reason,
            bytes_received=d.bytes_received + p.new_bytes_received,
            bad_chunks=d.bad_chunks + p.new_bad_chunks,
        )
    )
    add_tallies(conn, [(download_id, t) for t in p.tallies])
    mark_bad(conn, [(row.file_id, address, port) for address, port in p.new_bad_peers], now=now)
    return p.status


def add_tallies(conn: Connection, tallies: Sequence[tuple[int, SourceTally]]) -> None:
    """Add each source's chunks and bytes to `download_sources`: a row a retry left is
    added to, else one is inserted."""
    if not tallies:
        return
    conn.execute(
        text(
            "INSERT INTO download_sources"
            " (download_id, address, tcp_port, username, chunks, bytes, bad_chunks)"
            " VALUES (:download_id, :address, :tcp_port, :username, :chunks, :bytes, :bad)"
            " ON CONFLICT (download_id, address, tcp_port) DO UPDATE SET"
            " chunks = chunks + excluded.chunks, bytes = bytes + excluded.bytes,"
            " bad_chunks = bad_chunks + excluded.bad_chunks"
        ),
        [
            {
                "download_id": i,
                "address": t.address,
                "tcp_port": t.tcp_port,
                "username": t.username,
                "chunks": t.chunks,
                "bytes": t.bytes,
                "bad": t.bad_chunks,
            }
            for i, t in tallies
        ],  # fmt: skip
    )


def set_saved_as(conn: Connection, download_id: int, saved_as: str) -> None:
    """Remember where the file is about to be published, so a crash mid-publish resumes there."""
    conn.execute(update(downloads).where(d.id == download_id).values(saved_as=saved_as))


def hold_download(conn: Connection, download_id: int, reason: str) -> None:
    """Pause a whole, verified download the node cannot publish yet (its folder full or
    unwritable): its temp file stays, and `p2pctl resume` publishes it once fixed. One
    cancelled or paused by the user meanwhile keeps their word."""
    conn.execute(
        update(downloads)
        .where(d.id == download_id, d.status.in_(UNFINISHED))
        .values(status=Status.PAUSED, reason=reason, saved_as=None)
    )


def finish_download(
    conn: Connection,
    download_id: int,
    *,
    status: str,
    reason: str | None,
    now: float,
    published: tuple[str, HashedFile] | None = None,
) -> None:
    """End a download: done (then shared from the download folder), failed or cancelled."""
    ending = update(downloads).where(d.id == download_id)
    if status != Status.DONE:
        # Cancelled meanwhile: keep the user's word. A name chosen for it before
        # publishing failed is not its.
        ending = ending.where(d.status.in_(UNFINISHED)).values(saved_as=None)
    values: dict[str, object] = {
        "status": status, "reason": reason, "finished_at": now, "temp_path": None
    }  # fmt: skip
    if published is not None:
        name, hashed = published
        values.update(saved_as=name, bytes_done=d.size)
    conn.execute(ending.values(**values))
    if published is not None:
        record_local_files(conn, "download", [published], now=now)


def entries(conn: Connection, file_id: int) -> list[str]:
    """A file's manifest entries (hex), in chunk order."""
    return list(
        conn.scalars(
            select(chunks.c.sha256)
            .where(chunks.c.file_id == file_id)
            .order_by(chunks.c.chunk_index)
        )
    )

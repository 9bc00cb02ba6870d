"""The downloader's bookkeeping for batches of small files: many downloads a transaction.

A folder of a thousand small files would otherwise cost a thousand of everything a
big file costs once (a job, its reads, its start, its progress, its publish); here
each step is one query or one transaction for the whole batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from p2pshare.db.downloads import UNFINISHED
from p2pshare.db.engine import driver_connection
from p2pshare.db.index import HashedFile, record_local_files
from p2pshare.db.inlists import SLICE, in_slices, marks, padded
from p2pshare.db.jobs import JobSpec, Progress, Source, SourceTally, record_progress
from p2pshare.db.models import Download
from p2pshare.services.protocol.bitfield import bitfield_empty, bitfield_set


@dataclass(frozen=True)
class Runnable:
    """An unfinished download as the downloader's loop sees it."""

    download_id: int
    chunks: int
    size: int
    resuming: bool  # a crash may have left it mid-publish (saved_as set): the full job's case
    file_id: int
    hashed: bool  # its chunk hashes are here (a manifest is fetched first otherwise)


def runnable_downloads(
    session: Session,
    *,
    only_big: tuple[int, int] | None = None,
    also: Collection[int] = (),
    only_queued: bool = False,
) -> list[Runnable]:
    """Downloads to run, oldest first (queued ones and any a crash interrupted). With
    `only_big` (a batch's limits: chunks, bytes), only those a batch cannot take, and
    `also`: when no batch could start, ten thousand queued small files need not be read
    to find none. With `only_queued`, only those never started: what a change to the
    queue can have added (the running ones are most of the rest, and a folder's batch
    commits several times a second). Plain sqlite3: a thousand rows through the ORM's
    result machinery were most of a folder's pick-up."""
    statuses = ("queued",) if only_queued else UNFINISHED
    sql = (
        "SELECT d.id, f.chunk_count, f.size, d.saved_as IS NOT NULL, f.id, f.chunk_count = 0"
        " OR EXISTS (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0)"
        " FROM downloads d JOIN files f ON f.id = d.file_id"
        f" WHERE d.status IN ({marks(statuses)})"
    )
    params: list[object] = list(statuses)
    if only_big is not None:
        chunks, size = only_big
        kept = padded(sorted(also)[:SLICE]) if also else []
        sql += (
            " AND (NOT (f.chunk_count <= ? AND f.size <= ? AND d.saved_as IS NULL)"
            f" OR d.id IN ({marks(kept) or 'NULL'}))"
        )
        params += [chunks, size, *kept]
    rows = driver_connection(session).execute(sql + " ORDER BY d.id", params)
    return [
        Runnable(i, n, size, bool(resuming), fid, bool(hashed))
        for i, n, size, resuming, fid, hashed in rows
    ]


def unfinished_mark(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """A cheap summary of which downloads are unfinished (count, highest id, sum of ids),
    on a plain connection: it changes whenever a download is queued, resumed or ends, and
    not when one only goes from queued to active or records progress, so the downloader
    rereads its queue when this moves rather than after every commit of any role (a boot
    storm: the listener's twenty a second)."""
    row = conn.execute(
        "SELECT count(*), coalesce(max(id), 0), coalesce(sum(id), 0) FROM downloads"
        f" WHERE status IN ({','.join('?' * len(UNFINISHED))})",
        UNFINISHED,
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def job_specs(session: Session, download_ids: Sequence[int]) -> list[JobSpec]:
    """What each of these downloads' jobs needs, in two queries however many.

    Plain sqlite3 on the session's connection: building a thousand Download and File
    objects took most of a batch's 0.1 s start before its first request went out."""
    conn = driver_connection(session)
    rows: list[tuple[Any, ...]] = []
    for part in in_slices(sorted(set(download_ids))):
        rows.extend(
            conn.execute(
                "SELECT d.id, f.id, d.name, f.sha256, f.size, f.chunk_size, f.root, d.have,"
                " d.temp_path, d.saved_as, d.status"
                " FROM downloads d JOIN files f ON f.id = d.file_id"
                f" WHERE d.id IN ({marks(part)}) ORDER BY d.id",
                part,
            ).fetchall()
        )
    entries: dict[int, list[str]] = {row[1]: [] for row in rows}
    for part in in_slices(list(entries)):
        for file_id, entry in conn.execute(
            "SELECT file_id, sha256 FROM chunks"
            f" WHERE file_id IN ({marks(part)}) ORDER BY file_id, chunk_index",
            part,
        ):
            entries[file_id].append(entry)
    return [
        JobSpec(did, fid, name, sha, size, cs, root, entries[fid], bytes(have or b""),
                temp, saved, status)
        for did, fid, name, sha, size, cs, root, have, temp, saved, status in rows
    ]  # fmt: skip


def sources_for_files(session: Session, file_ids: Sequence[int]) -> dict[int, list[Source]]:
    """Per file, the live peers that hold all of it (a batch asks one source for a whole
    file; partial holders are the full job's), minus those marked bad for it; in one
    pass however many files."""
    conn = driver_connection(session)
    out: dict[int, dict[tuple[str, int], Source]] = {fid: {} for fid in file_ids}
    bad: set[tuple[int, str, int]] = set()
    for part in in_slices(list(file_ids)):
        bad.update(
            conn.execute(
                "SELECT file_id, address, tcp_port FROM bad_peers"
                f" WHERE file_id IN ({marks(part)})",
                part,
            )
        )
        for fid, address, port, username, fingerprint, tls in conn.execute(
            "SELECT h.file_id, p.address, p.tcp_port, p.username, p.fingerprint, p.tls"
            " FROM holdings h JOIN peers p ON p.id = h.peer_id JOIN files f ON f.id = h.file_id"
            f" WHERE h.file_id IN ({marks(part)})"
            " AND h.chunks_held > 0 AND h.chunks_held >= f.chunk_count",
            part,
        ):
            if (fid, address, port) not in bad:
                out[fid][(address, port)] = Source(
                    address, port, username, None, fingerprint, bool(tls)
                )
    return {fid: list(found.values()) for fid, found in out.items()}


def start_batch(session: Session, temp_paths: dict[int, str], *, now: float) -> list[int]:
    """Mark these downloads active with their temp files; returns those still unfinished
    (a cancel or pause in between keeps the user's word)."""
    conn = driver_connection(session)
    started = _unfinished(conn, list(temp_paths))
    conn.executemany(
        "UPDATE downloads SET status = 'active', reason = NULL, temp_path = ?,"
        " started_at = coalesce(started_at, ?) WHERE id = ?",
        [(temp_paths[i], now, i) for i in started],
    )
    return started


def set_saved_as_many(session: Session, names: dict[int, str]) -> set[int]:
    """Remember where each file is about to be published, so a crash mid-publish resumes
    there (the full job's Finisher.already_published). Returns the downloads recorded:
    one paused or cancelled meanwhile is not published (the user's word wins)."""
    conn = driver_connection(session)
    recorded = _unfinished(conn, list(names))
    conn.executemany(
        "UPDATE downloads SET saved_as = ? WHERE id = ?", [(names[i], i) for i in recorded]
    )
    return set(recorded)


def _unfinished(conn: sqlite3.Connection, download_ids: list[int]) -> list[int]:
    """Those of these downloads still queued, active or waiting, in id order."""
    out: list[int] = []
    for part in in_slices(sorted(download_ids)):
        out.extend(
            i
            for (i,) in conn.execute(
                f"SELECT id FROM downloads WHERE id IN ({marks(part)})"
                f" AND status IN ({marks(UNFINISHED)})",
                [*part, *UNFINISHED],
            )
        )
    return sorted(out)


@dataclass(frozen=True)
class Fetched:
    """A small file of the batch, verified, durable and published under `saved_as`."""

    download_id: int
    saved_as: str
    hashed: HashedFile
    source: SourceTally | None  # None: an empty file, fetched from nobody


def finish_batch(session: Session, done: Sequence[Fetched], *, now: float) -> None:
    """Record published files as done and shared from the download folder, with where
    they came from; with `bump`, the catalog's version moves once for all of them. A
    handful of statements for the whole group: a row-by-row ORM walk cost a millisecond
    a file."""
    if not done:
        return
    # Published is published: a pause or cancel that came meanwhile cannot unpublish it.
    # Plain sqlite3, one statement run for every row: the ORM, then Core's parameter
    # processing, each cost more per file than the file's own bytes.
    conn = driver_connection(session)
    conn.executemany(
        "UPDATE downloads SET status = 'done', reason = NULL, finished_at = ?, temp_path = NULL,"
        " saved_as = ?, bytes_done = size, have = ?, bytes_received = bytes_received + size"
        " WHERE id = ?",
        [(now, f.saved_as, _all_held(len(f.hashed.chunk_sizes)), f.download_id) for f in done],
    )
    _add_tallies(conn, [(f.download_id, f.source) for f in done if f.source is not None])
    record_local_files(session, "download", [(f.saved_as, f.hashed) for f in done], now=now)


def _add_tallies(conn: sqlite3.Connection, tallies: Sequence[tuple[int, SourceTally]]) -> None:
    """Add each source's chunks and bytes to `download_sources`: a row a retry left is
    added to, else one is inserted."""
    conn.executemany(
        "INSERT INTO download_sources"
        " (download_id, address, tcp_port, username, chunks, bytes, bad_chunks)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (download_id, address, tcp_port) DO UPDATE SET"
        " chunks = chunks + excluded.chunks, bytes = bytes + excluded.bytes,"
        " bad_chunks = bad_chunks + excluded.bad_chunks",
        [
            (i, t.address, t.tcp_port, t.username, t.chunks, t.bytes, t.bad_chunks)
            for i, t in tallies
        ],
    )


def record_bad(session: Session, download_id: int, source: SourceTally, *, now: float) -> None:
    """A source sent a chunk of a small file that fails verification: count it and mark the
    peer bad for that file (sources_for_files leaves it out from now on). What the file
    holds stays as it was: a batch writes a file only whole and verified."""
    d = session.get(Download, download_id)
    if d is None:
        return
    key = (source.address, source.tcp_port)
    progress = Progress(
        bytes(d.have), d.bytes_done, source.bytes, 1, [source], [key], "active", None
    )
    record_progress(session, download_id, progress, now=now)


def _all_held(chunks: int) -> bytes:
    """The bitfield of a file whose every chunk is held (chunk 0 the high bit of byte 0)."""
    bits = bitfield_empty(chunks)
    for i in range(chunks):
        bitfield_set(bits, i)
    return bytes(bits)

"""The downloader's bookkeeping for batches of small files: many downloads a transaction.

A folder of a thousand small files would otherwise cost a thousand of everything a
big file costs once (a job, its reads, its start, its progress, its publish); here
each step is one query or one transaction for the whole batch.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, text

from .bitfield import bitfield_full
from .index import HashedFile, record_local_files
from .jobs import JobSpec, Progress, SourceTally, add_tallies, job_specs, record_progress
from .schema import downloads
from .sources import Source, sources_of
from .status import UNFINISHED, Status

__all__ = ["JobSpec", "job_specs"]


@dataclass(frozen=True)
class Runnable:
    """An unfinished download as the downloader's loop sees it."""

    download_id: int
    chunks: int
    size: int
    resuming: bool  # a crash may have left it mid-publish (saved_as set): the full job's case
    file_id: int
    hashed: bool  # its chunk hashes are here (a manifest is fetched first otherwise)


_RUNNABLE = text(
    "SELECT d.id, f.chunk_count, f.size, d.saved_as IS NOT NULL, f.id, f.chunk_count = 0"
    " OR EXISTS (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0)"
    " FROM downloads d JOIN files f ON f.id = d.file_id"
    " WHERE d.status IN (SELECT value FROM json_each(:statuses))"
    " AND (NOT :big OR NOT (f.chunk_count <= :chunks AND f.size <= :size AND d.saved_as IS NULL)"
    " OR d.id IN (SELECT value FROM json_each(:also))) ORDER BY d.id"
)


def runnable_downloads(
    conn: Connection,
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
    commits several times a second)."""
    statuses = (Status.QUEUED,) if only_queued else UNFINISHED
    chunks, size = only_big if only_big is not None else (-1, -1)
    rows = conn.execute(
        _RUNNABLE,
        {
            "statuses": json.dumps(statuses),
            "big": only_big is not None,
            "chunks": chunks,
            "size": size,
            "also": json.dumps(sorted(also)),
        },
    )
    return [
        Runnable(i, n, size, bool(resuming), fid, bool(hashed))
        for i, n, size, resuming, fid, hashed in rows
    ]


# Built once: the idle downloader runs it at every commit of any role, and building the
# statement cost three times what running it does.
_UNFINISHED_MARK = select(
    func.count(),
    func.coalesce(func.max(downloads.c.id), 0),
    func.coalesce(func.sum(downloads.c.id), 0),
).where(downloads.c.status.in_(UNFINISHED))


def unfinished_mark(conn: Connection) -> tuple[int, int, int]:
    """A cheap summary of which downloads are unfinished (count, highest id, sum of ids): it
    changes whenever a download is queued, resumed or ends, and not when one only goes
    from queued to active or records progress, so the downloader rereads its queue when
    this moves rather than after every commit of any role (a boot storm: the listener's
    twenty a second)."""
    row = conn.execute(_UNFINISHED_MARK).one()
    return int(row[0]), int(row[1]), int(row[2])


def sources_for_files(conn: Connection, file_ids: Sequence[int]) -> dict[int, list[Source]]:
    """Per file, its usable sources (db.sources) that hold all of it: a batch asks one
    source for a whole file; partial holders are the full job's."""
    return sources_of(conn, file_ids, whole=True)


_STILL_UNFINISHED = text(
    "SELECT id FROM downloads WHERE id IN (SELECT value FROM json_each(:ids))"
    " AND status IN (SELECT value FROM json_each(:unfinished)) ORDER BY id"
)


def _unfinished(conn: Connection, download_ids: Collection[int]) -> list[int]:
    """Those of these downloads still queued, active or waiting, in id order."""
    params = {"ids": json.dumps(sorted(download_ids)), "unfinished": json.dumps(UNFINISHED)}
    return list(conn.scalars(_STILL_UNFINISHED, params))


def start_batch(conn: Connection, temp_paths: dict[int, str], *, now: float) -> list[int]:
    """Mark these downloads active with their temp files; returns those still unfinished
    (a cancel or pause in between keeps the user's word)."""
    started = _unfinished(conn, temp_paths)
    if started:
        conn.execute(
            text(
                "UPDATE downloads SET status = :active, reason = NULL, temp_path = :temp,"
                " started_at = coalesce(started_at, :now) WHERE id = :id"
            ),
            [{"active": Status.ACTIVE, "temp": temp_paths[i], "now": now, "id": i}
             for i in started],
        )  # fmt: skip
    return started


def set_saved_as_many(conn: Connection, names: dict[int, str]) -> set[int]:
    """Remember where each file is about to be published, so a crash mid-publish resumes
    there (the full job's Finisher.already_published). Returns the downloads recorded:
    one paused or cancelled meanwhile is not published (the user's word wins)."""
    recorded = _unfinished(conn, names)
    if recorded:
        conn.execute(
            text("UPDATE downloads SET saved_as = :saved WHERE id = :id"),
            [{"saved": names[i], "id": i} for i in recorded],
        )
    return set(recorded)


@dataclass(frozen=True)
class Fetched:
    """A small file of the batch, verified, durable and published under `saved_as`."""

    download_id: int
    saved_as: str
    hashed: HashedFile
    source: SourceTally | None  # None: an empty file, fetched from nobody


def finish_batch(conn: Connection, done: Sequence[Fetched], *, now: float) -> None:
    """Record published files as done and shared from the download folder, with where
    they came from: a handful of statements for the whole group."""
    if not done:
        return
    # Published is published: a pause or cancel that came meanwhile cannot unpublish it.
    conn.execute(
        text(
            "UPDATE downloads SET status = :done, reason = NULL, finished_at = :now,"
            " temp_path = NULL, saved_as = :saved, bytes_done = size, have = :have,"
            " bytes_received = bytes_received + size WHERE id = :id"
        ),
        [
            {"done": Status.DONE, "now": now, "saved": f.saved_as,
             "have": bitfield_full(len(f.hashed.chunk_sizes)), "id": f.download_id}
            for f in done
        ],
    )  # fmt: skip
    add_tallies(conn, [(f.download_id, f.source) for f in done if f.source is not None])
    record_local_files(conn, "download", [(f.saved_as, f.hashed) for f in done], now=now)


def record_bad(conn: Connection, download_id: int, source: SourceTally, *, now: float) -> None:
    """A source sent a chunk of a small file that fails verification: count it and mark the
    peer bad for that file (sources_for_files leaves it out from now on). What the file
    holds stays as it was: a batch writes a file only whole and verified."""
    d = downloads.c
    row = conn.execute(select(d.have, d.bytes_done).where(d.id == download_id)).first()
    if row is None:
        return
    key = (source.address, source.tcp_port)
    progress = Progress(
        bytes(row.have), row.bytes_done, source.bytes, 1, [source], [key], Status.ACTIVE, None
    )
    record_progress(conn, download_id, progress, now=now)

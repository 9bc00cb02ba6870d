"""Download history with a horizon, as the upload ledger has (`db.ledger`): downloads that
ended more than P2P_HISTORY_DAYS ago become per-day totals in `download_days` (their
`download_sources` go with them), requests none of whose downloads is left become
`request_days`, and `files` rows nothing refers to any more (no peer offers them, nothing
here holds them, no download row names them) are forgotten with their manifests. A node
that downloads every day for months keeps a database of about the same size.

Each function is one short transaction's work (the caller's), in batches, so the other
roles' writes wait milliseconds at most.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from .status import ENDED, Status, sql_in

# Rows per transaction: downloads carry a few download_sources rows each, files a
# manifest of up to a few thousand chunks, so these are a few milliseconds each.
DOWNLOAD_BATCH = 500
FILE_BATCH = 100

_OLD_DOWNLOADS = text(
    "SELECT id FROM downloads WHERE finished_at < :cutoff"
    f" AND status IN ({sql_in(ENDED)}) ORDER BY finished_at LIMIT :batch"
)
_ROLL_UP_DOWNLOADS = (
    "INSERT INTO download_days"
    " (day, status, downloads, bytes, bytes_received, bad_chunks, seconds)"
    " SELECT CAST(finished_at / 86400 AS INTEGER) * 86400, status, count(*), sum(bytes_done),"
    " sum(bytes_received), sum(bad_chunks), coalesce(sum(finished_at - started_at), 0)"
    " FROM downloads WHERE id IN ({ids}) GROUP BY 1, 2"
    " ON CONFLICT (day, status) DO UPDATE SET downloads = downloads + excluded.downloads,"
    " bytes = bytes + excluded.bytes, bytes_received = bytes_received + excluded.bytes_received,"
    " bad_chunks = bad_chunks + excluded.bad_chunks, seconds = seconds + excluded.seconds"
)
# Requests older than the horizon whose downloads have all been rolled up (or that
# queued none: every file was here already); ix_downloads_request answers NOT EXISTS.
_OLD_REQUESTS = (
    "FROM requests r WHERE r.requested_at < :cutoff"
    " AND NOT EXISTS (SELECT 1 FROM downloads d WHERE d.request_id = r.id)"
)
_ROLL_UP_REQUESTS = text(
    "INSERT INTO request_days (day, kind, requests, files, already_here)"
    " SELECT CAST(r.requested_at / 86400 AS INTEGER) * 86400, r.kind, count(*), sum(r.files),"
    f" sum(r.already_here) {_OLD_REQUESTS} GROUP BY 1, 2"
    " ON CONFLICT (day, kind) DO UPDATE SET requests = requests + excluded.requests,"
    " files = files + excluded.files, already_here = already_here + excluded.already_here"
)
_DELETE_REQUESTS = text(f"DELETE FROM requests WHERE id IN (SELECT r.id {_OLD_REQUESTS})")
# Each NOT EXISTS is one probe of an index on file_id (ix_local_files_file,
# ix_holdings_file, ix_downloads_file); chunks and bad_peers go by ON DELETE CASCADE.
_FORGOTTEN = text(
    "DELETE FROM files WHERE id IN (SELECT f.id FROM files f WHERE f.first_seen < :cutoff"
    " AND NOT EXISTS (SELECT 1 FROM local_files l WHERE l.file_id = f.id)"
    " AND NOT EXISTS (SELECT 1 FROM holdings h WHERE h.file_id = f.id)"
    " AND NOT EXISTS (SELECT 1 FROM downloads d WHERE d.file_id = f.id) LIMIT :batch)"
)


@dataclass(frozen=True)
class RolledUp:
    """What `download_days` holds for one ending: downloads no longer listed one by one."""

    status: str  # done, failed, cancelled
    downloads: int
    bytes: int
    first_day: int  # start of the first and last UTC day, unix seconds
    last_day: int


def has_old_downloads(conn: Connection, cutoff: float) -> bool:
    """Whether any ended download finished before cutoff (one probe of its index)."""
    found = conn.execute(_OLD_DOWNLOADS, {"cutoff": cutoff, "batch": 1}).first()
    return found is not None


def roll_up_downloads(conn: Connection, cutoff: float, batch: int = DOWNLOAD_BATCH) -> int:
    """Move up to `batch` of the downloads that ended before cutoff into download_days,
    deleting them and their download_sources; returns how many (0: none is that old)."""
    ids = [int(i) for i in conn.scalars(_OLD_DOWNLOADS, {"cutoff": cutoff, "batch": batch})]
    if not ids:
        return 0
    listed = ", ".join(str(i) for i in ids)  # integers from the database, not user text
    conn.execute(text(_ROLL_UP_DOWNLOADS.format(ids=listed)))
    conn.execute(text(f"DELETE FROM download_sources WHERE download_id IN ({listed})"))
    conn.execute(text(f"DELETE FROM downloads WHERE id IN ({listed})"))
    return len(ids)


def roll_up_requests(conn: Connection, cutoff: float) -> int:
    """Move requests made before cutoff that no download row points at any more into
    request_days; returns how many."""
    conn.execute(_ROLL_UP_REQUESTS, {"cutoff": cutoff})
    gone = conn.execute(_DELETE_REQUESTS, {"cutoff": cutoff})
    return int(gone.rowcount)


def forget_files(conn: Connection, cutoff: float, batch: int = FILE_BATCH) -> int:
    """Delete up to `batch` `files` rows first seen before cutoff that nothing refers to
    (no peer's offer, no local file, no download row), with their chunks; returns how many."""
    gone = conn.execute(_FORGOTTEN, {"cutoff": cutoff, "batch": batch})
    return int(gone.rowcount)


def rolled_up(conn: Connection) -> list[RolledUp]:
    """Per ending, the downloads rolled up into download_days (none: an empty list)."""
    rows = conn.execute(
        text(
            "SELECT status, sum(downloads), sum(bytes), min(day), max(day) FROM download_days"
            " GROUP BY status ORDER BY status"
        )
    )
    return [RolledUp(s, int(n), int(b), int(d0), int(d1)) for s, n, b, d0, d1 in rows]


def rolled_up_done(conn: Connection) -> int:
    """Finished downloads (done) no longer in `downloads`, rolled up into download_days."""
    n = conn.scalar(
        text(
            f"SELECT coalesce(sum(downloads), 0) FROM download_days WHERE status = '{Status.DONE}'"
        )
    )
    return int(n or 0)

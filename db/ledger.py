"""Ledgers with a horizon: per-chunk `uploads` rows older than P2P_HISTORY_DAYS become
per-day totals in `upload_days`; `upload_totals` keeps the lifetime figures exact; bad
peers are forgiven after the same horizon.

The rollup runs in batches, each its own short transaction (the caller's), so the
other roles' writes wait milliseconds at most, even on a database holding millions of
old rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, text

from .schema import upload_days, uploads
from .schema import upload_totals as totals_table
from .sources import expire_bad_peers

__all__ = ["expire_bad_peers"]

up, ud = uploads.c, upload_days.c

DAY_SECONDS = 86400
# Rows per rollup transaction: a short transaction even on a slow disk, so a writer
# waiting behind one never notices.
ROLLUP_BATCH = 5000

_ROLL_UP = text(
    "INSERT INTO upload_days (day, peer_address, sha256, name, chunks, bytes, seconds)"
    " SELECT CAST(at / 86400 AS INTEGER) * 86400, peer_address, sha256, name,"
    " count(*), sum(bytes), sum(seconds) FROM uploads"
    " WHERE at < :cutoff AND at <= :bound"
    " GROUP BY 1, peer_address, sha256, name"
    # The WHERE true keeps SQLite from reading ON CONFLICT as a join constraint.
    " ON CONFLICT (day, peer_address, sha256, name) DO UPDATE SET"
    " chunks = chunks + excluded.chunks, bytes = bytes + excluded.bytes,"
    " seconds = seconds + excluded.seconds"
)


@dataclass(frozen=True)
class Totals:
    chunks: int
    bytes: int


@dataclass(frozen=True)
class UploadSum:
    """What one peer was served of one file over some days."""

    peer_address: str
    name: str
    sha256: str
    chunks: int
    bytes: int
    seconds: float
    first_day: int  # start of the first UTC day with any of it, unix seconds
    last_at: float  # the latest served chunk's time, or its day's end once rolled up


def horizon(now: float, days: int) -> float:
    """The time before which per-chunk rows are rolled up."""
    return now - days * DAY_SECONDS


def day_start(ts: float) -> int:
    return int(ts // DAY_SECONDS) * DAY_SECONDS


def add_to_totals(conn: Connection, chunks: int, nbytes: int) -> None:
    """Count newly recorded uploads into the lifetime totals."""
    conn.execute(
        text(
            "INSERT INTO upload_totals (id, chunks, bytes) VALUES (1, :c, :b)"
            " ON CONFLICT (id) DO UPDATE SET chunks = chunks + :c, bytes = bytes + :b"
        ),
        {"c": chunks, "b": nbytes},
    )


def upload_totals(conn: Connection) -> Totals:
    """Lifetime chunks and bytes served: one row, whatever the ledgers hold."""
    t = totals_table.c
    row = conn.execute(select(t.chunks, t.bytes).where(t.id == 1)).first()
    return Totals(0, 0) if row is None else Totals(row.chunks, row.bytes)


def roll_up_batch(conn: Connection, cutoff: float, batch: int = ROLLUP_BATCH) -> int:
    """Move up to about `batch` of the oldest uploads rows before `cutoff` into
    upload_days; returns how many rows it moved (0: nothing is older than cutoff)."""
    # The batch ends at the `at` of its last row, found on ix_uploads_at; rows sharing
    # that time join the batch, so both statements below see exactly the same rows.
    bound = conn.scalar(
        select(up.at).where(up.at < cutoff).order_by(up.at).offset(batch - 1).limit(1)
    )
    if bound is None:
        bound = cutoff
    params = {"cutoff": cutoff, "bound": bound}
    conn.execute(_ROLL_UP, params)
    moved = conn.execute(delete(uploads).where(up.at < cutoff, up.at <= bound))
    return int(moved.rowcount)


def has_rows_before(conn: Connection, cutoff: float) -> bool:
    """Whether any uploads row is older than cutoff (one probe of ix_uploads_at)."""
    return conn.scalar(select(up.id).where(up.at < cutoff).limit(1)) is not None


# Per peer and file: recent per-chunk rows and rolled-up days, summed together.
_SERVED_SINCE = text(
    "SELECT peer_address, name, sha256, sum(chunks), sum(bytes), sum(seconds),"
    " min(first_day), max(last_at) FROM ("
    " SELECT peer_address, name, sha256, count(*) AS chunks, sum(bytes) AS bytes,"
    " sum(seconds) AS seconds, CAST(min(at) / 86400 AS INTEGER) * 86400 AS first_day,"
    " max(at) AS last_at FROM uploads WHERE at >= :first GROUP BY 1, 2, 3"
    " UNION ALL"
    " SELECT peer_address, name, sha256, sum(chunks), sum(bytes), sum(seconds), min(day),"
    " max(day) + 86400 FROM upload_days WHERE day >= :first GROUP BY 1, 2, 3"
    ") GROUP BY 1, 2, 3"
)


def uploads_since(conn: Connection, since: float) -> list[UploadSum]:
    """Per peer and file, what was served from the start of the UTC day of `since` on:
    recent per-chunk rows and rolled-up days together, most bytes first."""
    out = [
        UploadSum(peer, name, sha, int(chunks), int(nbytes), float(secs), int(d0), float(t1))
        for peer, name, sha, chunks, nbytes, secs, d0, t1 in conn.execute(
            _SERVED_SINCE, {"first": day_start(since)}
        )
    ]
    return sorted(out, key=lambda u: (-u.bytes, u.peer_address, u.name))

"""What p2pctl asks of the downloader: one file, a folder or a glob as one request, each
file it covers its own `downloads` row (queued by `db.queueing`); and pausing, resuming
and cancelling them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from p2pshare.db.following import FollowState, follow_states
from p2pshare.db.names import in_folder, matches
from p2pshare.db.queueing import (
    PAUSED_BY_USER,
    AlreadyHere,
    Queued,
    SeveralVersions,
    UnknownName,
    queue_request,
    request_kind,
)
from p2pshare.db.schema import downloads
from p2pshare.db.status import KEEPING_TEMP, UNFINISHED, Status

__all__ = [
    "AlreadyHere",
    "FollowState",
    "Queued",
    "SeveralVersions",
    "UnknownName",
    "follow_states",
    "queue_request",
    "request_kind",
]


# ------------------------------------------------------------ pause, resume, cancel


def _matching(
    conn: Connection, pattern: str, statuses: tuple[Status, ...]
) -> list[tuple[int, str]]:
    """Downloads (id, name) in `statuses` that PATTERN names: a download id, or an exact
    name, means that download alone (whatever its state, so `pause 7` never falls back to
    matching '7' in names); `album/` the downloads under that folder; anything else is a
    substring or glob of names."""
    d = downloads.c
    query = select(d.id, d.name).where(d.status.in_(statuses)).order_by(d.id)
    if _is_row_id(pattern) and conn.scalar(select(d.id).where(d.id == int(pattern))):
        query = query.where(d.id == int(pattern))
    elif conn.scalar(select(d.id).where(d.name == pattern).limit(1)):
        query = query.where(d.name == pattern)
    else:
        test = in_folder if pattern.endswith("/") else matches
        return [(i, name) for i, name in conn.execute(query) if test(name, pattern)]
    return [(i, name) for i, name in conn.execute(query)]


def _is_row_id(pattern: str) -> bool:
    """ASCII digits within SQLite's integer range ('²' is a digit to str.isdigit)."""
    return pattern.isascii() and pattern.isdecimal() and int(pattern) < 2**63


def _change(
    conn: Connection, pattern: str, statuses: tuple[Status, ...], **values: Any
) -> list[str]:
    """Set `values` on the downloads in `statuses` PATTERN names; returns their names."""
    chosen = _matching(conn, pattern, statuses)
    for part in range(0, len(chosen), 500):
        ids = [i for i, _ in chosen[part : part + 500]]
        conn.execute(update(downloads).where(downloads.c.id.in_(ids)).values(**values))
    return [name for _, name in chosen]


def pause_downloads(conn: Connection, pattern: str) -> list[str]:
    """Pause unfinished downloads matching PATTERN; they keep their verified chunks and
    temp file (and offer those chunks) until resumed. Returns their names."""
    return _change(conn, pattern, UNFINISHED, status=Status.PAUSED, reason=PAUSED_BY_USER)


def resume_downloads(conn: Connection, pattern: str) -> list[str]:
    """Queue paused downloads matching PATTERN again, in their old place (the queue is by
    id). Returns their names."""
    return _change(conn, pattern, (Status.PAUSED,), status=Status.QUEUED, reason=None)


def cancel_downloads(conn: Connection, pattern: str, *, now: float) -> list[str]:
    """Cancel unfinished or paused downloads matching PATTERN; returns their names. The
    downloader removes the temp file (a running job at once, a paused one's in its sweep)."""
    return _change(
        conn,
        pattern,
        KEEPING_TEMP,
        status=Status.CANCELLED,
        reason="cancelled by the user",
        finished_at=now,
        temp_path=None,
    )

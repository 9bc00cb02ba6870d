"""What p2pctl asks of the downloader: one file, a folder or a glob as one request, each
file it covers its own `downloads` row; and pausing, resuming and following them.

Queueing and following are written in plain sqlite3 (`db.queueing`, `db.following`,
which `p2pctl download` uses without importing SQLAlchemy); here they run inside a
Session's transaction for the web page."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from p2pshare.db import following, queueing
from p2pshare.db.engine import driver_connection
from p2pshare.db.following import FollowState
from p2pshare.db.models import Download
from p2pshare.db.names import in_folder, matches
from p2pshare.db.queueing import (
    KEEPING_TEMP,
    PAUSED_BY_USER,
    UNFINISHED,
    AlreadyHere,
    Queued,
    SeveralVersions,
    UnknownName,
    request_kind,
)

__all__ = [
    "AlreadyHere",
    "FollowState",
    "Queued",
    "SeveralVersions",
    "UnknownName",
    "queue_request",
    "request_kind",
]


def queue_request(session: Session, pattern: str, *, every: bool, now: float) -> Queued:
    """`queueing.queue_request` inside the session's transaction."""
    try:
        return queueing.queue_request(driver_connection(session), pattern, every=every, now=now)
    finally:
        session.expire_all()  # the session's objects of rows it changed are stale


# ------------------------------------------------------------ pause, resume, cancel


def _matching(session: Session, pattern: str, statuses: tuple[str, ...]) -> list[Download]:
    """Downloads in `statuses` that PATTERN names: a download id, or an exact name, means
    that download alone (whatever its state, so `pause 7` never falls back to matching '7'
    in names); `album/` the downloads under that folder; anything else is a substring or
    glob of names."""
    query = select(Download).where(Download.status.in_(statuses)).order_by(Download.id)
    if _is_row_id(pattern) and session.get(Download, int(pattern)) is not None:
        return list(session.scalars(query.where(Download.id == int(pattern))))
    if session.scalar(select(Download.id).where(Download.name == pattern).limit(1)):
        return list(session.scalars(query.where(Download.name == pattern)))
    rows = list(session.scalars(query))
    if pattern.endswith("/"):
        return [d for d in rows if in_folder(d.name, pattern)]
    return [d for d in rows if matches(d.name, pattern)]


def _is_row_id(pattern: str) -> bool:
    """ASCII digits within SQLite's integer range ('²' is a digit to str.isdigit)."""
    return pattern.isascii() and pattern.isdecimal() and int(pattern) < 2**63


def pause_downloads(session: Session, pattern: str) -> list[str]:
    """Pause unfinished downloads matching PATTERN; they keep their verified chunks and
    temp file (and offer those chunks) until resumed. Returns their names."""
    chosen = _matching(session, pattern, UNFINISHED)
    for d in chosen:
        d.status, d.reason = "paused", PAUSED_BY_USER
    return [d.name for d in chosen]


def resume_downloads(session: Session, pattern: str) -> list[str]:
    """Queue paused downloads matching PATTERN again, in their old place (the queue is by
    id). Returns their names."""
    chosen = _matching(session, pattern, ("paused",))
    for d in chosen:
        d.status, d.reason = "queued", None
    return [d.name for d in chosen]


def cancel_downloads(session: Session, pattern: str, *, now: float) -> list[str]:
    """Cancel unfinished or paused downloads matching PATTERN; returns their names. The
    downloader removes the temp file (a running job at once, a paused one's in its sweep)."""
    chosen = _matching(session, pattern, KEEPING_TEMP)
    for d in chosen:
        d.status, d.reason, d.finished_at = "cancelled", "cancelled by the user", now
        d.temp_path = None
    return [d.name for d in chosen]


# ------------------------------------------------------------ following


def follow_states(session: Session, download_ids: list[int]) -> list[FollowState]:
    """`queueing.follow_states` inside the session's transaction."""
    return following.follow_states(driver_connection(session), download_ids)

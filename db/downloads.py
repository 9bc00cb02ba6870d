"""The download queue as p2pctl, the web page and the torrent role see it: finding a
name's candidates and queueing one, inside a Session's transaction. The queries are
written in plain sqlite3 in `db.queueing` (p2pctl starts without SQLAlchemy); the
downloader's own bookkeeping is `db.jobs`, moving a download to another offer
`db.offer_switch`."""

from __future__ import annotations

from sqlalchemy.orm import Session

from p2pshare.db import queueing
from p2pshare.db.engine import driver_connection
from p2pshare.db.queueing import (
    KEEPING_TEMP,
    UNFINISHED,
    AlreadyHere,
    AmbiguousName,
    Candidate,
    UnknownName,
)

__all__ = [
    "KEEPING_TEMP",
    "UNFINISHED",
    "AlreadyHere",
    "AmbiguousName",
    "Candidate",
    "UnknownName",
]


def find_candidates(session: Session, pattern: str) -> list[Candidate]:
    """`queueing.find_candidates` inside the session's transaction."""
    return queueing.find_candidates(driver_connection(session), pattern)


def offer_peers(session: Session, shas: set[str]) -> dict[str, dict[int, int]]:
    """`queueing.offer_peers` inside the session's transaction."""
    return queueing.offer_peers(driver_connection(session), shas)


def resolve_name(session: Session, pattern: str) -> Candidate:
    """`queueing.resolve_name` inside the session's transaction."""
    return queueing.resolve_name(driver_connection(session), pattern)


def queue_download(
    session: Session,
    candidate: Candidate,
    *,
    now: float,
    request_id: int | None = None,
    pinned: bool = False,
) -> tuple[int, bool]:
    """`queueing.queue_download` inside the session's transaction."""
    try:
        return queueing.queue_download(
            driver_connection(session), candidate, now=now, request_id=request_id, pinned=pinned
        )
    finally:
        session.expire_all()  # the session's objects of rows it changed are stale

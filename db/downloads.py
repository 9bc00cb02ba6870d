"""The download queue as p2pctl, the web page and the torrent role see it: finding a
name's candidates and queueing one, inside a caller's transaction. The queries are
written in plain sqlite3 in `db.queueing` (p2pctl starts without SQLAlchemy); the
downloader's own bookkeeping is `db.jobs`, moving a download to another offer
`db.offer_switch`."""

from __future__ import annotations

from sqlalchemy import Connection

from p2pshare.db import queueing
from p2pshare.db.driver import driver_connection
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


def find_candidates(conn: Connection, pattern: str) -> list[Candidate]:
    """`queueing.find_candidates` inside the connection's transaction."""
    return queueing.find_candidates(driver_connection(conn), pattern)


def offer_peers(conn: Connection, shas: set[str]) -> dict[str, dict[int, int]]:
    """`queueing.offer_peers` inside the connection's transaction."""
    return queueing.offer_peers(driver_connection(conn), shas)


def resolve_name(conn: Connection, pattern: str) -> Candidate:
    """`queueing.resolve_name` inside the connection's transaction."""
    return queueing.resolve_name(driver_connection(conn), pattern)


def queue_download(
    conn: Connection,
    candidate: Candidate,
    *,
    now: float,
    request_id: int | None = None,
    pinned: bool = False,
) -> tuple[int, bool]:
    """`queueing.queue_download` inside the connection's transaction."""
    return queueing.queue_download(
        driver_connection(conn), candidate, now=now, request_id=request_id, pinned=pinned
    )

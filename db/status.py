"""A download's status, and the sets of statuses the code asks about, each defined once.

No SQLAlchemy here: the enum is a `str`, so it binds as a parameter and compares equal
to the text SQLite returns."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a download stands (`downloads.status`)."""

    QUEUED = "queued"
    ACTIVE = "active"
    WAITING = "waiting"  # no peer offers a chunk it lacks, for now
    PAUSED = "paused"  # by the user, or by the node when it cannot publish yet
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The downloader's queue: downloads to run (queued ones, and any a crash interrupted).
UNFINISHED = (Status.QUEUED, Status.ACTIVE, Status.WAITING)
# Downloads whose temp file and verified chunks stay (and are offered): unfinished and paused.
KEEPING_TEMP = (*UNFINISHED, Status.PAUSED)
# Downloads that ended: they keep only their history.
ENDED = (Status.DONE, Status.FAILED, Status.CANCELLED)


def sql_in(statuses: tuple[Status, ...]) -> str:
    """The statuses as an SQL list of literals, for `status IN (...)` in SQL text (and in
    the catalog log's triggers, which take no parameters)."""
    return ", ".join(f"'{s.value}'" for s in statuses)

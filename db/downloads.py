"""The download queue as p2pctl, the web page and the torrent role see it: finding a
name's candidates and queueing one (`db.queueing`). The downloader's own bookkeeping is
`db.jobs`, moving a download to another offer `db.offer_switch`."""

from __future__ import annotations

from .queueing import (
    AlreadyHere,
    AmbiguousName,
    Candidate,
    UnknownName,
    find_candidates,
    offer_peers,
    queue_download,
    resolve_name,
)
from .status import KEEPING_TEMP, UNFINISHED

__all__ = [
    "KEEPING_TEMP",
    "UNFINISHED",
    "AlreadyHere",
    "AmbiguousName",
    "Candidate",
    "UnknownName",
    "find_candidates",
    "offer_peers",
    "queue_download",
    "resolve_name",
]

"""Following downloads: what `p2pctl download` shows while it follows a request (and the
web page through `db.requests`).

While it follows, `p2pctl` asks for `request_progress`: a few aggregates, one row per
status, whatever the number of files; reading every file's row on every poll would cost
a request of many files more than its downloads. `follow_states` is read once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from p2pshare.db.queueing import json_list

from .sql import run
from .status import Status


@dataclass(frozen=True)
class FollowState:
    id: int
    name: str
    size: int
    status: str
    reason: str | None
    bytes_done: int
    saved_as: str | None
    peers: int  # peers that have sent at least one verified chunk


@dataclass(frozen=True)
class RequestProgress:
    """A request's downloads summed up: what its one progress bar shows."""

    counts: dict[str, int]  # status -> downloads
    size: int  # bytes, all downloads
    bytes_done: int
    peers: int  # the most peers one download has had verified chunks from
    waiting: tuple[str, str | None] | None  # (name, reason) of a download waiting, if any

    @property
    def downloads(self) -> int:
        return sum(self.counts.values())


_IDS = "SELECT value FROM json_each(?)"


def request_progress(conn: Connection, ids_json: str) -> RequestProgress:
    """The aggregates of the downloads whose ids `ids_json` (`queueing.json_list`) lists."""
    counts, size, done = {}, 0, 0
    for status, n, total, got in run(
        conn,
        "SELECT status, count(*), sum(size), sum(bytes_done) FROM downloads"
        f" WHERE id IN ({_IDS}) GROUP BY status",
        (ids_json,),
    ):
        counts[status] = n
        size, done = size + total, done + got
    (peers,) = run(
        conn,
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM download_sources"
        f" WHERE download_id IN ({_IDS}) AND chunks > 0 GROUP BY download_id)",
        (ids_json,),
    ).fetchone()
    waiting = run(
        conn,
        f"SELECT name, reason FROM downloads WHERE id IN ({_IDS}) AND (status = '{Status.WAITING}'"
        # a queued one with a reason has not started: no peer could give its manifest
        f" OR (status = '{Status.QUEUED}' AND reason IS NOT NULL))"
        " ORDER BY id LIMIT 1",
        (ids_json,),
    ).fetchone()
    return RequestProgress(counts, size, done, peers, tuple(waiting) if waiting else None)


def follow_states(conn: Connection, download_ids: list[int]) -> list[FollowState]:
    """What `p2pctl download` shows while it follows a request, in the order given."""
    ids = json_list(download_ids)
    peers = dict(
        run(
            conn,
            "SELECT download_id, count(*) FROM download_sources"
            " WHERE download_id IN (SELECT value FROM json_each(?)) AND chunks > 0"
            " GROUP BY download_id",
            (ids,),
        ).fetchall()
    )
    rows = {
        row[0]: row
        for row in run(
            conn,
            "SELECT id, name, size, status, reason, bytes_done, saved_as FROM downloads"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
    }
    out = []
    for i in download_ids:
        if i in rows:
            did, name, size, status, reason, bytes_done, saved_as = rows[i]
            out.append(
                FollowState(
                    did, name, size, status, reason, bytes_done, saved_as, peers.get(did, 0)
                )
            )
    return out

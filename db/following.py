"""Following downloads, in plain sqlite3: what `p2pctl download` shows while it follows a
request (and the web page through `db.requests`), without importing SQLAlchemy."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from p2pshare.db.queueing import json_list


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


def follow_states(conn: sqlite3.Connection, download_ids: list[int]) -> list[FollowState]:
    """What `p2pctl download` shows while it follows a request, in the order given."""
    ids = json_list(download_ids)
    peers = dict(
        conn.execute(
            "SELECT download_id, count(*) FROM download_sources"
            " WHERE download_id IN (SELECT value FROM json_each(?)) AND chunks > 0"
            " GROUP BY download_id",
            (ids,),
        ).fetchall()
    )
    rows = {
        row[0]: row
        for row in conn.execute(
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

"""A published download whose file is no longer what it recorded: its rows, and the new
download that fetches it again (services/server/repair.py decides when)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

from . import index as dbindex
from .status import Status


@dataclass(frozen=True)
class Published:
    """A done download's file in the download folder, as the download recorded it."""

    download_id: int
    saved_as: str
    size: int
    sha256: str
    finished_at: float


_PUBLISHED = text(
    "SELECT d.id, d.saved_as, d.size, d.sha256, d.finished_at FROM downloads d"
    " WHERE d.status = :done AND d.saved_as IN (SELECT value FROM json_each(:names))"
    " AND d.file_id IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM torrent_downloads t WHERE t.download_id = d.id)"
)
_REFETCH = text(
    "INSERT INTO downloads (request_id, file_id, name, sha256, size, status, pinned,"
    " reason, requested_at, started_at, finished_at, bytes_done, bytes_received,"
    " bad_chunks, have, temp_path, saved_as, switched, offered_by)"
    " SELECT d.request_id, d.file_id, d.name, d.sha256, d.size, :queued, d.pinned, NULL,"
    " :now, NULL, NULL, 0, 0, 0, zeroblob((f.chunk_count + 7) / 8), NULL, NULL, NULL,"
    " d.offered_by"
    " FROM downloads d JOIN files f ON f.id = d.file_id WHERE d.id = :id"
)


def published_downloads(conn: Connection, names: Sequence[str]) -> dict[str, Published]:
    """The done downloads (p2pshare ones: a torrent's publishing is its role's) published
    under these names in the download folder, by name."""
    rows = conn.execute(_PUBLISHED, {"done": Status.DONE, "names": json.dumps(list(names))})
    return {row[1]: Published(row[0], row[1], row[2], row[3], row[4] or 0.0) for row in rows}


def refetch_damaged(conn: Connection, published: Published, why: str, *, now: float) -> int:
    """The download failed with `why` (its file is no longer offered) and a new one, queued
    in the same request, fetches the same content again. Returns the new download's id."""
    params = {"queued": Status.QUEUED, "now": now, "id": published.download_id}
    new_id = conn.execute(_REFETCH, params).lastrowid
    assert new_id is not None
    conn.execute(
        text("UPDATE downloads SET status = :failed, reason = :reason WHERE id = :id"),
        {
            "failed": Status.FAILED,
            "reason": f"{why}; fetching it again as download {new_id}",
            "id": published.download_id,
        },
    )
    dbindex.remove_local_files(conn, "download", [published.saved_as])
    dbindex.delete_orphan_files(conn)  # (the catalog log's triggers record the change)
    return new_id

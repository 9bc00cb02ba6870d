"""Queueing BitTorrent downloads (issue 24), in plain sqlite3 as `db.queueing` is, for
`p2pctl download 'magnet:?...'` and `p2pctl download file.torrent`.

A torrent is one `downloads` row (its name, size, status and progress, as any download
has; `file_id` NULL until it is done) with a `torrent_downloads` row beside it (info-hash,
the magnet or .torrent, peers named with --peer), under a `requests` row of kind
'torrent'. p2p-torrent runs it; the downloader never sees it (it reads downloads joined
to their `files` row). Functions take a connection inside a transaction and never commit.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from p2pshare.db.queueing import KEEPING_TEMP

_KEEPING_TEMP_SQL = ", ".join(f"'{s}'" for s in KEEPING_TEMP)


@dataclass(frozen=True)
class TorrentRequest:
    """What the user brought, checked by the caller."""

    pattern: str  # as typed: the magnet link, or the .torrent's path
    info_hash: str
    name: str  # the torrent's name ('album/' for a folder); a magnet's dn, or its info-hash
    size: int  # 0 until a magnet's metadata arrives
    magnet: str | None
    metainfo: bytes | None
    peers: list[str]  # host:port
    files: int | None
    piece_size: int | None


@dataclass(frozen=True)
class QueuedTorrent:
    request_id: int
    download_id: int
    new: bool  # False: the same info-hash was already downloading (or paused)
    name: str
    size: int


class AlreadyFetched(Exception):
    """The torrent was downloaded here before and is still in the download folder, as
    `saved_as` (a file, or a folder ending in '/')."""

    def __init__(self, saved_as: str) -> None:
        super().__init__(f"already here: {saved_as}")
        self.saved_as = saved_as


def fetched_before(conn: sqlite3.Connection, info_hash: str) -> str | None:
    """Where a finished download of this info-hash lies, while the index still holds it."""
    for (saved_as,) in conn.execute(
        "SELECT d.saved_as FROM torrent_downloads t JOIN downloads d ON d.id = t.download_id"
        " WHERE t.info_hash = ? AND d.status = 'done' AND d.saved_as IS NOT NULL"
        " ORDER BY d.id DESC",
        (info_hash,),
    ):
        if saved_as.endswith("/"):  # a folder torrent: any of its files still there
            held = conn.execute(
                "SELECT 1 FROM local_files WHERE root = 'download'"
                " AND substr(name, 1, ?) = ? LIMIT 1",
                (len(saved_as), saved_as),
            ).fetchone()
        else:
            held = conn.execute(
                "SELECT 1 FROM local_files WHERE root = 'download' AND name = ?", (saved_as,)
            ).fetchone()
        if held is not None:
            return str(saved_as)
    return None


def queue_torrent(conn: sqlite3.Connection, req: TorrentRequest, *, now: float) -> QueuedTorrent:
    """Queue a torrent, or reuse the unfinished (or paused) download of the same
    info-hash, adding the peers named now to it. Raises AlreadyFetched when it was
    downloaded here before and is still in the download folder."""
    here = fetched_before(conn, req.info_hash)
    if here is not None:
        raise AlreadyFetched(here)
    cur = conn.execute(
        "INSERT INTO requests (pattern, kind, requested_at, files, already_here)"
        " VALUES (?, 'torrent', ?, 0, 0)",
        (req.pattern, now),
    )
    request_id = cur.lastrowid
    assert request_id is not None
    existing = conn.execute(
        "SELECT d.id, d.name, d.size, t.peers FROM torrent_downloads t"
        " JOIN downloads d ON d.id = t.download_id"
        f" WHERE t.info_hash = ? AND d.status IN ({_KEEPING_TEMP_SQL}) ORDER BY d.id LIMIT 1",
        (req.info_hash,),
    ).fetchone()
    if existing is not None:
        did, name, size, peers_json = existing
        peers = list(dict.fromkeys([*json.loads(peers_json), *req.peers]))
        conn.execute(
            "UPDATE torrent_downloads SET peers = ? WHERE download_id = ?",
            (json.dumps(peers), did),
        )
        return QueuedTorrent(request_id, int(did), False, str(name), int(size))
    cur = conn.execute(
        "INSERT INTO downloads (request_id, file_id, name, sha256, size, status, pinned,"
        " reason, requested_at, started_at, finished_at, bytes_done, bytes_received,"
        " bad_chunks, have, temp_path, saved_as, switched)"
        " VALUES (?, NULL, ?, '', ?, 'queued', 0, NULL, ?, NULL, NULL, 0, 0, 0, X'', NULL,"
        " NULL, NULL)",
        (request_id, req.name, req.size, now),
    )
    did = cur.lastrowid
    assert did is not None
    conn.execute(
        "INSERT INTO torrent_downloads (download_id, info_hash, magnet, metainfo, peers,"
        " files, piece_size) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            did,
            req.info_hash,
            req.magnet,
            req.metainfo,
            json.dumps(req.peers),
            req.files,
            req.piece_size,
        ),
    )
    conn.execute("UPDATE requests SET files = 1 WHERE id = ?", (request_id,))
    return QueuedTorrent(request_id, did, True, req.name, req.size)


def torrent_role_state(conn: sqlite3.Connection) -> dict[str, str]:
    """What p2p-torrent recorded about itself (role_settings): available, serving, port..."""
    return {
        name: value
        for name, value in conn.execute(
            "SELECT name, value FROM role_settings WHERE role = 'torrent'"
        )
    }


def done_note(conn: sqlite3.Connection, download_id: int) -> str | None:
    """What a finished torrent download says of its sources (p2pshare peers, BitTorrent)."""
    row = conn.execute(
        "SELECT reason FROM downloads WHERE id = ? AND status = 'done'", (download_id,)
    ).fetchone()
    return None if row is None or not row[0] else str(row[0])


def offered_on_lan(conn: sqlite3.Connection, wanted: list[tuple[str, int]]) -> int:
    """How many of these contents (SHA-256, size) some p2pshare peer offers now."""
    found = 0
    for sha256, size in wanted:
        row = conn.execute(
            "SELECT 1 FROM files f JOIN holdings h ON h.file_id = f.id"
            " WHERE f.sha256 = ? AND f.size = ? AND h.chunks_held > 0 LIMIT 1",
            (sha256, size),
        ).fetchone()
        found += row is not None
    return found

"""Queueing BitTorrent downloads, for `p2pctl download 'magnet:?...'` and
`p2pctl download file.torrent`.

A torrent is one `downloads` row (its name, size, status and progress, as any download
has; `file_id` NULL until it is done) with a `torrent_downloads` row beside it (info-hash,
the magnet or .torrent, peers named with --peer), under a `requests` row of kind
'torrent'. p2p-torrent runs it; the downloader never sees it (it reads downloads joined
to their `files` row). Functions take a connection inside a transaction and never commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection

from .sources import USABLE
from .sql import run
from .status import KEEPING_TEMP, Status, sql_in

_KEEPING_TEMP_SQL = sql_in(KEEPING_TEMP)


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


def fetched_before(conn: Connection, info_hash: str) -> str | None:
    """Where a finished download of this info-hash lies, while the index still holds it."""
    for (saved_as,) in run(
        conn,
        "SELECT d.saved_as FROM torrent_downloads t JOIN downloads d ON d.id = t.download_id"
        f" WHERE t.info_hash = ? AND d.status = '{Status.DONE}' AND d.saved_as IS NOT NULL"
        " ORDER BY d.id DESC",
        (info_hash,),
    ):
        if saved_as.endswith("/"):  # a folder torrent: any of its files still there
            held = run(
                conn,
                "SELECT 1 FROM local_files WHERE root = 'download'"
                " AND substr(name, 1, ?) = ? LIMIT 1",
                (len(saved_as), saved_as),
            ).fetchone()
        else:
            held = run(
                conn, "SELECT 1 FROM local_files WHERE root = 'download' AND name = ?", (saved_as,)
            ).fetchone()
        if held is not None:
            return str(saved_as)
    return None


def queue_torrent(conn: Connection, req: TorrentRequest, *, now: float) -> QueuedTorrent:
    """Queue a torrent, or reuse the unfinished (or paused) download of the same
    info-hash, adding the peers named now to it. Raises AlreadyFetched when it was
    downloaded here before and is still in the download folder."""
    here = fetched_before(conn, req.info_hash)
    if here is not None:
        raise AlreadyFetched(here)
    cur = run(
        conn,
        "INSERT INTO requests (pattern, kind, requested_at, files, already_here)"
        " VALUES (?, 'torrent', ?, 0, 0)",
        (req.pattern, now),
    )
    request_id = cur.lastrowid
    assert request_id is not None
    existing = run(
        conn,
        "SELECT d.id, d.name, d.size, t.peers FROM torrent_downloads t"
        " JOIN downloads d ON d.id = t.download_id"
        f" WHERE t.info_hash = ? AND d.status IN ({_KEEPING_TEMP_SQL}) ORDER BY d.id LIMIT 1",
        (req.info_hash,),
    ).fetchone()
    if existing is not None:
        did, name, size, peers_json = existing
        peers = list(dict.fromkeys([*json.loads(peers_json), *req.peers]))
        run(
            conn,
            "UPDATE torrent_downloads SET peers = ? WHERE download_id = ?",
            (json.dumps(peers), did),
        )
        return QueuedTorrent(request_id, int(did), False, str(name), int(size))
    cur = run(
        conn,
        "INSERT INTO downloads (request_id, file_id, name, sha256, size, status, pinned,"
        " reason, requested_at, started_at, finished_at, bytes_done, bytes_received,"
        " bad_chunks, have, temp_path, saved_as, switched)"
        f" VALUES (?, NULL, ?, '', ?, '{Status.QUEUED}', 0, NULL, ?, NULL, NULL, 0, 0, 0, X'',"
        " NULL, NULL, NULL)",
        (request_id, req.name, req.size, now),
    )
    did = cur.lastrowid
    assert did is not None
    run(
        conn,
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
    run(conn, "UPDATE requests SET files = 1 WHERE id = ?", (request_id,))
    return QueuedTorrent(request_id, did, True, req.name, req.size)


def torrent_role_state(conn: Connection) -> dict[str, str]:
    """What p2p-torrent recorded about itself (role_settings): available, serving, port..."""
    return {
        name: value
        for name, value in run(conn, "SELECT name, value FROM role_settings WHERE role = 'torrent'")
    }


def done_note(conn: Connection, download_id: int) -> str | None:
    """What a finished torrent download says of its sources (p2pshare peers, BitTorrent)."""
    row = run(
        conn,
        f"SELECT reason FROM downloads WHERE id = ? AND status = '{Status.DONE}'",
        (download_id,),
    ).fetchone()
    return None if row is None or not row[0] else str(row[0])


def offered_on_lan(conn: Connection, wanted: list[tuple[str, int]]) -> int:
    """How many of these contents (SHA-256, size) some usable source (db.sources) offers."""
    found = 0
    for sha256, size in wanted:
        row = run(
            conn,
            "SELECT 1 FROM files f JOIN holdings h ON h.file_id = f.id"
            f" JOIN peers p ON p.id = h.peer_id WHERE f.sha256 = ? AND f.size = ? AND {USABLE}"
            " LIMIT 1",
            (sha256, size),
        ).fetchone()
        found += row is not None
    return found

"""Read-only queries behind p2pctl's reports. Each returns plain dataclasses."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from sqlalchemy import Connection, Integer, distinct, func, select

from p2pshare.db import history, listing
from p2pshare.db.driver import driver_connection
from p2pshare.db.ledger import upload_totals
from p2pshare.db.listing import FileRow, PeerRow, link_state, matches
from p2pshare.db.lists import json_values
from p2pshare.db.quick import Counts
from p2pshare.db.schema import (
    download_sources,
    downloads,
    files,
    holdings,
    local_files,
    peers,
    uploads,
)
from p2pshare.db.status import UNFINISHED, Status

__all__ = ["Counts", "FileRow", "PeerRow", "counts", "link_state", "matches"]

lf, f, d, src, up = local_files.c, files.c, downloads.c, download_sources.c, uploads.c


@dataclass(frozen=True)
class DownloadRow:
    id: int
    name: str
    size: int
    status: str
    reason: str | None
    requested_at: float
    started_at: float | None
    finished_at: float | None
    bytes_done: int
    bytes_received: int
    bad_chunks: int
    saved_as: str | None
    sha256: str
    peers: list[str]  # address:port of each source, most bytes first
    peer_names: list[str]  # the username each of those announced, in the same order
    request_id: int | None
    switched: str | None  # the last move to another version or manifest, and why


@dataclass(frozen=True)
class UploadRow:
    at: float
    peer_address: str
    name: str
    sha256: str
    chunk_index: int
    bytes: int
    seconds: float


def counts(conn: Connection) -> Counts:
    shared = conn.execute(select(func.count(), func.coalesce(func.sum(lf.size), 0))).one()
    network = (
        conn.scalar(
            select(func.count(distinct(f.sha256))).join(holdings, holdings.c.file_id == f.id)
        )
        or 0
    )
    known = conn.scalar(select(func.count()).select_from(peers)) or 0
    running = conn.scalar(select(func.count()).where(d.status.in_(UNFINISHED))) or 0
    done = conn.scalar(select(func.count()).where(d.status == Status.DONE)) or 0
    done += history.rolled_up_done(conn)  # rolled up past the horizon, still done
    up = upload_totals(conn)  # one row kept as uploads are recorded, not a sum of them
    return Counts(shared[0], shared[1], network, known, running, done, up.chunks, up.bytes)


def driver(conn: Connection) -> sqlite3.Connection:
    """The connection's own sqlite3 connection, for `db.listing`'s plain SQL in the same
    transaction."""
    return driver_connection(conn)


def list_peers(conn: Connection, *, limit: int | None = None, offset: int = 0) -> list[PeerRow]:
    """Live peers, most recently heard first (see `db.listing.iter_peers`)."""
    return list(listing.iter_peers(driver(conn), limit=limit, offset=offset))


def list_files(
    conn: Connection, pattern: str | None = None, *, limit: int | None = None, offset: int = 0
) -> list[FileRow]:
    """Files shared here and known on the network, one row per (name, SHA-256); offers of
    one content under several manifest roots (a liar's among them) are one row (see
    `db.listing.iter_files`)."""
    return list(listing.iter_files(driver(conn), pattern, limit=limit, offset=offset))


def list_downloads(conn: Connection, limit: int | None = None) -> list[DownloadRow]:
    """Every download, newest first, with the peers it used (by address and by name)."""
    query = select(downloads).order_by(d.id.desc())
    if limit:
        query = query.limit(limit)
    rows = list(conn.execute(query))
    by_peer: dict[int, list[str]] = {}
    names: dict[int, list[str]] = {}
    if rows:
        for source in conn.execute(
            select(src.download_id, src.address, src.tcp_port, src.username)
            .where(src.download_id.in_(json_values(r.id for r in rows)))
            .order_by(src.bytes.desc(), src.address, src.tcp_port)
        ):
            address = f"{source.address}:{source.tcp_port}"
            by_peer.setdefault(source.download_id, []).append(address)
            names.setdefault(source.download_id, []).append(source.username)
    return [
        DownloadRow(
            d.id,
            d.name,
            d.size,
            d.status,
            d.reason,
            d.requested_at,
            d.started_at,
            d.finished_at,
            d.bytes_done,
            d.bytes_received,
            d.bad_chunks,
            d.saved_as,
            d.sha256,
            by_peer.get(d.id, []),
            names.get(d.id, []),
            d.request_id,
            d.switched,
        )
        for d in rows
    ]


def list_uploads(conn: Connection, limit: int = 100) -> list[UploadRow]:
    """The most recent served chunks, newest first."""
    rows = conn.execute(select(uploads).order_by(up.id.desc()).limit(limit))
    return [
        UploadRow(u.at, u.peer_address, u.name, u.sha256, u.chunk_index, u.bytes, u.seconds)
        for u in rows
    ]


@dataclass(frozen=True)
class LocalFileRow:
    """A file this node itself holds, as the index last saw it (for the browser share)."""

    root: str  # 'share' or 'download'
    name: str  # '/'-separated, relative to the root
    size: int
    sha256: str
    mtime_ns: int
    ctime_ns: int
    inode: int


# The columns of a LocalFileRow, in its order.
LOCAL_FILE_COLUMNS = (
    lf.root,
    lf.name,
    lf.size,
    f.sha256,
    lf.mtime_ns,
    lf.ctime_ns,
    lf.inode,
)


def list_local_files(conn: Connection) -> list[LocalFileRow]:
    """Every indexed file of the share and download folders, by root then name."""
    rows = conn.execute(
        select(*LOCAL_FILE_COLUMNS).join(files, f.id == lf.file_id).order_by(lf.root, lf.name)
    )
    return [LocalFileRow(*row) for row in rows]


def local_file(conn: Connection, root: str, name: str) -> LocalFileRow | None:
    """The indexed file `name` under `root`, or None when the index holds no such file."""
    row = conn.execute(
        select(*LOCAL_FILE_COLUMNS)
        .join(files, f.id == lf.file_id)
        .where(lf.root == root, lf.name == name)
    ).first()
    return None if row is None else LocalFileRow(*row)


def upload_buckets(conn: Connection, *, since: float, bucket_seconds: float) -> dict[int, int]:
    """Bytes served per time bucket since `since`: bucket number (0 at `since`) -> bytes."""
    bucket = func.cast((up.at - since) / bucket_seconds, Integer)
    rows = conn.execute(select(bucket, func.sum(up.bytes)).where(up.at >= since).group_by(bucket))
    return {int(b): int(n) for b, n in rows}


def received_bytes(conn: Connection) -> dict[int, int]:
    """Every byte received so far by each unfinished or recent download: id -> bytes."""
    rows = conn.execute(select(d.id, d.bytes_received))
    return {int(i): int(n) for i, n in rows}

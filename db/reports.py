"""Read-only queries behind the reports: `p2pctl status`, `history`, `uploads`, `files`,
`peers` and the web page's tables. Each returns plain dataclasses. Every count `status`
shows is a single row or an index lookup, never a scan of a ledger (bench/cli_timing.py
prints their query plans)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Integer, distinct, func, select

from p2pshare.db import history, listing
from p2pshare.db import roles as dbroles
from p2pshare.db.ledger import upload_totals
from p2pshare.db.listing import FileRow, PeerRow, link_state, matches
from p2pshare.db.lists import json_values
from p2pshare.db.schema import (
    download_sources,
    downloads,
    files,
    holdings,
    local_files,
    peers,
    uploads,
)
from p2pshare.db.sql import run
from p2pshare.db.status import UNFINISHED, Status, sql_in
from p2pshare.db.wal import Sizes, sizes

__all__ = ["FileRow", "PeerRow", "link_state", "matches"]

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


def list_peers(conn: Connection, *, limit: int | None = None, offset: int = 0) -> list[PeerRow]:
    """Live peers, most recently heard first (see `db.listing.iter_peers`)."""
    return list(listing.iter_peers(conn, limit=limit, offset=offset))


def list_files(
    conn: Connection, pattern: str | None = None, *, limit: int | None = None, offset: int = 0
) -> list[FileRow]:
    """Files shared here and known on the network, one row per (name, SHA-256); offers of
    one content under several manifest roots (a liar's among them) are one row (see
    `db.listing.iter_files`)."""
    return list(listing.iter_files(conn, pattern, limit=limit, offset=offset))


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


# ------------------------------------------------------------ p2pctl status


COUNT_QUERIES = {
    "shared": "SELECT count(*), coalesce(sum(size), 0) FROM local_files",
    # Contents offered on the network, read off ix_holdings_file alone: a distinct
    # SHA-256 would join every offer to `files`, which costs far more at a million
    # offers; the two differ only by a content offered under two roots, a liar's (the
    # web page's `counts` counts it once).
    "network": "SELECT count(*), 0 FROM (SELECT DISTINCT file_id FROM holdings)",
    "peers": "SELECT count(*), 0 FROM peers",
    "running": f"SELECT count(*), 0 FROM downloads WHERE status IN ({sql_in(UNFINISHED)})",
    # Finished downloads rolled up past the history horizon still count (download_days
    # holds a row per day and ending, so its sum stays a few hundred rows at most).
    "done": (
        f"SELECT (SELECT count(*) FROM downloads WHERE status = '{Status.DONE}')"
        " + (SELECT coalesce(sum(downloads), 0) FROM download_days"
        f" WHERE status = '{Status.DONE}'), 0"
    ),
    "uploads": "SELECT chunks, bytes FROM upload_totals WHERE id = 1",
}


@dataclass(frozen=True)
class Counts:
    shared_files: int
    shared_bytes: int
    network_files: int
    peers: int
    downloads_running: int
    downloads_done: int
    uploads: int
    uploaded_bytes: int


@dataclass(frozen=True)
class NodeRow:
    tcp_port: int | None
    node_id: str | None
    catalog_version: int


@dataclass(frozen=True)
class StatusFacts:
    roles: list[dbroles.RoleStatus]
    node: NodeRow | None
    recorded: dict[str, dict[str, str]]
    counts: Counts
    sizes: Sizes


def role_statuses(
    conn: Connection, *, now: float, with_web: bool = False
) -> list[dbroles.RoleStatus]:
    """The four roles; with_web, p2p-web and p2p-torrent too when each has a heartbeat row
    (it runs, or died without clearing it): a node without them is not missing anything."""
    rows = [
        tuple(r) for r in run(conn, "SELECT role, pid, started_at, beat_at, detail FROM heartbeats")
    ]
    beating = {row[0] for row in rows}
    extra = tuple(r for r in dbroles.OPTIONAL_ROLES if with_web and r in beating)
    return dbroles.statuses(rows, now=now, roles=(*dbroles.ROLES, *extra))


def status_counts(conn: Connection) -> Counts:
    """What `p2pctl status` counts, each one index lookup or row."""
    values: list[int] = []
    for query in COUNT_QUERIES.values():
        row = run(conn, query).fetchone() or (0, 0)
        values.append(int(row[0] or 0))
        values.append(int(row[1] or 0))
    shared, shared_bytes, network, _, peers, _, running, _, done, _, up, up_bytes = values
    return Counts(shared, shared_bytes, network, peers, running, done, up, up_bytes)


def status_facts(conn: Connection, path: Path, *, now: float) -> StatusFacts:
    """Everything `p2pctl status` shows, inside the caller's read transaction."""
    roles = role_statuses(conn, now=now, with_web=True)
    found = run(conn, "SELECT tcp_port, node_id, catalog_version FROM node WHERE id = 1").first()
    node = NodeRow(found[0], found[1], int(found[2])) if found else None
    recorded: dict[str, dict[str, str]] = {}
    for role, name, value in run(
        conn, "SELECT role, name, value FROM role_settings ORDER BY role, name"
    ):
        recorded.setdefault(role, {})[name] = value
    return StatusFacts(roles, node, recorded, status_counts(conn), sizes(path))


def started_since(conn: Connection, since: float) -> tuple[set[str], dict[str, str]]:
    """The programs that began beating after `since`, and those that recorded since
    then why they cannot start (program -> its sentence): what `p2pctl start` waits on."""
    query = "SELECT role FROM heartbeats WHERE started_at >= ?"
    beating = {row[0] for row in run(conn, query, (since,))}
    failed = {
        role: value
        for role, value in run(
            conn,
            "SELECT role, value FROM role_settings WHERE name = ? AND recorded_at >= ?",
            (dbroles.START_ERROR, since),
        )
    }
    return beating - set(failed), failed

"""Read-only queries behind p2pctl's reports. Each returns plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, case, distinct, func, select
from sqlalchemy.orm import Session

from p2pshare.db.ledger import upload_totals
from p2pshare.db.models import (
    BadPeer,
    Download,
    DownloadSource,
    File,
    Holding,
    LocalFile,
    Peer,
    RoleSetting,
    Upload,
)
from p2pshare.db.names import matches
from p2pshare.db.quick import Counts

__all__ = ["Counts", "counts"]


@dataclass(frozen=True)
class PeerRow:
    username: str
    address: str
    tcp_port: int
    files: int
    last_seen: float
    bad_files: int
    node_id: str
    fingerprint: str | None  # SHA-256 of its certificate, its identity across restarts
    tls: bool  # it takes TLS connections only
    # tls, clear, or why this node and it cannot talk (one encrypts, the other not)
    link: str


@dataclass(frozen=True)
class FileRow:
    name: str
    size: int
    chunks: int
    sha256: str
    here: bool
    peers: int
    complete_peers: int


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


RUNNING_STATUSES = ("queued", "active", "waiting")


def counts(session: Session) -> Counts:
    shared = session.execute(select(func.count(), func.coalesce(func.sum(LocalFile.size), 0))).one()
    network = (
        session.scalar(
            select(func.count(distinct(File.sha256))).join(Holding, Holding.file_id == File.id)
        )
        or 0
    )
    peers = session.scalar(select(func.count()).select_from(Peer)) or 0
    running = session.scalar(select(func.count()).where(Download.status.in_(RUNNING_STATUSES))) or 0
    done = session.scalar(select(func.count()).where(Download.status == "done")) or 0
    up = upload_totals(session)  # one row kept as uploads are recorded, not a sum of them
    return Counts(shared[0], shared[1], network, peers, running, done, up.chunks, up.bytes)


def list_peers(session: Session) -> list[PeerRow]:
    """Every live peer, most recently heard first."""
    files = (
        select(Holding.peer_id, func.count(distinct(Holding.file_id)).label("n"))
        .group_by(Holding.peer_id)
        .subquery()
    )
    bad = (
        select(BadPeer.address, BadPeer.tcp_port, func.count().label("n"))
        .group_by(BadPeer.address, BadPeer.tcp_port)
        .subquery()
    )
    rows = session.execute(
        select(Peer, func.coalesce(files.c.n, 0), func.coalesce(bad.c.n, 0))
        .outerjoin(files, files.c.peer_id == Peer.id)
        .outerjoin(bad, (bad.c.address == Peer.address) & (bad.c.tcp_port == Peer.tcp_port))
        .order_by(Peer.last_seen.desc())
    )
    encrypt = session.scalar(
        select(RoleSetting.value).where(
            RoleSetting.role == "listener", RoleSetting.name == "encrypt"
        )
    )
    return [
        PeerRow(
            p.username,
            p.address,
            p.tcp_port,
            n,
            p.last_seen,
            b,
            p.node_id,
            p.fingerprint,
            p.tls,
            link_state(None if encrypt is None else encrypt == "yes", p.tls),
        )
        for p, n, b in rows
    ]


def link_state(own_encrypt: bool | None, peer_tls: bool) -> str:
    """How this node talks to a peer, as `p2pctl peers` says it."""
    if own_encrypt is None or own_encrypt == peer_tls:
        return "tls" if peer_tls else "clear"
    if own_encrypt:
        return "cannot talk: it does not encrypt, this node does"
    return "cannot talk: it encrypts, this node does not"


def list_files(session: Session, pattern: str | None = None) -> list[FileRow]:
    """Files shared here and known on the network, one row per (name, SHA-256).

    Offers of one content under several manifest roots (a liar's among them) are one row.
    """
    here = {(name, fid) for name, fid in session.execute(select(LocalFile.name, LocalFile.file_id))}
    held = session.execute(
        select(
            Holding.name,
            Holding.file_id,
            func.count(distinct(Holding.peer_id)),
            func.sum(case((Holding.bitfield.is_(None), 1), else_=0)),
        ).group_by(Holding.name, Holding.file_id)
    ).all()
    network = {(name, fid): (n, complete) for name, fid, n, complete in held}
    keys = {k for k in here | set(network) if matches(k[0], pattern)}
    files = {
        f.id: f for f in session.scalars(select(File).where(File.id.in_({k[1] for k in keys})))
    }
    merged: dict[tuple[str, str], FileRow] = {}
    for name, fid in sorted(keys):
        f = files[fid]
        n, complete = network.get((name, fid), (0, 0))
        row = FileRow(name, f.size, f.chunk_count, f.sha256, (name, fid) in here, n, complete)
        prev = merged.get((name, f.sha256))
        if prev is not None:
            row = FileRow(
                name,
                prev.size,
                prev.chunks,
                f.sha256,
                prev.here or row.here,
                prev.peers + row.peers,
                prev.complete_peers + row.complete_peers,
            )
        merged[(name, f.sha256)] = row
    return [merged[k] for k in sorted(merged)]


def list_downloads(session: Session, limit: int | None = None) -> list[DownloadRow]:
    """Every download, newest first, with the peers it used (by address and by name)."""
    query = select(Download).order_by(Download.id.desc())
    if limit:
        query = query.limit(limit)
    downloads = list(session.scalars(query))
    peers: dict[int, list[str]] = {}
    names: dict[int, list[str]] = {}
    if downloads:
        for src in session.scalars(
            select(DownloadSource)
            .where(DownloadSource.download_id.in_([d.id for d in downloads]))
            .order_by(DownloadSource.bytes.desc(), DownloadSource.address, DownloadSource.tcp_port)
        ):
            peers.setdefault(src.download_id, []).append(f"{src.address}:{src.tcp_port}")
            names.setdefault(src.download_id, []).append(src.username)
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
            peers.get(d.id, []),
            names.get(d.id, []),
            d.request_id,
            d.switched,
        )
        for d in downloads
    ]


def list_uploads(session: Session, limit: int = 100) -> list[UploadRow]:
    """The most recent served chunks, newest first."""
    rows = session.scalars(select(Upload).order_by(Upload.id.desc()).limit(limit))
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
    LocalFile.root,
    LocalFile.name,
    LocalFile.size,
    File.sha256,
    LocalFile.mtime_ns,
    LocalFile.ctime_ns,
    LocalFile.inode,
)


def list_local_files(session: Session) -> list[LocalFileRow]:
    """Every indexed file of the share and download folders, by root then name."""
    rows = session.execute(
        select(*LOCAL_FILE_COLUMNS)
        .join(File, File.id == LocalFile.file_id)
        .order_by(LocalFile.root, LocalFile.name)
    )
    return [LocalFileRow(*row) for row in rows]


def local_file(session: Session, root: str, name: str) -> LocalFileRow | None:
    """The indexed file `name` under `root`, or None when the index holds no such file."""
    row = session.execute(
        select(*LOCAL_FILE_COLUMNS)
        .join(File, File.id == LocalFile.file_id)
        .where(LocalFile.root == root, LocalFile.name == name)
    ).first()
    return None if row is None else LocalFileRow(*row)


def upload_buckets(session: Session, *, since: float, bucket_seconds: float) -> dict[int, int]:
    """Bytes served per time bucket since `since`: bucket number (0 at `since`) -> bytes."""
    bucket = func.cast((Upload.at - since) / bucket_seconds, Integer)
    rows = session.execute(
        select(bucket, func.sum(Upload.bytes)).where(Upload.at >= since).group_by(bucket)
    )
    return {int(b): int(n) for b, n in rows}


def received_bytes(session: Session) -> dict[int, int]:
    """Every byte received so far by each unfinished or recent download: id -> bytes."""
    rows = session.execute(select(Download.id, Download.bytes_received))
    return {int(i): int(n) for i, n in rows}

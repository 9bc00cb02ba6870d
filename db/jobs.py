"""The downloader's bookkeeping: which downloads to run, what a job needs to know at its
start, its sources, its progress made durable, and its end."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from p2pshare.db.index import HashedFile, record_local_file
from p2pshare.db.models import BadPeer, Chunk, Download, DownloadSource, File, Holding, Peer
from p2pshare.db.queueing import KEEPING_TEMP, UNFINISHED


def unfinished_downloads(session: Session) -> list[int]:
    """Ids of downloads to run, oldest first (queued ones and any a crash interrupted)."""
    return list(
        session.scalars(
            select(Download.id).where(Download.status.in_(UNFINISHED)).order_by(Download.id)
        )
    )


def downloads_keeping_temp(session: Session) -> set[int]:
    """Downloads whose temp file must stay."""
    return set(session.scalars(select(Download.id).where(Download.status.in_(KEEPING_TEMP))))


@dataclass(frozen=True)
class JobSpec:
    """What a download job needs to know, read once at its start."""

    download_id: int
    file_id: int
    name: str
    sha256: str
    size: int
    chunk_size: int
    root: str
    # The manifest: per chunk, the SHA-256 chaining state after it (hex).
    chunk_hashes: list[str]
    have: bytes
    temp_path: str | None
    saved_as: str | None
    status: str
    # When it was asked for: a file at `saved_as` older than this is not one it published.
    requested_at: float = 0.0


def spec_of(d: Download, f: File, entries: list[str]) -> JobSpec:
    """A job's spec from its download row, its file row and its manifest entries."""
    return JobSpec(
        d.id, f.id, d.name, f.sha256, f.size, f.chunk_size, f.root, entries,
        bytes(d.have), d.temp_path, d.saved_as, d.status, d.requested_at,
    )  # fmt: skip


def job_spec(session: Session, download_id: int) -> JobSpec | None:
    d = session.get(Download, download_id)
    if d is None:
        return None
    f = session.get(File, d.file_id)
    assert f is not None
    return spec_of(d, f, entries(session, f.id))


@dataclass(frozen=True)
class Source:
    address: str
    tcp_port: int
    username: str
    bitfield: bytes | None  # from the catalog; refreshed over TCP by the job
    fingerprint: str | None = None
    tls: bool = False


def sources_for(session: Session, file_id: int) -> list[Source]:
    """Live peers holding any chunk of the file, minus those marked bad for it."""
    bad = {
        (b.address, b.tcp_port)
        for b in session.scalars(select(BadPeer).where(BadPeer.file_id == file_id))
    }
    out: dict[tuple[str, int], Source] = {}
    for peer, holding in session.execute(
        select(Peer, Holding)
        .join(Holding, Holding.peer_id == Peer.id)
        .where(Holding.file_id == file_id)
    ):
        key = (peer.address, peer.tcp_port)
        if key in bad or holding.chunks_held == 0:
            continue
        prev = out.get(key)
        bits = holding.bitfield
        if prev is not None and (prev.bitfield is None or bits is not None):
            continue  # keep the fuller holding of the two names
        out[key] = Source(
            peer.address, peer.tcp_port, peer.username, bits, peer.fingerprint, peer.tls
        )
    return list(out.values())


def start_job(session: Session, download_id: int, temp_path: str, *, now: float) -> None:
    d = session.get(Download, download_id)
    assert d is not None
    d.temp_path = temp_path
    if d.started_at is None:
        d.started_at = now


@dataclass(frozen=True)
class SourceTally:
    address: str
    tcp_port: int
    username: str
    chunks: int
    bytes: int
    bad_chunks: int


@dataclass(frozen=True)
class Progress:
    """What a job learned since its last flush; every field is an increment except the state."""

    have: bytes  # the whole durable bitfield
    bytes_done: int
    new_bytes_received: int
    new_bad_chunks: int
    tallies: list[SourceTally]
    new_bad_peers: list[tuple[str, int]]
    status: str  # active or waiting
    reason: str | None


def record_progress(session: Session, download_id: int, p: Progress, *, now: float) -> str:
    """Write a job's batch of progress; returns the download's status (a cancel shows here)."""
    d = session.get(Download, download_id)
    if d is None:
        return "cancelled"
    if d.status not in UNFINISHED:
        return d.status
    d.have, d.bytes_done, d.status, d.reason = p.have, p.bytes_done, p.status, p.reason
    d.bytes_received += p.new_bytes_received
    d.bad_chunks += p.new_bad_chunks
    for t in p.tallies:
        src = session.get(DownloadSource, (download_id, t.address, t.tcp_port))
        if src is None:
            src = DownloadSource(
                download_id=download_id,
                address=t.address,
                tcp_port=t.tcp_port,
                username=t.username,
                chunks=0,
                bytes=0,
                bad_chunks=0,
            )
            session.add(src)
        src.chunks += t.chunks
        src.bytes += t.bytes
        src.bad_chunks += t.bad_chunks
    for address, port in p.new_bad_peers:
        bad = session.scalar(
            select(BadPeer).where(
                BadPeer.address == address, BadPeer.tcp_port == port, BadPeer.file_id == d.file_id
            )
        )
        if bad is None:
            session.add(
                BadPeer(
                    address=address, tcp_port=port, file_id=d.file_id, bad_chunks=1, marked_at=now
                )
            )
        else:
            bad.bad_chunks += 1
            bad.marked_at = now
    return d.status


def set_saved_as(session: Session, download_id: int, saved_as: str) -> None:
    """Remember where the file is about to be published, so a crash mid-publish resumes there."""
    d = session.get(Download, download_id)
    assert d is not None
    d.saved_as = saved_as


def hold_download(session: Session, download_id: int, reason: str) -> None:
    """Pause a whole, verified download the node cannot publish yet (its folder full or
    unwritable): its temp file stays, and `p2pctl resume` publishes it once fixed."""
    d = session.get(Download, download_id)
    assert d is not None
    if d.status not in UNFINISHED:
        return  # cancelled or paused by the user meanwhile; keep their word
    d.status, d.reason, d.saved_as = "paused", reason, None


def finish_download(
    session: Session,
    download_id: int,
    *,
    status: str,
    reason: str | None,
    now: float,
    published: tuple[str, HashedFile] | None = None,
) -> None:
    """End a download: done (then shared from the download folder), failed or cancelled."""
    d = session.get(Download, download_id)
    assert d is not None
    if d.status not in UNFINISHED and status != "done":
        return  # cancelled meanwhile; keep the user's word
    d.status, d.reason, d.finished_at = status, reason, now
    d.temp_path = None
    if status != "done":
        d.saved_as = None  # a name chosen for it before publishing failed is not its
    if published is not None:
        name, hashed = published
        d.saved_as = name
        d.bytes_done = d.size
        record_local_file(session, "download", name, hashed, now=now)


def entries(session: Session, file_id: int) -> list[str]:
    """A file's manifest entries (hex), in chunk order."""
    return list(
        session.scalars(
            select(Chunk.sha256).where(Chunk.file_id == file_id).order_by(Chunk.chunk_index)
        )
    )

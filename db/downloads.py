"""Queries behind downloads: the queue p2pctl fills (written in plain sqlite3 in
`db.queueing`, reached from a Session here), and the downloader's bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from p2pshare.db import queueing
from p2pshare.db.engine import driver_connection
from p2pshare.db.index import HashedFile, record_local_file
from p2pshare.db.models import (
    BadPeer,
    Chunk,
    Download,
    DownloadSource,
    File,
    Holding,
    Peer,
)
from p2pshare.db.queueing import (
    KEEPING_TEMP,
    UNFINISHED,
    AlreadyHere,
    AmbiguousName,
    Candidate,
    UnknownName,
)

__all__ = [
    "KEEPING_TEMP",
    "UNFINISHED",
    "AlreadyHere",
    "AmbiguousName",
    "Candidate",
    "UnknownName",
]


def find_candidates(session: Session, pattern: str) -> list[Candidate]:
    """`queueing.find_candidates` inside the session's transaction."""
    return queueing.find_candidates(driver_connection(session), pattern)


def offer_peers(session: Session, shas: set[str]) -> dict[str, dict[int, int]]:
    """`queueing.offer_peers` inside the session's transaction."""
    return queueing.offer_peers(driver_connection(session), shas)


def resolve_name(session: Session, pattern: str) -> Candidate:
    """`queueing.resolve_name` inside the session's transaction."""
    return queueing.resolve_name(driver_connection(session), pattern)


def queue_download(
    session: Session,
    candidate: Candidate,
    *,
    now: float,
    request_id: int | None = None,
    pinned: bool = False,
) -> tuple[int, bool]:
    """`queueing.queue_download` inside the session's transaction."""
    try:
        return queueing.queue_download(
            driver_connection(session), candidate, now=now, request_id=request_id, pinned=pinned
        )
    finally:
        session.expire_all()  # the session's objects of rows it changed are stale


# ------------------------------------------------------------ downloader side


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


def spec_of(d: Download, f: File, entries: list[str]) -> JobSpec:
    """A job's spec from its download row, its file row and its manifest entries."""
    return JobSpec(
        d.id, f.id, d.name, f.sha256, f.size, f.chunk_size, f.root, entries,
        bytes(d.have), d.temp_path, d.saved_as, d.status,
    )  # fmt: skip


def job_spec(session: Session, download_id: int) -> JobSpec | None:
    d = session.get(Download, download_id)
    if d is None:
        return None
    f = session.get(File, d.file_id)
    assert f is not None
    hashes = list(
        session.scalars(
            select(Chunk.sha256).where(Chunk.file_id == f.id).order_by(Chunk.chunk_index)
        )
    )
    return spec_of(d, f, hashes)


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
    if published is not None:
        name, hashed = published
        d.saved_as = name
        d.bytes_done = d.size
        record_local_file(session, "download", name, hashed, now=now)


def _entries(session: Session, file_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Chunk.sha256).where(Chunk.file_id == file_id).order_by(Chunk.chunk_index)
        )
    )


@dataclass(frozen=True)
class OfferChange:
    """What switch_offer did to a download whose offer no usable peer makes any more."""

    reason: str
    ended: bool  # a pinned download (NAME@SHA) whose version left every peer: it failed
    sha256: str  # the content it fetches now (unchanged when only the manifest moved)
    size: int


def switch_offer(session: Session, download_id: int) -> OfferChange | None:
    """Move a download whose offer no usable peer makes any more to one that live, not-bad
    peers make: another offer of the same SHA-256 (another manifest root or chunk size),
    else, when that SHA-256 has left every peer, the version now offered under its name.

    A pinned download (asked as NAME@SHA) never changes version: it fails, naming the
    versions offered instead. Returns None when there is nothing to move to (the download
    waits). The caller ends the job; the downloader starts it again on the new offer.
    """
    d = session.get(Download, download_id)
    if d is None or d.status not in UNFINISHED or d.file_id is None:  # None: a torrent's
        return None
    offers = offer_peers(session, {d.sha256})[d.sha256]
    if offers.get(d.file_id, 0) > 0:
        return None  # its peers are listed, only not answering now: wait for them
    usable = {fid: n for fid, n in offers.items() if n > 0 and _manifest_known(session, fid)}
    if usable:
        fid = max(usable, key=lambda f: (usable[f], -f))
        new, old = session.get(File, fid), session.get(File, d.file_id)
        assert new is not None and old is not None
        old_root, new_root = old.root, new.root
        return _move(
            session,
            d,
            new,
            lambda kept: (
                f"switched to the manifest {new_root[:12]} offered by "
                f"{_peers(usable[fid])}: no usable peer offers {old_root[:12]} any more "
                f"({kept} verified chunks kept)"
            ),
        )
    versions = _other_versions(session, d.name, d.sha256)
    if not versions:
        return None
    if d.pinned:
        listed = ", ".join(f"{d.name}@{sha[:8]}" for sha in sorted(versions))
        reason = f"no online peer offers {d.name}@{d.sha256[:8]} any more; offered now: {listed}"
        return OfferChange(reason, True, d.sha256, d.size)
    sha = max(versions, key=lambda v: (versions[v][1], v))
    fid, peers = versions[sha]
    new = session.get(File, fid)
    assert new is not None
    old_sha = d.sha256
    return _move(
        session,
        d,
        new,
        lambda kept: (
            f"switched to {d.name}@{sha[:8]} offered by {_peers(peers)}: no online "
            f"peer offers the version {old_sha[:8]} any more ({kept} verified chunks kept)"
        ),
    )


def _peers(n: int) -> str:
    return f"{n} peer{'s' if n != 1 else ''}"


def _manifest_known(session: Session, file_id: int) -> bool:
    file = session.get(File, file_id)
    return file is not None and len(_entries(session, file_id)) == file.chunk_count


def _other_versions(session: Session, name: str, sha256: str) -> dict[str, tuple[int, int]]:
    """Other contents live, not-bad peers offer under `name`: per SHA-256, the offer most
    of them make (file id, peers). Only offers whose manifest is here can be fetched."""
    shas = set(
        session.scalars(
            select(File.sha256)
            .join(Holding, Holding.file_id == File.id)
            .where(Holding.name == name, File.sha256 != sha256)
        )
    )
    out = {}
    for sha, offers in offer_peers(session, shas).items():
        usable = {f: n for f, n in offers.items() if n > 0 and _manifest_known(session, f)}
        if usable:
            fid = max(usable, key=lambda f: (usable[f], -f))
            out[sha] = (fid, usable[fid])
    return out


def _move(session: Session, d: Download, new: File, because: Callable[[int], str]) -> OfferChange:
    """Point the download at another offer, keeping the verified chunks both manifests
    agree on: the same entries before and after a chunk mean the same bytes in it, so
    nothing proven under one manifest is trusted under another on faith (a rewritten file
    keeps its unchanged start)."""
    old = session.get(File, d.file_id)
    assert old is not None
    new_entries = _entries(session, new.id)
    have = bytearray((new.chunk_count + 7) // 8)
    kept = 0
    if new.chunk_size == old.chunk_size and d.have:
        old_entries = _entries(session, old.id)
        for i in range(min(len(old_entries), len(new_entries))):
            if not d.have[i >> 3] & (0x80 >> (i & 7)):
                continue
            same_before = i == 0 or old_entries[i - 1] == new_entries[i - 1]
            if same_before and old_entries[i] == new_entries[i]:
                have[i >> 3] |= 0x80 >> (i & 7)
                kept += 1
    d.file_id, d.sha256, d.have, d.size = new.id, new.sha256, bytes(have), new.size
    d.bytes_done = sum(
        min(new.chunk_size, new.size - i * new.chunk_size)
        for i in range(new.chunk_count)
        if have[i >> 3] & (0x80 >> (i & 7))
    )
    d.status = "queued"
    d.reason = d.switched = because(kept)
    return OfferChange(d.reason, False, new.sha256, new.size)

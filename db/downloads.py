"""Queries behind downloads: the queue p2pctl fills, and the downloader's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from p2pshare.db.index import HashedFile, record_local_file
from p2pshare.db.models import (
    BadPeer,
    Chunk,
    Download,
    DownloadSource,
    File,
    Holding,
    LocalFile,
    Peer,
)
from p2pshare.db.reports import matches

UNFINISHED = ("queued", "active", "waiting")


class UnknownName(Exception):
    """No file known on the network matches the name."""


class AmbiguousName(Exception):
    """Several different files match; `candidates` lists them."""

    def __init__(self, message: str, candidates: list[Candidate]) -> None:
        super().__init__(message)
        self.candidates = candidates


class AlreadyHere(Exception):
    """The file is already shared by this node."""


@dataclass(frozen=True)
class Candidate:
    file_id: int
    name: str
    sha256: str
    size: int
    peers: int


def find_candidates(session: Session, pattern: str) -> list[Candidate]:
    """Files on the network matching NAME, a substring or glob, or NAME@sha256-prefix.

    An exact name wins over substring matches. One candidate per SHA-256: of the
    offers of that content (chunk sizes, manifest roots), the one most peers make.
    """
    name_part, _, sha_prefix = pattern.rpartition("@") if "@" in pattern else (pattern, "", "")
    sha_prefix = sha_prefix.lower()
    rows = session.execute(
        select(
            Holding.name, File.id, File.sha256, File.size, func.count(Holding.peer_id.distinct())
        )
        .join(File, File.id == Holding.file_id)
        .group_by(Holding.name, File.id)
    ).all()
    rows = [r for r in rows if r[2].startswith(sha_prefix)] if sha_prefix else rows
    exact = [r for r in rows if r[0] == name_part]
    chosen = exact or [r for r in rows if matches(r[0], name_part)]
    names: dict[str, str] = {}
    for name, _, sha, _, _ in sorted(chosen):
        names.setdefault(sha, name)
    offers = _offer_peers(session, {r[2] for r in chosen})
    out = []
    for sha, name in names.items():
        fid, peers = max(offers[sha].items(), key=lambda kv: (kv[1], -kv[0]))
        file = session.get(File, fid)
        assert file is not None
        out.append(Candidate(fid, name, sha, file.size, peers))
    return sorted(out, key=lambda c: (c.name, c.sha256))


def _offer_peers(session: Session, shas: set[str]) -> dict[str, dict[int, int]]:
    """Per SHA-256, the peers offering each of its `files` rows, not counting bad ones."""
    out: dict[str, dict[int, int]] = {sha: {} for sha in shas}
    for sha, fid, peers in session.execute(
        select(File.sha256, File.id, func.count(Holding.peer_id.distinct()))
        .join(Holding, Holding.file_id == File.id)
        .join(Peer, Peer.id == Holding.peer_id)
        .where(
            File.sha256.in_(sorted(shas)),
            Holding.chunks_held > 0,  # as sources_for: a peer holding nothing is no source
            ~select(BadPeer.id)
            .where(
                BadPeer.file_id == File.id,
                BadPeer.address == Peer.address,
                BadPeer.tcp_port == Peer.tcp_port,
            )
            .exists(),
        )
        .group_by(File.id)
    ):
        out[sha][fid] = peers
    for sha, offers in out.items():
        if not offers:  # every offer's peers are bad: keep the candidate, it will wait
            for fid in session.scalars(select(File.id).where(File.sha256 == sha)):
                offers[fid] = 0
    return out


def resolve_name(session: Session, pattern: str) -> Candidate:
    """The one file NAME means. Raises UnknownName, AmbiguousName."""
    candidates = find_candidates(session, pattern)
    if not candidates:
        raise UnknownName(f"no file on the network matches {pattern!r}; see p2pctl files")
    if len(candidates) > 1:
        raise AmbiguousName(
            f"{pattern!r} matches {len(candidates)} files; add @SHA to pick one", candidates
        )
    return candidates[0]


def queue_download(session: Session, candidate: Candidate, *, now: float) -> tuple[int, bool]:
    """Queue a download of the candidate; returns (download id, whether it is new).

    An unfinished download of the same content is reused rather than doubled.
    Raises AlreadyHere when this node already shares that content.
    """
    local = session.scalar(
        select(LocalFile)
        .join(File, File.id == LocalFile.file_id)
        .where(File.sha256 == candidate.sha256)
    )
    if local is not None:
        raise AlreadyHere(f"this node already has that file: {local.root}/{local.name}")
    existing = session.scalar(
        select(Download.id)
        .join(File, File.id == Download.file_id)
        .where(File.sha256 == candidate.sha256, Download.status.in_(UNFINISHED))
    )
    if existing is not None:
        return existing, False
    file = session.get(File, candidate.file_id)
    assert file is not None
    row = Download(
        file_id=file.id,
        name=candidate.name,
        sha256=file.sha256,
        size=file.size,
        status="queued",
        reason=None,
        requested_at=now,
        started_at=None,
        finished_at=None,
        have=bytes((file.chunk_count + 7) // 8),
        temp_path=None,
        saved_as=None,
    )
    session.add(row)
    session.flush()
    return row.id, True


def cancel_downloads(session: Session, pattern: str, *, now: float) -> list[str]:
    """Cancel unfinished downloads whose id or name matches; returns their names."""
    rows = list(session.scalars(select(Download).where(Download.status.in_(UNFINISHED))))
    chosen = [d for d in rows if str(d.id) == pattern or d.name == pattern]
    chosen = chosen or [d for d in rows if matches(d.name, pattern)]
    for d in chosen:
        d.status, d.reason, d.finished_at = "cancelled", "cancelled by the user", now
    return [d.name for d in chosen]


# ------------------------------------------------------------ downloader side


def unfinished_downloads(session: Session) -> list[int]:
    """Ids of downloads to run, oldest first (queued ones and any a crash interrupted)."""
    return list(
        session.scalars(
            select(Download.id).where(Download.status.in_(UNFINISHED)).order_by(Download.id)
        )
    )


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
    return JobSpec(
        d.id,
        f.id,
        d.name,
        f.sha256,
        f.size,
        f.chunk_size,
        f.root,
        hashes,
        bytes(d.have),
        d.temp_path,
        d.saved_as,
        d.status,
    )


@dataclass(frozen=True)
class Source:
    address: str
    tcp_port: int
    username: str
    bitfield: bytes | None  # from the catalog; refreshed over TCP by the job


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
        out[key] = Source(peer.address, peer.tcp_port, peer.username, bits)
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


@dataclass(frozen=True)
class FollowState:
    status: str
    reason: str | None
    bytes_done: int
    saved_as: str | None
    peers: int  # peers that have sent at least one verified chunk


def follow_state(session: Session, download_id: int) -> FollowState | None:
    """What `p2pctl download` shows while it follows a download."""
    d = session.get(Download, download_id)
    if d is None:
        return None
    peers = (
        session.scalar(
            select(func.count()).where(
                DownloadSource.download_id == download_id, DownloadSource.chunks > 0
            )
        )
        or 0
    )
    return FollowState(d.status, d.reason, d.bytes_done, d.saved_as, peers)


def _entries(session: Session, file_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Chunk.sha256).where(Chunk.file_id == file_id).order_by(Chunk.chunk_index)
        )
    )


def switch_offer(session: Session, download_id: int) -> str | None:
    """Move a download whose offer no usable peer makes any more to another offer of the
    same SHA-256 (another manifest root or chunk size) that live, not-bad peers make.

    Verified chunks stay only where both manifests agree on the entries before and
    after them, so nothing proven under one manifest is trusted under another on
    faith. Returns a sentence for the history, or None when there is nothing to
    switch to. The caller ends the job; the downloader starts it again on the new offer.
    """
    d = session.get(Download, download_id)
    if d is None or d.status not in UNFINISHED:
        return None
    offers = _offer_peers(session, {d.sha256})[d.sha256]
    offers.pop(d.file_id, None)
    usable = {fid: n for fid, n in offers.items() if n > 0}
    if not usable:
        return None
    old = session.get(File, d.file_id)
    fid = max(usable, key=lambda f: (usable[f], -f))
    new = session.get(File, fid)
    assert old is not None and new is not None
    new_entries = _entries(session, fid)
    if len(new_entries) != new.chunk_count:
        return None  # its manifest is not here yet
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
    d.file_id, d.have, d.size = fid, bytes(have), new.size
    d.bytes_done = sum(
        min(new.chunk_size, new.size - i * new.chunk_size)
        for i in range(new.chunk_count)
        if have[i >> 3] & (0x80 >> (i & 7))
    )
    d.status = "queued"
    d.reason = (
        f"switched to the manifest {new.root[:12]} offered by {usable[fid]} "
        f"peer{'s' if usable[fid] != 1 else ''}: no usable peer offers {old.root[:12]} "
        f"any more ({kept} verified chunks kept)"
    )
    return d.reason

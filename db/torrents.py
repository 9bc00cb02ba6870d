"""Queries behind BitTorrent (issue 24): the files a torrent is made of, cached piece
hashes per file content, the torrents made here and what p2p-torrent should seed, and
the BitTorrent downloads it runs (queued in plain sqlite3 by `db.torrent_queue`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session

from p2pshare.db.downloads import (
    KEEPING_TEMP,
    UNFINISHED,
    AmbiguousName,
    Candidate,
    UnknownName,
    offer_peers,
)
from p2pshare.db.index import HashedFile, Stamp, record_local_files
from p2pshare.db.models import (
    BadPeer,
    Chunk,
    Download,
    File,
    LocalFile,
    Torrent,
    TorrentDownload,
    TorrentPieces,
)
from p2pshare.db.names import in_folder, matches, same_name

# Roots in the order a name found in both is taken from.
ROOTS = ("share", "download")


@dataclass(frozen=True)
class HeldFile:
    """A file this node holds, as the index saw it."""

    root: str
    name: str  # under the root, '/'-separated
    sha256: str
    stamp: Stamp


@dataclass(frozen=True)
class PiecesKey:
    sha256: str
    kind: str
    piece_size: int
    phase: int


@dataclass(frozen=True)
class TorrentRow:
    id: int
    info_hash: str
    name: str
    root: str
    format: str
    files: list[tuple[str, str]]  # (name under root, sha256)
    metainfo: bytes


def _held(session: Session) -> list[HeldFile]:
    rows = session.execute(
        select(
            LocalFile.root,
            LocalFile.name,
            File.sha256,
            LocalFile.size,
            LocalFile.mtime_ns,
            LocalFile.ctime_ns,
            LocalFile.inode,
        ).join(File, File.id == LocalFile.file_id)
    )
    return [
        HeldFile(root, name, sha, Stamp(size, mtime, ctime, inode))
        for root, name, sha, size, mtime, ctime, inode in rows
    ]


def held_files(session: Session, pattern: str) -> list[HeldFile]:
    """The files NAME means among those this node holds, as `p2pctl download` reads names:
    a folder (`album/`: every file under it, from one root), an exact name, else a
    substring or glob; NAME@SHA256PREFIX picks one content. Raises UnknownName,
    AmbiguousName (several contents; its candidates have peers=0)."""
    held = _held(session)
    if pattern.endswith("/"):
        for root in ROOTS:
            found = sorted(
                (f for f in held if f.root == root and in_folder(f.name, pattern)),
                key=lambda f: f.name,
            )
            if found:
                return found
        raise UnknownName(f"this node holds no file under {pattern!r}; see p2pctl files")
    name_part, _, sha_prefix = pattern.rpartition("@") if "@" in pattern else (pattern, "", "")
    rows = [f for f in held if f.sha256.startswith(sha_prefix.lower())]
    chosen = [f for f in rows if same_name(f.name, name_part)] or [
        f for f in rows if matches(f.name, name_part)
    ]
    if not chosen:
        raise UnknownName(f"this node holds no file matching {pattern!r}; see p2pctl files")
    by_sha: dict[str, HeldFile] = {}
    for f in sorted(chosen, key=lambda f: (ROOTS.index(f.root), f.name)):
        by_sha.setdefault(f.sha256, f)
    if len(by_sha) > 1:
        candidates = [Candidate(0, f.name, f.sha256, f.stamp.size, 0) for f in by_sha.values()]
        raise AmbiguousName(
            f"{pattern!r} matches {len(by_sha)} files; add @SHA to pick one",
            sorted(candidates, key=lambda c: (c.name, c.sha256)),
        )
    return [next(iter(by_sha.values()))]


def cached_pieces(session: Session, keys: Iterable[PiecesKey]) -> dict[PiecesKey, bytes]:
    """The cached hashes among `keys`."""
    out: dict[PiecesKey, bytes] = {}
    for key in set(keys):
        hashes = session.scalar(
            select(TorrentPieces.hashes).where(
                TorrentPieces.sha256 == key.sha256,
                TorrentPieces.kind == key.kind,
                TorrentPieces.piece_size == key.piece_size,
                TorrentPieces.phase == key.phase,
            )
        )
        if hashes is not None:
            out[key] = bytes(hashes)
    return out


def store_pieces(session: Session, computed: dict[PiecesKey, bytes], *, now: float) -> None:
    """Cache hashes computed for file contents (a concurrent maker's equal row stays)."""
    for key, hashes in computed.items():
        session.execute(
            insert(TorrentPieces)
            .values(
                sha256=key.sha256,
                kind=key.kind,
                piece_size=key.piece_size,
                phase=key.phase,
                hashes=hashes,
                computed_at=now,
            )
            .on_conflict_do_nothing()
        )


def drop_unused_pieces(session: Session) -> int:
    """Forget hashes of contents this node no longer holds (the file changed or went)."""
    held = select(File.sha256).join(LocalFile, LocalFile.file_id == File.id)
    result = session.execute(delete(TorrentPieces).where(TorrentPieces.sha256.not_in(held)))
    return int(result.rowcount)  # type: ignore[attr-defined]


def record_torrent(
    session: Session,
    *,
    info_hash: str,
    name: str,
    root: str,
    format: str,
    files: list[tuple[str, str]],
    metainfo: bytes,
    now: float,
) -> int:
    """Remember a torrent made here (the same info-hash again replaces it); returns its id."""
    row = session.scalar(select(Torrent).where(Torrent.info_hash == info_hash))
    if row is None:
        row = Torrent(info_hash=info_hash)
        session.add(row)
    row.name, row.root, row.format = name, root, format
    row.files, row.metainfo, row.created_at = json.dumps(files), metainfo, now
    session.flush()
    return row.id


def torrents(session: Session) -> list[TorrentRow]:
    """Every torrent made here."""
    return [
        TorrentRow(
            t.id,
            t.info_hash,
            t.name,
            t.root,
            t.format,
            [(n, s) for n, s in json.loads(t.files)],
            bytes(t.metainfo),
        )
        for t in session.scalars(select(Torrent).order_by(Torrent.id))
    ]


def held_by_name(session: Session) -> dict[tuple[str, str], HeldFile]:
    """Every file this node holds, by (root, name)."""
    return {(f.root, f.name): f for f in _held(session)}


# ------------------------------------------------------------ downloads p2p-torrent runs


@dataclass(frozen=True)
class TorrentJob:
    """A BitTorrent download as p2p-torrent sees it."""

    download_id: int
    status: str
    name: str
    size: int
    info_hash: str
    magnet: str | None
    metainfo: bytes | None
    peers: list[str]


def torrent_jobs(session: Session) -> list[TorrentJob]:
    """BitTorrent downloads that keep their temp folder (unfinished or paused), oldest first."""
    rows = session.execute(
        select(Download, TorrentDownload)
        .join(TorrentDownload, TorrentDownload.download_id == Download.id)
        .where(Download.status.in_(KEEPING_TEMP))
        .order_by(Download.id)
    )
    return [
        TorrentJob(
            d.id,
            d.status,
            d.name,
            d.size,
            t.info_hash,
            t.magnet,
            None if t.metainfo is None else bytes(t.metainfo),
            list(json.loads(t.peers)),
        )
        for d, t in rows
    ]


def start_torrent_job(session: Session, download_id: int, temp_path: str, *, now: float) -> None:
    """p2p-torrent took the download: where it fetches into, and since when."""
    d = session.get(Download, download_id)
    if d is None or d.status not in UNFINISHED:
        return
    d.temp_path = temp_path
    d.status = "active"
    if d.started_at is None:
        d.started_at = now


def record_torrent_metadata(
    session: Session,
    download_id: int,
    *,
    name: str,
    size: int,
    files: int,
    piece_size: int,
    metainfo: bytes | None,
) -> None:
    """What a torrent holds, once known (a magnet's metadata arrived from peers)."""
    d = session.get(Download, download_id)
    t = session.get(TorrentDownload, download_id)
    if d is None or t is None:
        return
    d.name, d.size = name, size
    t.files, t.piece_size = files, piece_size
    if metainfo is not None:
        t.metainfo = metainfo


def finish_torrent_job(
    session: Session,
    download_id: int,
    *,
    status: str,
    reason: str | None,
    now: float,
    saved_as: str | None = None,
    published: Sequence[tuple[str, HashedFile]] = (),
) -> None:
    """End a BitTorrent download: done (its files indexed in the download folder, so the
    node shares them; a one-file torrent's row then points at its content), failed or
    cancelled. A cancel that came first stays, unless the files were already published."""
    d = session.get(Download, download_id)
    if d is None:
        return
    if d.status not in UNFINISHED and status != "done":
        return
    d.status, d.reason, d.finished_at, d.temp_path = status, reason, now, None
    if status != "done":
        return
    d.saved_as, d.bytes_done = saved_as, d.size
    ids = record_local_files(session, "download", list(published), now=now)
    if len(published) == 1:
        hashed = published[0][1]
        d.file_id, d.sha256 = ids[hashed.key], hashed.sha256


# ------------------------------------------------------------ p2pshare peers holding its files


@dataclass(frozen=True)
class LanOffer:
    """A content p2pshare peers offer, with what a verified download of it needs."""

    file_id: int
    sha256: str
    size: int
    chunk_size: int
    root: str  # the manifest's root
    entries: list[str]  # per chunk, the SHA-256 chaining state after it (hex)
    peers: int  # live peers offering it, not counting bad ones


def lan_offer(session: Session, sha256: str, size: int) -> LanOffer | None:
    """The offer of this content (SHA-256 and size) that most p2pshare peers make, not
    counting peers marked bad for it, among those whose manifest is known here; None when
    no peer offers it."""
    offers = offer_peers(session, {sha256})[sha256]
    for fid, peers in sorted(offers.items(), key=lambda kv: (-kv[1], kv[0])):
        f = session.get(File, fid)
        if peers == 0 or f is None or f.size != size:
            continue
        entries = list(
            session.scalars(
                select(Chunk.sha256).where(Chunk.file_id == fid).order_by(Chunk.chunk_index)
            )
        )
        if len(entries) == f.chunk_count:
            return LanOffer(fid, f.sha256, f.size, f.chunk_size, f.root, entries, peers)
    return None


def lan_unhashed(session: Session, wanted: Iterable[tuple[str, int]]) -> set[int]:
    """The offers of these contents (SHA-256, size) that live peers make but whose manifest
    is not here yet (manifests come when a download needs one): fetch these first."""
    lacking: set[int] = set()
    shas = {sha for sha, _ in wanted}
    sizes = dict(wanted)
    for sha, offers in offer_peers(session, shas).items():
        for fid, peers in offers.items():
            f = session.get(File, fid)
            if peers == 0 or f is None or f.size != sizes[sha] or f.chunk_count == 0:
                continue
            if session.scalar(select(Chunk.file_id).where(Chunk.file_id == fid).limit(1)) is None:
                lacking.add(fid)
    return lacking


def lan_offers(session: Session, wanted: Iterable[tuple[str, int]]) -> dict[str, LanOffer]:
    """lan_offer for each (SHA-256, size), by SHA-256; contents no peer offers left out."""
    out = {}
    for sha256, size in set(wanted):
        offer = lan_offer(session, sha256, size)
        if offer is not None:
            out[sha256] = offer
    return out


def record_torrent_source(session: Session, download_id: int, note: str) -> bytes:
    """Say on an unfinished BitTorrent download where it is being fetched from (its
    `reason`, which p2pctl download, status and history show); returns its `have`."""
    d = session.get(Download, download_id)
    if d is None:
        return b""
    if d.status in UNFINISHED:
        d.reason = note
    return bytes(d.have)


def mark_lan_bad(
    session: Session, file_id: int, peers: Sequence[tuple[str, int]], *, now: float
) -> None:
    """Peers whose chunk of this offer failed verification while a torrent's file was
    fetched from them: avoided for it, as a plain download records them."""
    for address, port in peers:
        bad = session.scalar(
            select(BadPeer).where(
                BadPeer.address == address, BadPeer.tcp_port == port, BadPeer.file_id == file_id
            )
        )
        if bad is None:
            session.add(
                BadPeer(address=address, tcp_port=port, file_id=file_id, bad_chunks=1,
                        marked_at=now)
            )  # fmt: skip
        else:
            bad.bad_chunks += 1
            bad.marked_at = now

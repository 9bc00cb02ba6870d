"""Queries behind BitTorrent: the files a torrent is made of, cached piece
hashes per file content, the torrents made here and what p2p-torrent should seed, and
the BitTorrent downloads it runs (queued in plain sqlite3 by `db.torrent_queue`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, delete, func, select, update
from sqlalchemy.dialects.sqlite import insert

from .downloads import AmbiguousName, Candidate, UnknownName, offer_peers
from .index import HashedFile, Stamp, record_local_files
from .jobs import entries
from .names import in_folder, matches, same_name
from .schema import (
    downloads,
    files,
    local_files,
    torrent_downloads,
    torrent_pieces,
)
from .schema import (
    torrents as torrents_table,
)
from .sources import mark_bad
from .status import KEEPING_TEMP, UNFINISHED, Status

lf, f, d, td, tp = (
    local_files.c, files.c, downloads.c, torrent_downloads.c, torrent_pieces.c
)  # fmt: skip

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


def _held(conn: Connection) -> list[HeldFile]:
    rows = conn.execute(
        select(
            lf.root,
            lf.name,
            f.sha256,
            lf.size,
            lf.mtime_ns,
            lf.ctime_ns,
            lf.inode,
        ).join(files, f.id == lf.file_id)
    )
    return [
        HeldFile(root, name, sha, Stamp(size, mtime, ctime, inode))
        for root, name, sha, size, mtime, ctime, inode in rows
    ]


def held_files(conn: Connection, pattern: str) -> list[HeldFile]:
    """The files NAME means among those this node holds, as `p2pctl download` reads names:
    a folder (`album/`: every file under it, from one root), an exact name, else a
    substring or glob; NAME@SHA256PREFIX picks one content. Raises UnknownName,
    AmbiguousName (several contents; its candidates have peers=0)."""
    held = _held(conn)
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


def cached_pieces(conn: Connection, keys: Iterable[PiecesKey]) -> dict[PiecesKey, bytes]:
    """The cached hashes among `keys`."""
    out: dict[PiecesKey, bytes] = {}
    for key in set(keys):
        hashes = conn.scalar(
            select(tp.hashes).where(
                tp.sha256 == key.sha256,
                tp.kind == key.kind,
                tp.piece_size == key.piece_size,
                tp.phase == key.phase,
            )
        )
        if hashes is not None:
            out[key] = bytes(hashes)
    return out


def store_pieces(conn: Connection, computed: dict[PiecesKey, bytes], *, now: float) -> None:
    """Cache hashes computed for file contents (a concurrent maker's equal row stays)."""
    for key, hashes in computed.items():
        conn.execute(
            insert(torrent_pieces)
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


def drop_unused_pieces(conn: Connection) -> int:
    """Forget hashes of contents this node no longer holds (the file changed or went)."""
    held = select(f.sha256).join(local_files, lf.file_id == f.id)
    result = conn.execute(delete(torrent_pieces).where(tp.sha256.not_in(held)))
    return int(result.rowcount)


def record_torrent(
    conn: Connection,
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
    values = {
        "name": name, "root": root, "format": format, "files": json.dumps(files),
        "metainfo": metainfo, "created_at": now,
    }  # fmt: skip
    conn.execute(
        insert(torrents_table)
        .values(info_hash=info_hash, **values)
        .on_conflict_do_update(index_elements=[torrents_table.c.info_hash], set_=values)
    )
    t = torrents_table.c
    return int(conn.execute(select(t.id).where(t.info_hash == info_hash)).scalar_one())


def torrents(conn: Connection) -> list[TorrentRow]:
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
        for t in conn.execute(select(torrents_table).order_by(torrents_table.c.id))
    ]


def held_by_name(conn: Connection) -> dict[tuple[str, str], HeldFile]:
    """Every file this node holds, by (root, name)."""
    return {(f.root, f.name): f for f in _held(conn)}


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


def torrent_jobs(conn: Connection) -> list[TorrentJob]:
    """BitTorrent downloads that keep their temp folder (unfinished or paused), oldest first."""
    rows = conn.execute(
        select(d.id, d.status, d.name, d.size, td.info_hash, td.magnet, td.metainfo, td.peers)
        .join(torrent_downloads, td.download_id == d.id)
        .where(d.status.in_(KEEPING_TEMP))
        .order_by(d.id)
    )
    return [
        TorrentJob(
            did, status, name, size, info_hash, magnet,
            None if metainfo is None else bytes(metainfo), list(json.loads(peers)),
        )
        for did, status, name, size, info_hash, magnet, metainfo, peers in rows
    ]  # fmt: skip


def _unfinished(download_id: int) -> ColumnElement[bool]:
    return (d.id == download_id) & d.status.in_(UNFINISHED)


def start_torrent_job(conn: Connection, download_id: int, temp_path: str, *, now: float) -> None:
    """p2p-torrent took the download: where it fetches into, and since when."""
    conn.execute(
        update(downloads)
        .where(_unfinished(download_id))
        .values(
            temp_path=temp_path,
            status=Status.ACTIVE,
            started_at=func.coalesce(d.started_at, now),
        )
    )


def record_torrent_metadata(
    conn: Connection,
    download_id: int,
    *,
    name: str,
    size: int,
    files: int,
    piece_size: int,
    metainfo: bytes | None,
) -> None:
    """What a torrent holds, once known (a magnet's metadata arrived from peers)."""
    found = conn.scalar(select(td.download_id).where(td.download_id == download_id))
    if found is None:
        return
    conn.execute(update(downloads).where(d.id == download_id).values(name=name, size=size))
    values: dict[str, object] = {"files": files, "piece_size": piece_size}
    if metainfo is not None:
        values["metainfo"] = metainfo
    conn.execute(update(torrent_downloads).where(td.download_id == download_id).values(values))


def finish_torrent_job(
    conn: Connection,
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
    ending = update(downloads).where(d.id == download_id)
    if status != Status.DONE:
        ending = ending.where(d.status.in_(UNFINISHED))
    values: dict[str, object] = {
        "status": status, "reason": reason, "finished_at": now, "temp_path": None
    }  # fmt: skip
    if status == Status.DONE:
        values.update(saved_as=saved_as, bytes_done=d.size)
    if conn.execute(ending.values(values)).rowcount == 0 or status != Status.DONE:
        return
    ids = record_local_files(conn, "download", list(published), now=now)
    if len(published) == 1:
        hashed = published[0][1]
        conn.execute(
            update(downloads)
            .where(d.id == download_id)
            .values(file_id=ids[hashed.key], sha256=hashed.sha256)
        )


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


def lan_offer(conn: Connection, sha256: str, size: int) -> LanOffer | None:
    """The offer of this content (SHA-256 and size) that most p2pshare peers make, not
    counting peers marked bad for it, among those whose manifest is known here; None when
    no peer offers it."""
    offers = offer_peers(conn, {sha256})[sha256]
    for fid, peers in sorted(offers.items(), key=lambda kv: (-kv[1], kv[0])):
        row = _file(conn, fid)
        if peers == 0 or row is None or row.size != size:
            continue
        hashes = entries(conn, fid)
        if len(hashes) == row.chunk_count:
            return LanOffer(fid, row.sha256, row.size, row.chunk_size, row.root, hashes, peers)
    return None


def _file(conn: Connection, file_id: int) -> Row[Any] | None:
    return conn.execute(select(files).where(f.id == file_id)).first()


def lan_unhashed(conn: Connection, wanted: Iterable[tuple[str, int]]) -> set[int]:
    """The offers of these contents (SHA-256, size) that live peers make but whose manifest
    is not here yet (manifests come when a download needs one): fetch these first."""
    lacking: set[int] = set()
    shas = {sha for sha, _ in wanted}
    sizes = dict(wanted)
    for sha, offers in offer_peers(conn, shas).items():
        for fid, peers in offers.items():
            row = _file(conn, fid)
            if peers == 0 or row is None or row.size != sizes[sha] or row.chunk_count == 0:
                continue
            if not entries(conn, fid):
                lacking.add(fid)
    return lacking


def lan_offers(conn: Connection, wanted: Iterable[tuple[str, int]]) -> dict[str, LanOffer]:
    """lan_offer for each (SHA-256, size), by SHA-256; contents no peer offers left out."""
    out = {}
    for sha256, size in set(wanted):
        offer = lan_offer(conn, sha256, size)
        if offer is not None:
            out[sha256] = offer
    return out


def record_torrent_source(conn: Connection, download_id: int, note: str) -> bytes:
    """Say on an unfinished BitTorrent download where it is being fetched from (its
    `reason`, which p2pctl download, status and history show); returns its `have`."""
    have = conn.scalar(select(d.have).where(d.id == download_id))
    if have is None:
        return b""
    conn.execute(update(downloads).where(_unfinished(download_id)).values(reason=note))
    return bytes(have)


def mark_lan_bad(
    conn: Connection, file_id: int, peers: Sequence[tuple[str, int]], *, now: float
) -> None:
    """Peers whose chunk of this offer failed verification while a torrent's file was
    fetched from them: avoided for it, as a plain download records them."""
    mark_bad(conn, [(file_id, address, port) for address, port in peers], now=now)

"""Queries behind BitTorrent (issue 24): the files a torrent is made of, cached piece
hashes per file content, the torrents made here and what p2p-torrent should seed."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session

from p2pshare.db.downloads import AmbiguousName, Candidate, UnknownName
from p2pshare.db.index import Stamp
from p2pshare.db.models import File, LocalFile, Torrent, TorrentPieces
from p2pshare.db.reports import matches

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
                (f for f in held if f.root == root and f.name.startswith(pattern)),
                key=lambda f: f.name,
            )
            if found:
                return found
        raise UnknownName(f"this node holds no file under {pattern!r}; see p2pctl files")
    name_part, _, sha_prefix = pattern.rpartition("@") if "@" in pattern else (pattern, "", "")
    rows = [f for f in held if f.sha256.startswith(sha_prefix.lower())]
    chosen = [f for f in rows if f.name == name_part] or [
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

"""`p2pctl torrent`: a .torrent and magnet link for files this node holds.

v1 by default: aria2c 1.36 refuses a hybrid v1+v2 torrent made by libtorrent 2.1
("invalid info-hash") and a v2 one ("Missing pieces"), and a v1 torrent with BEP 47
pad files never finishes there, so the v1 default has no padding and its pieces
straddle a folder's files. The SHA-1 of the pieces lying inside one file depend only on
its content, the piece size and where its first whole piece starts, so they are cached
per content (`torrent_pieces`); the few straddling pieces are hashed each time from at
most a piece of each neighbour. v2 and hybrid (options) are hashed by libtorrent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType

from p2pshare.db import node as dbnode
from p2pshare.db import torrents as dbt
from p2pshare.db.engine import Database
from p2pshare.db.values import Stamp
from p2pshare.services.settings import Settings
from p2pshare.services.torrent import NOT_INSTALLED, hints, load_libtorrent
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.torrent.pieces import inner_pieces, piece_at

FORMATS = ("v1", "v2", "hybrid")
SHA1 = "sha1"


class TorrentRefused(Exception):
    """A torrent cannot be made; the message is one sentence for the user."""


@dataclass(frozen=True)
class Made:
    path: Path  # the .torrent written
    info_hash: str
    magnet: str
    name: str
    root: str
    files: int
    size: int
    piece_size: int
    format: str
    hashed_bytes: int  # bytes hashed now; 0 when every whole piece came from the cache


@dataclass(frozen=True)
class Layout:
    """Where a torrent's files are: its name, the folder libtorrent saves to, its files."""

    name: str
    save_dir: Path
    held: list[dbt.HeldFile]
    paths: list[Path]  # each file on disk
    inner: list[tuple[str, ...]]  # each file's path below the torrent's name


def layout(settings: Settings, pattern: str, held: list[dbt.HeldFile]) -> Layout:
    root_dir = settings.share_dir if held[0].root == "share" else settings.download_dir
    if pattern.endswith("/"):
        folder = PurePosixPath(pattern.rstrip("/"))
        inner = [tuple(PurePosixPath(f.name).relative_to(folder).parts) for f in held]
        name, parent = folder.name, folder.parent
    else:
        only = PurePosixPath(held[0].name)
        inner, name, parent = [()], only.name, only.parent
    paths = [root_dir / f.name for f in held]
    return Layout(name, root_dir / str(parent), held, paths, inner)


def check_unchanged(lay: Layout) -> None:
    """Each file is still what the index hashed. Raises TorrentRefused."""
    for f, path in zip(lay.held, lay.paths, strict=True):
        try:
            stamp = Stamp.of(os.stat(path))
        except OSError:
            stamp = None
        if stamp != f.stamp:
            raise TorrentRefused(
                f"{f.name} changed since the node indexed it; try again when p2pctl files "
                "shows it again"
            )


def piece_size_for(lt: ModuleType, lay: Layout, fmt: str) -> int:
    """The piece size libtorrent chooses for these files and format."""
    flags = {"v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only, "hybrid": 0}[fmt]
    return int(lt.create_torrent(entries(lt, lay), 0, flags).piece_length())


def entries(lt: ModuleType, lay: Layout) -> list[object]:
    return [
        lt.create_file_entry("/".join((lay.name, *inner)), f.stamp.size)
        for f, inner in zip(lay.held, lay.inner, strict=True)
    ]


def v1_pieces(database: Database, lay: Layout, piece_size: int, *, now: float) -> tuple[bytes, int]:
    """The torrent's SHA-1 pieces, whole pieces from the cache where it has them; returns
    them and the bytes hashed now. Raises OSError."""
    sizes = [f.stamp.size for f in lay.held]
    planned = mi.plan(sizes, piece_size)
    keys = [
        dbt.PiecesKey(f.sha256, SHA1, piece_size, p.phase)
        for f, p in zip(lay.held, planned, strict=True)
    ]
    with database.read() as s:
        cached = dbt.cached_pieces(s, [k for k, p in zip(keys, planned, strict=True) if p.inner])
    computed: dict[dbt.PiecesKey, bytes] = {}
    hashed = 0
    for key, p, path in zip(keys, planned, lay.paths, strict=True):
        if p.inner and key not in cached and key not in computed:
            computed[key] = inner_pieces(path, p.phase, p.inner, piece_size)
            hashed += p.inner * piece_size
    if computed:
        with database.write() as s:
            dbt.store_pieces(s, computed, now=now)
    known = {**cached, **computed}
    total = sum(sizes)
    pieces = bytearray(mi.piece_count(total, piece_size) * mi.SHA1_SIZE)
    for key, p in zip(keys, planned, strict=True):
        if p.inner:
            at = p.first_piece * mi.SHA1_SIZE
            pieces[at : at + p.inner * mi.SHA1_SIZE] = known[key]
    for index in mi.straddling(planned, total, piece_size):
        at = index * mi.SHA1_SIZE
        pieces[at : at + mi.SHA1_SIZE] = piece_at(lay.paths, planned, index, piece_size, total)
        hashed += min(piece_size, total - index * piece_size)
    return bytes(pieces), hashed


def make_torrent(
    settings: Settings,
    database: Database,
    pattern: str,
    *,
    fmt: str = "v1",
    trackers: Sequence[str] = (),
    out: Path | None = None,
) -> Made:
    """Write a .torrent for the files NAME means and remember it for p2p-torrent to seed.

    Raises TorrentRefused, db.downloads.UnknownName, AmbiguousName."""
    lt = load_libtorrent()
    if lt is None:
        raise TorrentRefused(NOT_INSTALLED)
    now = time.time()
    with database.read() as s:
        held = dbt.held_files(s, pattern)
        recorded = dbnode.role_settings(s).get("torrent", {})
    lay = layout(settings, pattern, held)
    total = sum(f.stamp.size for f in held)
    if total == 0:
        raise TorrentRefused(f"{pattern} is empty, and BitTorrent cannot share nothing")
    check_unchanged(lay)
    piece_size = piece_size_for(lt, lay, fmt)
    try:
        if fmt == "v1":
            meta, btih, hashed = _make_v1(database, lay, piece_size, trackers, now=now)
        else:
            meta, btih = _make_v2(lt, lay, fmt, trackers)
            hashed = total
    except OSError as exc:
        raise TorrentRefused(f"cannot read {pattern}: {exc.strerror or exc}") from None
    check_unchanged(lay)  # nothing was rewritten while we hashed it
    path = write_file(out or settings.home / "torrents" / f"{lay.name}.torrent", meta)
    with database.write() as s:
        dbt.record_torrent(
            s,
            info_hash=btih,
            name=pattern,
            root=held[0].root,
            format=fmt,
            files=[(f.name, f.sha256) for f in held],
            metainfo=meta,
            now=now,
        )
        dbt.drop_unused_pieces(s)
    one = held[0] if fmt == "v1" and len(held) == 1 and not lay.inner[0] else None
    extra = hints.magnet_params(one.sha256, total, piece_size) if one else []
    link = magnet_for(lt, meta, fmt, trackers, peer_address(recorded), extra)
    return Made(path, btih, link, lay.name, held[0].root, len(held), total, piece_size, fmt, hashed)


def _make_v1(
    database: Database, lay: Layout, piece_size: int, trackers: Sequence[str], *, now: float
) -> tuple[bytes, str, int]:
    pieces, hashed = v1_pieces(database, lay, piece_size, now=now)
    files = [
        mi.TorrentFile(inner, f.stamp.size) for f, inner in zip(lay.held, lay.inner, strict=True)
    ]
    info = mi.info_dict(lay.name, files, piece_size, pieces)
    # Each file's SHA-256, outside `info` (hints.py): a node fetching this takes from a
    # p2pshare peer on its LAN what one holds; stock clients ignore the key.
    hint = {hints.HINT_KEY: hints.torrent_value([f.sha256 for f in lay.held])}
    meta = mi.metainfo(
        info, trackers=trackers, created_by="p2pshare", created_at=int(time.time()), extra=hint
    )
    return meta, mi.info_hash(info), hashed


def _make_v2(lt: ModuleType, lay: Layout, fmt: str, trackers: Sequence[str]) -> tuple[bytes, str]:
    flags = lt.create_torrent.v2_only if fmt == "v2" else 0
    ct = lt.create_torrent(entries(lt, lay), 0, flags)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    ct.set_creator("p2pshare")
    lt.set_piece_hashes(ct, str(lay.save_dir))
    meta = bytes(lt.bencode(ct.generate()))
    hashes = lt.torrent_info(lt.bdecode(meta)).info_hashes()
    btih = str(hashes.v2 if fmt == "v2" else hashes.v1)
    return meta, btih


def magnet_for(
    lt: ModuleType,
    meta: bytes,
    fmt: str,
    trackers: Sequence[str],
    peer: str | None,
    extra: Sequence[str] = (),
) -> str:
    """The magnet link; `extra`: a one-file v1 torrent's SHA-256 hint (hints.py)."""
    info = lt.torrent_info(lt.bdecode(meta))
    if fmt == "v1":
        return mi.magnet(str(info.info_hashes().v1), info.name(), trackers=trackers,
                         peers=[peer] if peer else [], extra=extra)  # fmt: skip
    link = str(lt.make_magnet_uri(info))
    return f"{link}&x.pe={peer}" if peer else link


def peer_address(recorded: dict[str, str]) -> str | None:
    """This node's BitTorrent address as p2p-torrent recorded it, when it is a real one."""
    bind, port = recorded.get("bind"), recorded.get("port")
    if not bind or not port or bind == "0.0.0.0" or not port.isdigit():
        return None
    return f"{bind}:{port}"


def write_file(path: Path, data: bytes) -> Path:
    """Write atomically (a temp file renamed into place). Raises TorrentRefused."""
    path = path.expanduser().absolute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TorrentRefused(f"cannot write {path}: {exc.strerror or exc}") from None
    return path

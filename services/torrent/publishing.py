"""A finished torrent's files, from its folder in the partial area into the download
folder, each as any download is published (at its name or a numbered one, never over a
file, never outside the folder), then indexed so the node shares them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from p2pshare.db import torrents as dbt
from p2pshare.db.values import HashedFile, Stamp
from p2pshare.services.downloader.publish import numbered, publish, safe_destination
from p2pshare.services.hashing.files import FileChanged, hash_file
from p2pshare.services.settings import Settings, chunk_size_for
from p2pshare.services.torrent import metainfo as mi

log = logging.getLogger("p2p.torrent")

# A torrent download's folder in the partial area: $P2P_HOME/temp/torrent-ID.
TEMP_PREFIX = "torrent-"

# A published file whose stamp moved while it was hashed for the index (hash_settled).
HASH_ATTEMPTS = 3
SETTLE_SECONDS = 0.5


class TorrentFailed(Exception):
    """A download that cannot go on; the message is the reason the user reads."""


def temp_folder(settings: Settings, download_id: int) -> Path:
    return settings.temp_dir / f"{TEMP_PREFIX}{download_id}"


def publish_tree(
    settings: Settings,
    temp: Path,
    files: list[tuple[PurePosixPath, int]],
    proven: Mapping[PurePosixPath, dbt.LanOffer] | None = None,
) -> tuple[str, list[tuple[str, HashedFile]]]:
    """Each file of temp (its path in the torrent, its size) into the download folder, at
    its name or a numbered one, then hashed for the index; returns what the download is
    saved as and each file's name there with its manifest. A file in `proven` arrived
    from p2pshare peers with every chunk verified against that offer's manifest, which
    proves its SHA-256: it is indexed under that manifest, not read again.

    Each is published through a second hard link, so temp keeps every file until the end:
    asked again after a crash half-way, a file already linked into the folder is found
    there (the same inode) rather than fetched and published a second time as "x (1)".
    Raises PublishError, OSError, TorrentFailed, FileChanged."""
    root = settings.download_dir.resolve()
    checked: dict[str, Path] = {}
    out: list[tuple[str, HashedFile]] = []
    for rel, size in files:
        try:
            for part in rel.parts:
                mi.safe_part(part, "file path")
        except mi.MetainfoError as exc:
            raise TorrentFailed(f"the torrent is refused: {exc}") from None
        src = temp / Path(*rel.parts)
        if not src.exists() and size == 0:
            src.parent.mkdir(parents=True, exist_ok=True)
            src.touch()  # libtorrent writes no empty file
        if src.stat().st_size != size:
            raise TorrentFailed(f"{rel} is not the size the torrent says")
        dest = safe_destination(settings.download_dir, str(rel), checked=checked)
        final = published_before(src, dest)
        if final is None:
            with open(src, "rb+") as fh:
                os.fsync(fh.fileno())
            link = src.with_name(f".{src.name}.p2p-publish")
            link.unlink(missing_ok=True)
            os.link(src, link)
            final = publish(link, dest, lambda _path: None)
        offer = (proven or {}).get(rel)
        if offer is not None and offer.size == os.stat(final).st_size:
            hashed = manifest_of(offer, Stamp.of(os.stat(final)))
        else:
            hashed = hash_settled(final, settings)
        out.append((final.relative_to(root).as_posix(), hashed))
    if not out:
        raise TorrentFailed("the torrent holds no file")
    if len(out) == 1 and "/" not in out[0][0]:
        return out[0][0], out
    return f"{PurePosixPath(out[0][0]).parts[0]}/", out


def hash_settled(path: Path, settings: Settings) -> HashedFile:
    """The file's manifest for the index, hashed again if its stamp moved meanwhile:
    libtorrent releases a removed torrent's files in its own time, and may close or
    truncate one late, moving its stamp after it was published. Raises FileChanged (still
    moving), OSError."""
    for attempt in range(HASH_ATTEMPTS):
        stamp = Stamp.of(os.stat(path))
        try:
            return hash_file(path, chunk_size_for(stamp.size, settings.chunk_size), expect=stamp)
        except FileChanged:
            if attempt == HASH_ATTEMPTS - 1:
                raise
            log.info("%s changed while hashed for the index; hashing it again", path.name)
            time.sleep(SETTLE_SECONDS)
    raise AssertionError("unreachable")


def manifest_of(offer: dbt.LanOffer, stamp: Stamp) -> HashedFile:
    """The index entry of a file verified chunk by chunk against this offer's manifest."""
    size, cs = offer.size, offer.chunk_size
    sizes = [min(cs, size - i * cs) for i in range(len(offer.entries))]
    return HashedFile(stamp.size, stamp.mtime_ns, offer.sha256, cs, offer.entries, sizes,
                      offer.root, ctime_ns=stamp.ctime_ns, inode=stamp.inode)  # fmt: skip


def published_before(src: Path, dest: Path) -> Path | None:
    """The name among dest's numbered ones that is src itself (linked before a crash)."""
    for candidate in numbered(dest):
        try:
            if os.path.samefile(candidate, src):
                return candidate
        except FileNotFoundError:
            return None  # names are taken in order: past the first free one, none is it
    return None

"""The BitTorrent v1 metainfo this node writes: bencode, piece plans, info dictionaries,
magnet links. Pure code: no libtorrent, disk, database or clock (BEP 3, BEP 9).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

SHA1_SIZE = 20

Bencodable = int | bytes | str | list["Bencodable"] | dict[str, "Bencodable"]


class MetainfoError(Exception):
    """Bytes that are not the bencoded metainfo we accept."""


def bencode(value: Bencodable) -> bytes:
    """BEP 3 encoding; dictionary keys sorted as raw bytes, as the spec requires."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Bencodable, out: list[bytes]) -> None:
    if isinstance(value, bool):  # a bool is an int to Python, never to us
        raise TypeError("bencode takes no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        out.append(b"%d:%s" % (len(raw), raw))
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        for key in sorted(value, key=str.encode):
            _encode(key, out)
            _encode(value[key], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


@dataclass(frozen=True)
class PlannedFile:
    """One file of a torrent: where it sits in the torrent's byte stream, and which whole
    pieces lie inside it (those are cached per content; the others straddle files)."""

    offset: int  # first byte within the torrent
    size: int
    phase: int  # bytes into the file where its first whole piece starts
    first_piece: int  # index of that piece
    inner: int  # whole pieces lying entirely inside the file


def plan(sizes: Sequence[int], piece_size: int) -> list[PlannedFile]:
    """Where each file's whole pieces lie, for files laid end to end (BEP 3, no padding)."""
    out, offset = [], 0
    for size in sizes:
        first = -(-offset // piece_size)  # the first piece starting at or after the file
        phase = first * piece_size - offset
        inner = max(0, (size - phase) // piece_size) if phase < size else 0
        out.append(PlannedFile(offset, size, phase, first, inner))
        offset += size
    return out


def piece_count(total: int, piece_size: int) -> int:
    return -(-total // piece_size)


def straddling(files: Sequence[PlannedFile], total: int, piece_size: int) -> list[int]:
    """Indexes of the pieces no single file's whole pieces cover: the ones that span a
    boundary between files, and the short last piece."""
    covered = bytearray(piece_count(total, piece_size))
    for f in files:
        covered[f.first_piece : f.first_piece + f.inner] = b"\x01" * f.inner
    return [i for i, c in enumerate(covered) if not c]


@dataclass(frozen=True)
class TorrentFile:
    path: tuple[str, ...]  # within the torrent, below its name (empty for a one-file torrent)
    size: int


def info_dict(
    name: str, files: Sequence[TorrentFile], piece_size: int, pieces: bytes
) -> dict[str, Bencodable]:
    """The v1 info dictionary: one file (`length`) or several (`files`, in the given order)."""
    if len(pieces) % SHA1_SIZE:
        raise ValueError("pieces must be whole SHA-1 digests")
    info: dict[str, Bencodable] = {"name": name, "piece length": piece_size, "pieces": pieces}
    if len(files) == 1 and not files[0].path:
        info["length"] = files[0].size
    else:
        info["files"] = [{"length": f.size, "path": list(f.path)} for f in files]
    return info


def metainfo(
    info: dict[str, Bencodable], *, trackers: Sequence[str], created_by: str, created_at: int
) -> bytes:
    """The .torrent file's bytes."""
    top: dict[str, Bencodable] = {
        "info": info,
        "created by": created_by,
        "creation date": created_at,
    }
    if trackers:
        top["announce"] = trackers[0]
        if len(trackers) > 1:
            top["announce-list"] = [[t] for t in trackers]
    return bencode(top)


def info_hash(info: dict[str, Bencodable]) -> str:
    """The v1 info-hash, hex: SHA-1 of the bencoded info dictionary."""
    return hashlib.sha1(bencode(info)).hexdigest()


def magnet(btih: str, name: str, *, trackers: Sequence[str] = (), peers: Sequence[str] = ()) -> str:
    """A BEP 9 magnet link: info-hash, display name, trackers and peer addresses (x.pe)."""
    parts = [f"xt=urn:btih:{btih}", f"dn={quote(name, safe='')}"]
    parts += [f"tr={quote(t, safe='')}" for t in trackers]
    parts += [f"x.pe={p}" for p in peers]
    return "magnet:?" + "&".join(parts)

"""The BitTorrent v1 metainfo this node writes (bencode, piece plans, info dictionaries,
magnet links), and the checks of what a user brings to `p2pctl download` (bdecode, a
.torrent's name and paths, magnet links). Pure code: no libtorrent, disk, database or
clock (BEP 3, BEP 9, BEP 52).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

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
    info: dict[str, Bencodable],
    *,
    trackers: Sequence[str],
    created_by: str,
    created_at: int,
    extra: dict[str, Bencodable] | None = None,
) -> bytes:
    """The .torrent file's bytes; `extra`: top-level keys beside `info` (outside it, so
    the info-hash is the same with or without them)."""
    top: dict[str, Bencodable] = {
        **(extra or {}),
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


def magnet(
    btih: str,
    name: str,
    *,
    trackers: Sequence[str] = (),
    peers: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> str:
    """A BEP 9 magnet link: info-hash, display name, trackers, peer addresses (x.pe) and
    `extra` parameters as given (key=value)."""
    parts = [f"xt=urn:btih:{btih}", f"dn={quote(name, safe='')}"]
    parts += [f"tr={quote(t, safe='')}" for t in trackers]
    parts += [f"x.pe={p}" for p in peers]
    parts += list(extra)
    return "magnet:?" + "&".join(parts)


# ------------------------------------------------------------ reading what users bring

# A .torrent larger than this is refused unread: the metainfo of a terabyte in 16 KiB
# pieces is 1.3 GB of hashes, and nothing this node makes comes near (a GiB: 80 KB).
MAX_METAINFO = 64 * 1024 * 1024
MAX_DEPTH = 64


def bdecode(data: bytes) -> tuple[Bencodable, dict[str, tuple[int, int]]]:
    """Decode one bencoded value that is all of `data`; also returns where each key of a
    top-level dictionary's value lies ((start, end) of its bytes), for hashing `info` as
    it was written. Raises MetainfoError."""
    spans: dict[str, tuple[int, int]] = {}
    try:
        value, end = _decode(data, 0, 0, spans)
    except (IndexError, ValueError, RecursionError) as exc:
        raise MetainfoError(f"not bencoded data ({exc})") from None
    if end != len(data):
        raise MetainfoError("not bencoded data (bytes after the end)")
    return value, spans


def _decode(
    data: bytes, at: int, depth: int, spans: dict[str, tuple[int, int]] | None
) -> tuple[Bencodable, int]:
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    lead = data[at : at + 1]
    if lead == b"i":
        end = data.index(b"e", at)
        digits = data[at + 1 : end]
        if not digits or digits.startswith((b"0", b"-0")) and digits not in (b"0",):
            raise ValueError("bad integer")
        return int(digits), end + 1
    if lead.isdigit():
        colon = data.index(b":", at)
        length = int(data[at:colon])
        end = colon + 1 + length
        if end > len(data):
            raise ValueError("string past the end")
        return data[colon + 1 : end], end
    if lead == b"l":
        items: list[Bencodable] = []
        at += 1
        while data[at : at + 1] != b"e":
            item, at = _decode(data, at, depth + 1, None)
            items.append(item)
        return items, at + 1
    if lead == b"d":
        out: dict[str, Bencodable] = {}
        at += 1
        while data[at : at + 1] != b"e":
            raw_key, at = _decode(data, at, depth + 1, None)
            if not isinstance(raw_key, bytes):
                raise ValueError("a dictionary key is not a string")
            key = raw_key.decode("utf-8", "surrogateescape")
            start = at
            out[key], at = _decode(data, at, depth + 1, None)
            if spans is not None:
                spans[key] = (start, at)
        return out, at + 1
    raise ValueError(f"unexpected byte {lead!r} at {at}")


@dataclass(frozen=True)
class TorrentMeta:
    """What a .torrent asks for, checked: its info-hash, name and files."""

    info_hash: str  # hex: SHA-1 of the info dictionary (v1, hybrid), else its SHA-256 (v2)
    name: str
    files: list[tuple[str, int]]  # (path below the download folder, size), pad files left out
    size: int
    piece_size: int
    folder: bool  # files lie under a folder named `name`
    pieces: bytes | None = None  # v1 SHA-1 pieces; None for a v2-only torrent
    padded: bool = False  # BEP 47 pad files lie between its files (left out of `files`)


def _text(value: Bencodable, what: str) -> str:
    if not isinstance(value, bytes):
        raise MetainfoError(f"its {what} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"its {what} is not UTF-8") from None


def safe_part(part: str, what: str) -> str:
    """One path element that stays where it is put: no '..', '/', '\\', NUL or empty.
    Raises MetainfoError."""
    if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
        raise MetainfoError(f"its {what} {part!r} would write outside the download folder")
    if not part.isprintable():
        raise MetainfoError(f"its {what} {part!r} has control characters")
    return part


def parse_torrent(data: bytes) -> TorrentMeta:
    """Check a .torrent's bytes: bencoded, an info dictionary with a safe name and safe
    file paths (v1 `files`/`length`, or a v2 `file tree`). Raises MetainfoError."""
    if len(data) > MAX_METAINFO:
        raise MetainfoError(f"it is {len(data)} bytes, more than any torrent we take")
    top, spans = bdecode(data)
    if not isinstance(top, dict) or not isinstance(top.get("info"), dict):
        raise MetainfoError("it has no info dictionary")
    info = top["info"]
    assert isinstance(info, dict)
    start, end = spans["info"]
    raw_info = data[start:end]
    name = safe_part(_text(info.get("name", b""), "name"), "name")
    piece_size = info.get("piece length")
    if not isinstance(piece_size, int) or piece_size <= 0:
        raise MetainfoError("its piece length is missing or not positive")
    pieces = info.get("pieces")
    if pieces is not None and (not isinstance(pieces, bytes) or len(pieces) % SHA1_SIZE):
        raise MetainfoError("its pieces are not whole SHA-1 digests")
    if pieces is None and "file tree" not in info:
        raise MetainfoError("it has neither v1 pieces nor a v2 file tree")
    if pieces is not None:
        files, folder = _v1_files(info, name)
        btih = hashlib.sha1(raw_info).hexdigest()
    else:
        files, folder = _v2_files(info, name)
        btih = hashlib.sha256(raw_info).hexdigest()
    listed = info.get("files")
    padded = isinstance(listed, list) and any(
        isinstance(e, dict) and isinstance(e.get("attr"), bytes) and b"p" in e["attr"]  # type: ignore[operator]
        for e in listed
    )
    return TorrentMeta(
        btih, name, files, sum(s for _, s in files), piece_size, folder, pieces, padded
    )


def _size(value: Bencodable) -> int:
    if not isinstance(value, int) or value < 0:
        raise MetainfoError("a file length is missing or negative")
    return value


def refuse_symlink(entry: dict[str, Bencodable], path: str) -> None:
    """A BEP 47 symlink (`attr` with `l`, or a `symlink path`): libtorrent would make it in
    the download, where it could name any file of this machine. Raises MetainfoError."""
    attr = entry.get("attr", b"")
    if "symlink path" in entry or (isinstance(attr, bytes) and b"l" in attr):
        raise MetainfoError(f"its file {path!r} is a symlink, which this node never makes")


def _v1_files(info: dict[str, Bencodable], name: str) -> tuple[list[tuple[str, int]], bool]:
    if "files" not in info:
        refuse_symlink(info, name)
        return [(name, _size(info.get("length")))], False
    listed = info["files"]
    if not isinstance(listed, list) or not listed:
        raise MetainfoError("its file list is empty or not a list")
    out = []
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), list):
            raise MetainfoError("a file of it has no path")
        path = [safe_part(_text(p, "file path"), "file path") for p in entry["path"]]
        if not path:
            raise MetainfoError("a file of it has an empty path")
        refuse_symlink(entry, "/".join(path))
        attr = entry.get("attr", b"")
        if isinstance(attr, bytes) and b"p" in attr:
            continue  # a BEP 47 pad file: never written out
        out.append(("/".join([name, *path]), _size(entry.get("length"))))
    return out, True


def _v2_files(info: dict[str, Bencodable], name: str) -> tuple[list[tuple[str, int]], bool]:
    tree = info.get("file tree")
    if not isinstance(tree, dict) or not tree:
        raise MetainfoError("its file tree is empty")
    out: list[tuple[str, int]] = []
    _walk(tree, [], out, 0)
    if len(out) == 1 and out[0][0] == name:
        return [(name, out[0][1])], False
    return [(f"{name}/{path}", size) for path, size in out], True


def _walk(
    tree: dict[str, Bencodable], above: list[str], out: list[tuple[str, int]], depth: int
) -> None:
    if depth > MAX_DEPTH:
        raise MetainfoError("its file tree is nested too deep")
    for key, sub in sorted(tree.items()):
        if not isinstance(sub, dict):
            raise MetainfoError("its file tree is malformed")
        if key == "":
            leaf = sub
            if not above:
                raise MetainfoError("its file tree is malformed")
            refuse_symlink(leaf, "/".join(above))
            out.append(("/".join(above), _size(leaf.get("length"))))
            continue
        _walk(sub, [*above, safe_part(key, "file path")], out, depth + 1)


@dataclass(frozen=True)
class Magnet:
    """A BEP 9 magnet link, checked: what it names and where to ask."""

    info_hash: str  # hex: v1 (btih) or, for a v2-only link, the SHA-256 (btmh)
    name: str | None
    peers: list[str]  # x.pe: host:port


def parse_magnet(link: str) -> Magnet:
    """Check a magnet link: one v1 (btih, hex or base32) or v2 (btmh) info-hash at least.
    Raises MetainfoError."""
    if not link.startswith("magnet:?"):
        raise MetainfoError("it does not start with magnet:?")
    btih: str | None = None
    btmh: str | None = None
    name: str | None = None
    peers: list[str] = []
    for part in link[len("magnet:?") :].split("&"):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        value = unquote(value)
        if key.split(".")[0] == "xt" and value.lower().startswith("urn:btih:"):
            btih = _btih(value[len("urn:btih:") :])
        elif key.split(".")[0] == "xt" and value.lower().startswith("urn:btmh:"):
            digest = value[len("urn:btmh:") :].lower()
            if not re.fullmatch(r"1220[0-9a-f]{64}", digest):
                raise MetainfoError("its btmh info-hash is not a SHA-256 multihash")
            btmh = digest[4:]
        elif key == "dn":
            name = value
        elif key == "x.pe":
            peers.append(value)
    info_hash = btih or btmh
    if info_hash is None:
        raise MetainfoError("it names no BitTorrent info-hash (xt=urn:btih:... or urn:btmh:...)")
    return Magnet(info_hash, name, peers)


def _btih(value: str) -> str:
    if re.fullmatch(r"[0-9a-fA-F]{40}", value):
        return value.lower()
    if re.fullmatch(r"[A-Za-z2-7]{32}", value):
        return base64.b32decode(value.upper()).hex()
    raise MetainfoError("its btih info-hash is neither 40 hex digits nor 32 base32 ones")

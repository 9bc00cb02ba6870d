"""The SHA-256 hints a torrent made here carries, so a node fetching it takes what a
p2pshare peer on the LAN holds (the same SHA-256 and size) from there, and only the rest
over BitTorrent. Pure code: no libtorrent, disk, database or clock.

Where a hint travels, chosen so every stock client ignores it and accepts the rest:

- a .torrent: the top-level key `p2pshare`, a dictionary whose `sha256` is a list of
  32-byte digests, one per file in the order the info dictionary lists them (pad files
  left out). It lies outside `info`, as BEP 52's `piece layers` and BEP 3's `announce`
  do, so the info-hash is the same with or without it (aria2c 1.36 and libtorrent 2.1
  read such a .torrent unchanged; checked on loopback). BEP 47's per-file `sha1` would
  have to sit inside `info` (another info-hash) and is SHA-1, not the SHA-256 a
  p2pshare catalog names content by.
- a magnet link of a one-file torrent: `x.sha256=HEX`, `xl=BYTES` (the magnet scheme's
  exact length) and `x.pl=BYTES` (the piece length). `x.` is the magnet scheme's prefix
  for experimental parameters, as BEP 9's `x.pe`; an `xt=urn:sha256:` would claim the
  link's exact topic, which the info-hash alone is. libtorrent's parse_magnet_uri and
  aria2c take such a link as they take it without them. A folder's magnet carries no
  hint: its files' paths come only with the metadata.

A hint is only ever a hint: what arrives from p2pshare peers is verified against the
SHA-256 chain of their manifest, and then against the torrent itself (its SHA-1 pieces,
or for a magnet the info dictionary rebuilt from the file, which must hash to the
link's info-hash) before anything is published. A malformed hint is ignored with one
warning; a wrong one costs a transfer, never a wrong file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from p2pshare.services.torrent import metainfo as mi

HINT_KEY = "p2pshare"
SHA256_SIZE = 32


@dataclass(frozen=True)
class FileHint:
    """One file of a torrent whose content a p2pshare peer may hold."""

    path: str  # below the download folder, as TorrentMeta.files names it
    size: int
    sha256: str  # hex


@dataclass(frozen=True)
class Hints:
    """What a torrent or magnet link says of its files' SHA-256 (nothing, or every file)."""

    files: tuple[FileHint, ...] = ()
    piece_size: int = 0
    warning: str | None = None  # a malformed hint, ignored: one line for the log or the user


def torrent_value(sha256s: Sequence[str]) -> dict[str, mi.Bencodable]:
    """The value of a .torrent's `p2pshare` key for files of these SHA-256 (hex)."""
    return {"sha256": [bytes.fromhex(s) for s in sha256s]}


def magnet_params(sha256: str, size: int, piece_size: int) -> list[str]:
    """A one-file torrent's hint as magnet parameters."""
    return [f"xl={size}", f"x.sha256={sha256}", f"x.pl={piece_size}"]


def from_torrent(data: bytes) -> Hints:
    """The hints of a .torrent (none when it has no `p2pshare` key). Raises MetainfoError
    only for a .torrent parse_torrent refuses; a malformed hint is a warning."""
    meta = mi.parse_torrent(data)
    top, _ = mi.bdecode(data)
    assert isinstance(top, dict)
    if HINT_KEY not in top:
        return Hints()
    value = top[HINT_KEY]
    listed = value.get("sha256") if isinstance(value, dict) else None
    if not isinstance(listed, list):
        return _ignored("its p2pshare hint has no list of SHA-256")
    if len(listed) != len(meta.files):
        return _ignored(
            f"its p2pshare hint names {len(listed)} SHA-256 for {len(meta.files)} files"
        )
    if not all(isinstance(d, bytes) and len(d) == SHA256_SIZE for d in listed):
        return _ignored("its p2pshare hint has an entry that is not a 32-byte SHA-256")
    files = tuple(
        FileHint(path, size, bytes(d).hex())  # type: ignore[arg-type]
        for (path, size), d in zip(meta.files, listed, strict=True)
    )
    return Hints(files, meta.piece_size)


def from_magnet(link: str) -> Hints:
    """The hint of a magnet link (none when it has no x.sha256). Raises MetainfoError only
    for a link parse_magnet refuses; a malformed hint is a warning."""
    magnet = mi.parse_magnet(link)
    params: dict[str, list[str]] = {}
    for part in link[len("magnet:?") :].split("&"):
        key, sep, value = part.partition("=")
        if sep and key in ("x.sha256", "xl", "x.pl"):
            params.setdefault(key, []).append(unquote(value))
    shas = params.get("x.sha256", [])
    if not shas:
        return Hints()
    if len(shas) > 1:
        return _ignored("its x.sha256 hint is given more than once (a hint is for one file)")
    sha = shas[0].lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        return _ignored("its x.sha256 hint is not 64 hex digits")
    size = _number(params.get("xl", []), minimum=0)
    piece_size = _number(params.get("x.pl", []), minimum=1)
    if size is None or piece_size is None:
        return _ignored("its x.sha256 hint comes without one xl (size) and x.pl (piece length)")
    if not magnet.name:
        return _ignored("its x.sha256 hint comes without a dn (file name)")
    try:
        name = mi.safe_part(magnet.name, "name")
    except mi.MetainfoError as exc:
        return _ignored(f"its x.sha256 hint is for a name refused: {exc}")
    return Hints((FileHint(name, size, sha),), piece_size)


def _number(values: list[str], *, minimum: int) -> int | None:
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        return None
    n = int(values[0])
    return n if n >= minimum else None


def _ignored(why: str) -> Hints:
    return Hints(warning=f"{why}; ignored, so BitTorrent fetches it all")


def rebuilt_info(hint: FileHint, piece_size: int, pieces: bytes) -> dict[str, mi.Bencodable]:
    """The v1 info dictionary `p2pctl torrent` makes for one file: a magnet's metadata
    rebuilt from the file itself, which proves the file when it hashes to the info-hash."""
    return mi.info_dict(hint.path, [mi.TorrentFile((), hint.size)], piece_size, pieces)


def proves(info_hash: str, info: dict[str, mi.Bencodable]) -> bool:
    """Whether a rebuilt info dictionary is the one the info-hash names (v1 only)."""
    return len(info_hash) == 2 * mi.SHA1_SIZE and mi.info_hash(info) == info_hash

"""Catalogs (what a node offers) and manifests (each file's chunk hashes), compressed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

from p2pshare.services.protocol.fields import (
    MAX_PART_BYTES,
    _bool,
    _file_key,
    _hex,
    _int,
    _obj,
    check_name,
    check_sha,
)
from p2pshare.services.protocol.frames import _bits, frame
from p2pshare.services.protocol.limits import (
    CATALOG_EPOCH_HEX,
    CHUNK_ALIGN,
    MANIFEST_LABEL_RE,
    MAX_CATALOG_BYTES,
    MAX_CHUNK,
    MAX_CHUNKS_PER_FILE,
    MAX_FILE_SIZE,
    MAX_PAGE_BYTES,
    MIN_CHUNK,
    PAGE_ENTRIES,
    SHA_RE,
    FileKey,
    MalformedMessage,
    MessageTooLarge,
    chunk_count,
)


class CatalogEntry(NamedTuple):
    """One entry of a catalog (a tuple: a page holds thousands, made in bulk)."""

    name: str
    file: FileKey
    size: int
    # None: every chunk held; else a bitfield of the chunks held.
    have: bytes | None

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.file.chunk_size)


def _inflate(payload: bytes, limit: int) -> bytes:
    try:
        d = zlib.decompressobj()
        body = d.decompress(payload, limit)
        if d.unconsumed_tail:
            raise MessageTooLarge(f"payload inflates past {limit} bytes")
        if not d.eof:
            raise MalformedMessage("payload is truncated")
        if d.unused_data:
            raise MalformedMessage("payload has bytes after its end")
        return body
    except zlib.error as exc:
        raise MalformedMessage(f"payload is not zlib data: {exc}") from None


# An entry as the sender has it: name, SHA-256, size, chunk size, root, and the bitfield
# of the chunks held (None: all).
FlatEntry = tuple[str, str, int, int, str, bytes | None]


def _rows(entries: Sequence[FlatEntry]) -> Sequence[tuple[object, ...]]:
    """Entries as they go on the wire (JSON arrays, the bitfield in base64). Tuples, not
    lists: the garbage collector stops tracking a tuple of strings and numbers, so a
    page's thousands do not set off full collections of a large process."""
    if all(entry[5] is None for entry in entries):
        return entries
    b64 = base64.b64encode
    return [
        (name, sha, size, cs, root, None if have is None else b64(have).decode())
        for name, sha, size, cs, root, have in entries
    ]


def _flat(entries: list[CatalogEntry]) -> list[FlatEntry]:
    return [(name, sha, size, cs, root, have) for name, (sha, cs, root), size, have in entries]


def encode_catalog(entries: list[CatalogEntry], version: int) -> bytes:
    body = {"cv": version, "files": _rows(_flat(entries))}
    return zlib.compress(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(), 1)


def decode_catalog(payload: bytes) -> tuple[int, list[CatalogEntry]]:
    """A peer's catalog: (version, entries). Raises ProtocolError on anything that lies."""
    raw = _obj(_inflate(payload, MAX_CATALOG_BYTES), MAX_CATALOG_BYTES)
    return _int(raw, "cv", 0, 2**62), _entries(raw.get("files"))


def _entries(files: object) -> list[CatalogEntry]:
    if not isinstance(files, list):
        raise MalformedMessage("'files' must be a list")
    # Every rule is checked over the whole list at once, in C where it can be (a page is
    # thousands of entries); anything that fails one is looked at again entry by entry,
    # which refuses it with its own reason (or takes it, where the bulk check was stricter).
    try:
        entries = _entries_at_once(files)
    except (TypeError, ValueError):  # an entry of another shape; a name not UTF-8
        entries = None
    return _entries_one_by_one(files) if entries is None else entries


# Characters a name of at most this many may hold are at most MAX_PART_BYTES bytes in
# UTF-8: neither it nor any part of it can be too long.
_SHORT_NAME = MAX_PART_BYTES // 4
# In names joined by newlines (which a name, being printable, cannot hold), between
# newlines at both ends: a part that is empty, '.' or '..' (so also an absolute name),
# and a name that starts with a drive.
_BAD_PARTS_JOINED = tuple(
    f"{before}{part}{after}" for before in "\n/" for part in ("", ".", "..") for after in "\n/"
)
_DRIVE_JOINED_RE = re.compile(r"\n[A-Za-z]:")
_HEX_DIGITS = b"0123456789abcdef"


def _entries_at_once(files: list[Any]) -> list[CatalogEntry] | None:
    """The entries, if each passes every rule of `_entries_one_by_one`; None if any may not.
    Raises TypeError or ValueError for some entries of the wrong shape."""
    if not files:
        return []
    if set(map(type, files)) != {list} or set(map(len, files)) != {6}:
        return None
    names, shas, sizes, sizes_of_chunks, roots, haves = zip(*files, strict=True)
    if set(map(type, sizes)) != {int} or set(map(type, sizes_of_chunks)) != {int}:
        return None
    if min(sizes) < 0 or max(sizes) > MAX_FILE_SIZE:
        return None
    if not all(
        MIN_CHUNK <= cs <= MAX_CHUNK and cs % CHUNK_ALIGN == 0 for cs in set(sizes_of_chunks)
    ):
        return None
    for digests in (shas, roots):
        if set(map(len, digests)) != {64} or "".join(digests).encode().translate(None, _HEX_DIGITS):
            return None
    if not _names_pass(names):
        return None
    counts = [-(-size // cs) for size, cs in zip(sizes, sizes_of_chunks, strict=True)]
    if max(counts) > MAX_CHUNKS_PER_FILE:
        return None
    sha256, fromhex = hashlib.sha256, bytes.fromhex
    if any(
        count == 1 and root != sha256(fromhex(sha)).hexdigest()
        for sha, root, count in zip(shas, roots, counts, strict=True)
    ):
        return None
    keys = list(map(FileKey, shas, sizes_of_chunks, roots))
    size_of = dict(zip(keys, sizes, strict=True))
    if len(size_of) < len(keys) and any(
        size_of[key] != size for key, size in zip(keys, sizes, strict=True)
    ):
        return None
    if haves.count(None) != len(haves):
        haves = tuple(map(_bits, haves, counts))
    return list(map(CatalogEntry, names, keys, sizes, haves))


def _names_pass(names: tuple[Any, ...]) -> bool:
    """Every name passes check_name (False: some may not). Raises TypeError for a name
    that is not a string, UnicodeEncodeError (a ValueError) for one that is not UTF-8."""
    joined = "\n" + "\n".join(names) + "\n"
    joined.encode("utf-8")
    if min(map(len, names)) == 0 or not all(map(str.isprintable, names)):
        return False
    if "\\" in joined or any(bad in joined for bad in _BAD_PARTS_JOINED):
        return False
    if ":" in joined and _DRIVE_JOINED_RE.search(joined):
        return False
    try:
        for name in names:
            if len(name) > _SHORT_NAME:
                check_name(name)  # a name too long, or with a part too long
    except (MalformedMessage, MessageTooLarge):
        return False
    return True


def _entries_one_by_one(files: list[Any]) -> list[CatalogEntry]:
    entries = []
    sizes: dict[FileKey, int] = {}
    for item in files:
        if not isinstance(item, list) or len(item) != 6:
            raise MalformedMessage("each catalog entry must have 6 fields")
        name, sha, size, cs, root, have = item
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            raise MalformedMessage(f"'size' must be an integer in [0, {MAX_FILE_SIZE}]")
        key = _entry_key(sha, cs, root)
        count = -(-size // key.chunk_size)
        if count > MAX_CHUNKS_PER_FILE:
            raise MalformedMessage("file has too many chunks")
        if count == 1 and key.root != one_chunk_root(key.sha256):
            # Its manifest is its SHA-256 alone: an entry proves it or lies.
            raise MalformedMessage("a one-chunk file offered under a root it cannot have")
        if sizes.setdefault(key, size) != size:
            raise MalformedMessage("the catalog gives one file two sizes")
        entries.append(CatalogEntry(check_name(name), key, size, _bits(have, count)))
    return entries


def _entry_key(sha: object, cs: object, root: object) -> FileKey:
    """_file_key without a dict a field: a catalog entry's key, checked alike."""
    if (
        type(sha) is str
        and type(root) is str
        and type(cs) is int
        and SHA_RE.fullmatch(sha)
        and SHA_RE.fullmatch(root)
        and MIN_CHUNK <= cs <= MAX_CHUNK
        and cs % CHUNK_ALIGN == 0
    ):
        return FileKey(sha, cs, root)
    return _file_key({"sha": sha, "cs": cs, "rt": root})  # raises, saying which field


def one_chunk_root(sha256: str) -> str:
    """The root of a one-chunk file's manifest, whose only entry is the file's SHA-256."""
    return hashlib.sha256(bytes.fromhex(sha256)).hexdigest()


@dataclass(frozen=True)
class CatalogPage:
    """Part of a catalog by change: the changes after sequence number `start` up to and
    including `end`, of the log named `epoch`. `reset`: the whole catalog, from the
    start (whatever the asker held of this peer before is to go); `more`: the next page
    follows on the connection, from `end`."""

    epoch: str
    start: int
    end: int
    reset: bool
    more: bool
    entries: list[CatalogEntry]
    gone: list[tuple[str, str]]  # (name, sha256) offered no more


def encode_page(page: CatalogPage) -> bytes:
    """A page as sent: its header frame, then its compressed body."""
    return encode_page_rows(
        page.epoch, page.start, page.end, page.reset, page.more, _flat(page.entries), page.gone
    )


def encode_page_rows(
    epoch: str,
    start: int,
    end: int,
    reset: bool,
    more: bool,
    entries: Sequence[FlatEntry],
    gone: Sequence[tuple[str, str]],
) -> bytes:
    """encode_page from the entries as the sender reads them: a server builds no entry
    objects for the thousands of a page."""
    body = {"files": _rows(entries), "gone": gone}
    payload = zlib.compress(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(), 1)
    header = frame(
        {"ok": True, "ce": epoch, "from": start, "to": end,
         "reset": reset, "more": more, "len": len(payload)}
    )  # fmt: skip
    return header + payload


def page_length(header: dict[str, Any]) -> int:
    """The compressed body's length a page header announces. Raises ProtocolError."""
    return _int(header, "len", 0, MAX_PAGE_BYTES)


def decode_page(header: dict[str, Any], payload: bytes) -> CatalogPage:
    """A page from its decoded header and its body. Raises ProtocolError."""
    epoch = _hex(header, "ce", CATALOG_EPOCH_HEX)
    start, end = _int(header, "from", 0, 2**62), _int(header, "to", 0, 2**62)
    if end < start:
        raise MalformedMessage("a page that ends before it starts")
    raw = _obj(_inflate(payload, MAX_PAGE_BYTES), MAX_PAGE_BYTES)
    files, gone = raw.get("files"), raw.get("gone")
    if not isinstance(files, list) or not isinstance(gone, list):
        raise MalformedMessage("a page needs 'files' and 'gone' lists")
    if len(files) + len(gone) > PAGE_ENTRIES:
        raise MessageTooLarge(f"a page of {len(files) + len(gone)} entries")
    removed = []
    for item in gone:
        if not isinstance(item, list) or len(item) != 2:
            raise MalformedMessage("each entry gone must be [name, sha256]")
        removed.append((check_name(item[0]), check_sha(item[1])))
    return CatalogPage(
        epoch,
        start,
        end,
        _bool(header, "reset"),
        _bool(header, "more"),
        _entries(files),
        removed,
    )


def encode_manifests(manifests: dict[FileKey, list[str]]) -> bytes:
    """Manifest entries per file: raw 32-byte entries concatenated, base64, compressed."""
    body = {
        f"{k.sha256}:{k.chunk_size}:{k.root}": base64.b64encode(
            b"".join(bytes.fromhex(h) for h in entries)
        ).decode()
        for k, entries in manifests.items()
    }
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 1)


class ManifestEntries(Sequence[str]):
    """A manifest's entries kept as they came, 32-byte values in one bytes object, each
    read as hex when asked for: a list of hex strings would hold three and a half times
    the memory while a large manifest waits to be recorded. Equal to a list of the same
    hex entries."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw) // 32

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        at = index + len(self) if index < 0 else index
        if not 0 <= at < len(self):
            raise IndexError("manifest entry out of range")
        return self.raw[32 * at : 32 * at + 32].hex()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ManifestEntries):
            return self.raw == other.raw
        if isinstance(other, list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ManifestEntries({len(self)} entries)"


@dataclass(frozen=True)
class Manifests:
    """A manifest reply: the entries of each file that proved itself, and why others did not."""

    good: dict[FileKey, Sequence[str]]
    refused: dict[FileKey, str]


def check_manifest(key: FileKey, size: int, digests: bytes) -> ManifestEntries:
    """The entries of one manifest, if it is the one `key` promises. Raises MalformedMessage."""
    count = chunk_count(size, key.chunk_size)
    if len(digests) != 32 * count:
        raise MalformedMessage(f"manifest has {len(digests) // 32} entries, not {count}")
    if hashlib.sha256(digests).hexdigest() != key.root:
        raise MalformedMessage("manifest does not hash to the root it was offered under")
    last = digests[-32:].hex() if digests else EMPTY_SHA256
    if last != key.sha256:
        raise MalformedMessage("manifest does not end in the file's SHA-256")
    return ManifestEntries(digests)


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# Room in a manifest reply beyond what the manifests asked for take: a reply somewhat
# off (a manifest of the wrong length, spaces in its JSON) is still read, and each
# manifest in it refused alone or taken, rather than the whole reply dropped.
MANIFEST_REPLY_SLACK = 64 * 1024


def manifest_reply_bytes(sizes: dict[FileKey, int]) -> int:
    """The most a reply with the manifests of these files (of these sizes) may take once
    inflated: twice each label and its base64 entries as encode_manifests writes them,
    and MANIFEST_REPLY_SLACK. A reply is refused past it, so what a peer can make this
    node hold is bounded by what it asked for, not by MAX_CATALOG_BYTES."""
    label = 64 + 1 + 9 + 1 + 64 + 2 + 4  # sha:cs:root, quotes, colon and comma
    exact = 2 + sum(
        label + 4 * -(-32 * chunk_count(size, key.chunk_size) // 3) for key, size in sizes.items()
    )
    return 2 * exact + MANIFEST_REPLY_SLACK


def decode_manifests(payload: bytes, sizes: dict[FileKey, int]) -> Manifests:
    """Manifests for the files asked about (`sizes`); files the peer lacks are absent.

    A manifest that does not prove itself (wrong root, wrong count, not ending in
    the file's SHA-256) is refused alone, with its reason. Raises ProtocolError if
    the reply itself is malformed, larger than those manifests can be, or answers for
    a file not asked about.
    """
    limit = min(MAX_CATALOG_BYTES, manifest_reply_bytes(sizes))
    raw = _obj(_inflate(payload, limit), limit)
    good: dict[FileKey, Sequence[str]] = {}
    refused: dict[FileKey, str] = {}
    for label, value in raw.items():
        match = MANIFEST_LABEL_RE.fullmatch(label)
        key = FileKey(match[1], int(match[2]), match[3]) if match else None
        if key is None or key not in sizes or not isinstance(value, str):
            raise MalformedMessage("manifest for a file that was not asked about")
        try:
            digests = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("manifest is not base64") from None
        try:
            good[key] = check_manifest(key, sizes[key], digests)
        except MalformedMessage as exc:
            refused[key] = str(exc)
    return Manifests(good, refused)

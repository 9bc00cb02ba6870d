"""Catalogs (what a node offers) and manifests (each file's chunk hashes), compressed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from dataclasses import dataclass

from p2pshare.services.protocol.fields import _file_key, _int, _obj, check_name
from p2pshare.services.protocol.frames import _bits
from p2pshare.services.protocol.limits import (
    MANIFEST_LABEL_RE,
    MAX_CATALOG_BYTES,
    MAX_CHUNKS_PER_FILE,
    MAX_FILE_SIZE,
    FileKey,
    MalformedMessage,
    MessageTooLarge,
    chunk_count,
)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    file: FileKey
    size: int
    # None: every chunk held; else a bitfield of the chunks held.
    have: bytes | None

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.file.chunk_size)


def encode_catalog(entries: list[CatalogEntry], version: int) -> bytes:
    files = [
        [
            e.name,
            e.file.sha256,
            e.size,
            e.file.chunk_size,
            e.file.root,
            None if e.have is None else base64.b64encode(e.have).decode(),
        ]
        for e in entries
    ]
    body = json.dumps(
        {"cv": version, "files": files}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    return zlib.compress(body, 1)


def _inflate(payload: bytes) -> bytes:
    try:
        d = zlib.decompressobj()
        body = d.decompress(payload, MAX_CATALOG_BYTES)
        if d.unconsumed_tail:
            raise MessageTooLarge(f"payload inflates past {MAX_CATALOG_BYTES} bytes")
        if not d.eof:
            raise MalformedMessage("payload is truncated")
        if d.unused_data:
            raise MalformedMessage("payload has bytes after its end")
        return body
    except zlib.error as exc:
        raise MalformedMessage(f"payload is not zlib data: {exc}") from None


def decode_catalog(payload: bytes) -> tuple[int, list[CatalogEntry]]:
    """A peer's catalog: (version, entries). Raises ProtocolError on anything that lies."""
    raw = _obj(_inflate(payload), MAX_CATALOG_BYTES)
    version = _int(raw, "cv", 0, 2**62)
    files = raw.get("files")
    if not isinstance(files, list):
        raise MalformedMessage("'files' must be a list")
    entries = []
    sizes: dict[FileKey, int] = {}
    for item in files:
        if not isinstance(item, list) or len(item) != 6:
            raise MalformedMessage("each catalog entry must have 6 fields")
        name, sha, size, cs, root, have = item
        size = _int({"size": size}, "size", 0, MAX_FILE_SIZE)
        key = _file_key({"sha": sha, "cs": cs, "rt": root})
        count = chunk_count(size, key.chunk_size)
        if count > MAX_CHUNKS_PER_FILE:
            raise MalformedMessage("file has too many chunks")
        if sizes.setdefault(key, size) != size:
            raise MalformedMessage("the catalog gives one file two sizes")
        entries.append(CatalogEntry(check_name(name), key, size, _bits(have, count)))
    return version, entries


def encode_manifests(manifests: dict[FileKey, list[str]]) -> bytes:
    """Manifest entries per file: raw 32-byte entries concatenated, base64, compressed."""
    body = {
        f"{k.sha256}:{k.chunk_size}:{k.root}": base64.b64encode(
            b"".join(bytes.fromhex(h) for h in entries)
        ).decode()
        for k, entries in manifests.items()
    }
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 1)


@dataclass(frozen=True)
class Manifests:
    """A manifest reply: the entries of each file that proved itself, and why others did not."""

    good: dict[FileKey, list[str]]
    refused: dict[FileKey, str]


def check_manifest(key: FileKey, size: int, digests: bytes) -> list[str]:
    """The entries of one manifest, if it is the one `key` promises. Raises MalformedMessage."""
    count = chunk_count(size, key.chunk_size)
    if len(digests) != 32 * count:
        raise MalformedMessage(f"manifest has {len(digests) // 32} entries, not {count}")
    if hashlib.sha256(digests).hexdigest() != key.root:
        raise MalformedMessage("manifest does not hash to the root it was offered under")
    entries = [digests[i : i + 32].hex() for i in range(0, len(digests), 32)]
    last = entries[-1] if entries else EMPTY_SHA256
    if last != key.sha256:
        raise MalformedMessage("manifest does not end in the file's SHA-256")
    return entries


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def decode_manifests(payload: bytes, sizes: dict[FileKey, int]) -> Manifests:
    """Manifests for the files asked about (`sizes`); files the peer lacks are absent.

    A manifest that does not prove itself (wrong root, wrong count, not ending in
    the file's SHA-256) is refused alone, with its reason. Raises ProtocolError if
    the reply itself is malformed or answers for a file not asked about.
    """
    raw = _obj(_inflate(payload), MAX_CATALOG_BYTES)
    good: dict[FileKey, list[str]] = {}
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

"""Limits, errors, and what names a file on the wire (FileKey) and its chunks."""

from __future__ import annotations

import hashlib
import re
import struct
from typing import NamedTuple

PROTOCOL_VERSION = 2
MAX_DATAGRAM = 1400
MAX_FRAME = 64 * 1024
# A whole catalog in one message: what nodes before catalogs by change ask for, and all
# they can take; a node offering more files than fit (the chunk server's
# LEGACY_CATALOG_ENTRIES) answers them with an error.
MAX_CATALOG_BYTES = 64 * 1024 * 1024  # decompressed
# Catalogs by change come in pages: what one page may hold once inflated, and how many
# entries. A page is what a peer holds in memory at once, however large the share: a
# million-file catalog is some 200 pages. The largest entry (a 1,024-byte name) still
# fits PAGE_ENTRIES times in MAX_PAGE_BYTES.
MAX_PAGE_BYTES = 8 * 1024 * 1024
PAGE_ENTRIES = 5000
CATALOG_EPOCH_HEX = 16
MAX_MANIFEST_FILES = 256  # per request
# Manifest entries asked of one peer in one request (a larger manifest goes alone): what
# a reply may hold once decoded is known before it is asked for, so one peer's replies
# hold at most this much memory at once (4 MiB of entries, 11 MiB as they arrive).
MANIFEST_ENTRIES_PER_REQUEST = 1 << 17
# Manifest requests under way to one peer at once, from one process: a peer answering
# slowly holds one of the asker's threads, never all of them.
MANIFEST_FETCHES_PER_PEER = 1
MAX_FILE_SIZE = 1 << 50  # 1 PiB: anything larger is a lie
MIN_CHUNK = 16 * 1024
# A SHA-256 chaining state exists only after whole 64-byte blocks.
CHUNK_ALIGN = 64
MAX_CHUNK = 64 * 1024 * 1024
MAX_CHUNKS_PER_FILE = 1 << 20
MAX_NAME_BYTES = 1024
MAX_USERNAME_BYTES = 64
NODE_ID_HEX = 32
NONCE_HEX = 32
FINGERPRINT_HEX = 64
FRAME_HEADER = struct.Struct(">I")
SHA_RE = re.compile(r"[0-9a-f]{64}")
HEX_RE = re.compile(r"[0-9a-f]+")
MANIFEST_LABEL_RE = re.compile(r"([0-9a-f]{64}):([0-9]{1,9}):([0-9a-f]{64})", re.ASCII)
AUTH_CONTEXT = b"p2pshare-tcp-auth\0"
SERVER_AUTH_CONTEXT = b"p2pshare-tcp-server-auth\0"


class ProtocolError(Exception):
    """Bytes from the network that we refuse."""


class MalformedMessage(ProtocolError):
    """Not the shape the protocol allows."""


class MessageTooLarge(ProtocolError):
    """Larger than the protocol allows."""


class WrongVersion(ProtocolError):
    """Another protocol, or another version of ours."""


class WrongNetworkKey(ProtocolError):
    """Missing, wrong or stale authentication."""


class RemoteRefused(ProtocolError):
    """The other side answered with an error."""


class FileKey(NamedTuple):
    """One offer of a file's content: its SHA-256, its chunking, and its manifest's root."""

    sha256: str
    chunk_size: int
    root: str


def short_fingerprint(fingerprint: str) -> str:
    """The first 64 bits of a fingerprint, in groups people can read to each other
    (3F2A-9C1B-77E0-4D21), as Syncthing users compare device IDs."""
    head = fingerprint[:16].upper()
    return "-".join(head[i : i + 4] for i in range(0, 16, 4))


def manifest_root(entries: list[str]) -> str:
    """The root a manifest is offered under: SHA-256 of its 32-byte entries concatenated."""
    return hashlib.sha256(b"".join(bytes.fromhex(e) for e in entries)).hexdigest()


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    return min(chunk_size, size - index * chunk_size)

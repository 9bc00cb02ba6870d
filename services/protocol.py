"""The whole wire format of p2pshare: UDP announcements and TCP requests and replies.

No sockets, database, clock or environment here: callers pass `now` and `key`.
Every `decode_*` raises only `ProtocolError` (or a subclass) on bad bytes.

UDP: one JSON object per datagram, at most MAX_DATAGRAM bytes:
    {"p2p": 2, "t": "announce", "node": <hex id>, "user": <name>, "port": <tcp>,
     "cv": <catalog version>, "seq": <n>, "ts": <unix seconds>[, "mac": <hex>]}

TCP: frames of a 4-byte big-endian length and a JSON object. The server speaks
first (a welcome with a nonce); with a network key the client answers with an
HMAC of that nonce before anything else. Then the client may pipeline requests;
replies come in order. A reply whose header has "len" is followed by that many
raw bytes: chunk data, or a zlib-compressed JSON catalog or manifest.

A file is offered as (sha256, chunk size, root). Its manifest has one 32-byte
entry per chunk: the SHA-256 chaining state after that chunk, the last entry
being the file's SHA-256 (see sha256chain). The root is the SHA-256 of the
entries concatenated, so a manifest proves itself: one that does not hash to
the root it was offered under is refused, and a peer offering another root
for the same SHA-256 makes a different offer, never a poisoned one.
Version 2 of the protocol; version 1 (plain per-chunk hashes, no root) is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple

PROTOCOL_VERSION = 2
MAX_DATAGRAM = 1400
MAX_FRAME = 64 * 1024
MAX_CATALOG_BYTES = 64 * 1024 * 1024  # decompressed; about 300,000 files
MAX_MANIFEST_FILES = 256  # per request
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


# ---------------------------------------------------------------- bitfields


def bitfield_empty(count: int) -> bytearray:
    return bytearray((count + 7) // 8)


def bitfield_set(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 0x80 >> (index & 7)


def bitfield_has(bits: bytes | bytearray | None, index: int) -> bool:
    """Bit `index` of a bitfield; None means every bit is set."""
    if bits is None:
        return True
    byte = index >> 3
    return byte < len(bits) and bool(bits[byte] & (0x80 >> (index & 7)))


def bitfield_count(bits: bytes | bytearray) -> int:
    return sum(bin(b).count("1") for b in bits)


def bitfield_indices(bits: bytes | bytearray | None, count: int) -> list[int]:
    return [i for i in range(count) if bitfield_has(bits, i)]


def _check_bitfield(bits: bytes, count: int) -> None:
    if len(bits) != (count + 7) // 8:
        raise MalformedMessage("bitfield length does not match the chunk count")
    spare = len(bits) * 8 - count
    if spare and bits[-1] & ((1 << spare) - 1):
        raise MalformedMessage("bitfield has bits past the last chunk")


# ---------------------------------------------------------------- field checks


def _obj(data: bytes, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise MessageTooLarge(f"{len(data)} bytes, limit {limit}")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
        raise MalformedMessage("not JSON") from exc
    if not isinstance(raw, dict):
        raise MalformedMessage("not a JSON object")
    return raw


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = raw.get(key)
    if type(value) is not int or not low <= value <= high:
        raise MalformedMessage(f"{key!r} must be an integer in [{low}, {high}]")
    return value


def _num(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedMessage(f"{key!r} must be a number")
    return float(value)


def _str(raw: dict[str, Any], key: str, max_bytes: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise MalformedMessage(f"{key!r} must be a string")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise MessageTooLarge(f"{key!r} longer than {max_bytes} bytes")
    if not value.isprintable():
        raise MalformedMessage(f"{key!r} contains control characters")
    return value


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise MalformedMessage(f"{key!r} must be true or false")
    return value


def _hex(raw: dict[str, Any], key: str, length: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or len(value) != length or not HEX_RE.fullmatch(value):
        raise MalformedMessage(f"{key!r} must be {length} lowercase hex digits")
    return value


def check_sha(value: object) -> str:
    if not isinstance(value, str) or not SHA_RE.fullmatch(value):
        raise MalformedMessage("not a SHA-256 in lowercase hex")
    return value


def check_name(name: object) -> str:
    """A relative '/'-separated file name that cannot leave the folder it lands in."""
    if not isinstance(name, str) or not name:
        raise MalformedMessage("file name must be a non-empty string")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedMessage("file name is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise MessageTooLarge("file name too long")
    if not name.isprintable() or "\\" in name:
        raise MalformedMessage("file name contains control characters or backslashes")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise MalformedMessage("file name is absolute")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise MalformedMessage("file name has an empty, '.' or '..' part")
    if any(len(part.encode("utf-8")) > 255 for part in parts):
        raise MalformedMessage("file name has a part longer than 255 bytes")
    return name


def check_chunk_size(value: int) -> int:
    if value % CHUNK_ALIGN:
        raise MalformedMessage(f"chunk size {value} is not a multiple of {CHUNK_ALIGN}")
    return value


def _file_key(raw: dict[str, Any]) -> FileKey:
    return FileKey(
        check_sha(raw.get("sha")),
        check_chunk_size(_int(raw, "cs", MIN_CHUNK, MAX_CHUNK)),
        check_sha(raw.get("rt")),
    )


def _key_fields(key: FileKey) -> dict[str, Any]:
    return {"sha": key.sha256, "cs": key.chunk_size, "rt": key.root}


def _check_version(raw: dict[str, Any], what: str) -> None:
    version = raw.get("p2p")
    if type(version) is int and version != PROTOCOL_VERSION and 0 < version < 1000:
        raise WrongVersion(
            f"{what} speaks p2pshare protocol v{version}; this node speaks v{PROTOCOL_VERSION}"
        )
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise WrongVersion(f"{what} is not p2pshare (no protocol version)")


# ---------------------------------------------------------------- HMAC


def _mac(key: str, message: bytes) -> str:
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _canonical(raw: dict[str, Any]) -> bytes:
    try:
        return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate from JSON escapes
        raise MalformedMessage("text that is not valid Unicode") from None


# ---------------------------------------------------------------- UDP announce


@dataclass(frozen=True)
class Announce:
    node_id: str
    username: str
    tcp_port: int
    catalog_version: int
    seq: int
    sent_at: float
    # SHA-256 of the node's certificate: its identity, which a client pins when it speaks
    # TLS to it (inside the HMAC when a network key is set). None from 0.1 nodes.
    fingerprint: str | None = None
    tls: bool = False  # it accepts TLS connections only


def encode_announce(ann: Announce, *, key: str | None) -> bytes:
    """One datagram; raises MessageTooLarge if it would not fit (it always should)."""
    raw: dict[str, Any] = {
        "p2p": PROTOCOL_VERSION,
        "t": "announce",
        "node": ann.node_id,
        "user": ann.username,
        "port": ann.tcp_port,
        "cv": ann.catalog_version,
        "seq": ann.seq,
        "ts": round(ann.sent_at, 3),
    }
    if ann.fingerprint is not None:
        raw["fp"] = ann.fingerprint
    if ann.tls:
        raw["tls"] = True
    if key is not None:
        raw["mac"] = _mac(key, _canonical(raw))
    data = _canonical(raw)
    if len(data) > MAX_DATAGRAM:
        raise MessageTooLarge(f"announcement of {len(data)} bytes")
    return data


def decode_announce(data: bytes, *, key: str | None, now: float, max_age: float) -> Announce:
    """Parse and validate one datagram. Raises ProtocolError, nothing else.

    With a key, the datagram must carry a valid HMAC and a timestamp within
    `max_age` seconds of `now`; replays inside that window are the caller's
    to refuse by `seq`.
    """
    raw = _obj(data, MAX_DATAGRAM)
    _check_version(raw, "the announcement")
    if raw.get("t") != "announce":
        raise MalformedMessage("not an announcement")
    mac = raw.pop("mac", None)
    if key is None and mac is not None:
        # A keyed network is not ours: we could never fetch its catalog or chunks.
        raise WrongNetworkKey("announcement carries a network key HMAC and we have no network key")
    if key is not None:
        if not isinstance(mac, str) or not re.fullmatch(r"[0-9a-f]{64}", mac):
            raise WrongNetworkKey("announcement carries no valid network key HMAC")
        if not hmac.compare_digest(mac, _mac(key, _canonical(raw))):
            raise WrongNetworkKey("announcement HMAC does not match our network key")
    ann = Announce(
        node_id=_hex(raw, "node", NODE_ID_HEX),
        username=_str(raw, "user", MAX_USERNAME_BYTES),
        tcp_port=_int(raw, "port", 1, 65535),
        catalog_version=_int(raw, "cv", 0, 2**62),
        seq=_int(raw, "seq", 0, 2**62),
        sent_at=_num(raw, "ts"),
        fingerprint=_hex(raw, "fp", FINGERPRINT_HEX) if "fp" in raw else None,
        tls=_bool(raw, "tls") if "tls" in raw else False,
    )
    if ann.tls and ann.fingerprint is None:
        raise MalformedMessage("announces TLS without a certificate fingerprint")
    if key is not None and abs(now - ann.sent_at) > max_age:
        raise WrongNetworkKey(f"announcement timestamp is {now - ann.sent_at:.0f} s off")
    return ann


# ---------------------------------------------------------------- TCP frames


def frame(raw: dict[str, Any]) -> bytes:
    body = json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME:
        raise MessageTooLarge(f"frame of {len(body)} bytes")
    return FRAME_HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte frame header. Raises ProtocolError."""
    if len(header) != FRAME_HEADER.size:
        raise MalformedMessage("frame header is not 4 bytes")
    (length,) = FRAME_HEADER.unpack(header)
    if length > MAX_FRAME:
        raise MessageTooLarge(f"frame of {length} bytes, limit {MAX_FRAME}")
    return int(length)


# Requests -------------------------------------------------------------------


@dataclass(frozen=True)
class AuthRequest:
    mac: str
    # Under TLS, the client's own fingerprint, bound into the MAC with the server's.
    fingerprint: str | None = None


@dataclass(frozen=True)
class CatalogRequest:
    pass


@dataclass(frozen=True)
class ManifestRequest:
    files: tuple[FileKey, ...]


@dataclass(frozen=True)
class HaveRequest:
    file: FileKey


@dataclass(frozen=True)
class ChunkRequest:
    file: FileKey
    index: int
    offset: int  # within the chunk
    length: int  # 0: to the end of the chunk


Request = AuthRequest | CatalogRequest | ManifestRequest | HaveRequest | ChunkRequest


def auth_mac(key: str, nonce: str, channel: tuple[str, str] | None = None) -> str:
    """The client's proof of the key for one connection: an HMAC of the server's nonce and,
    under TLS, of `channel` = (server fingerprint, client fingerprint). A proof recorded or
    relayed to another server, or through a relay with its own certificate, is worthless."""
    bound = b"" if channel is None else b"\0".join((b"", *(fp.encode() for fp in channel)))
    return _mac(key, AUTH_CONTEXT + nonce.encode() + bound)


def check_auth(
    req: AuthRequest, *, key: str, nonce: str, server_fingerprint: str | None = None
) -> None:
    """Raises WrongNetworkKey unless the client proved it holds our key (under TLS: for this
    server's fingerprint and the client fingerprint it names)."""
    channel = None
    if server_fingerprint is not None:
        if req.fingerprint is None:
            raise WrongNetworkKey("the key proof is not bound to this TLS connection")
        channel = (server_fingerprint, req.fingerprint)
    if not hmac.compare_digest(req.mac, auth_mac(key, nonce, channel)):
        raise WrongNetworkKey("wrong network key")


def encode_request(req: Request) -> bytes:
    raw: dict[str, Any]
    if isinstance(req, AuthRequest):
        raw = {"op": "auth", "mac": req.mac}
        if req.fingerprint is not None:
            raw["fp"] = req.fingerprint
    elif isinstance(req, CatalogRequest):
        raw = {"op": "catalog"}
    elif isinstance(req, ManifestRequest):
        raw = {"op": "manifest", "files": [list(f) for f in req.files]}
    elif isinstance(req, HaveRequest):
        raw = {"op": "have", **_key_fields(req.file)}
    else:
        raw = {
            "op": "get",
            **_key_fields(req.file),
            "i": req.index,
            "off": req.offset,
            "len": req.length,
        }
    return frame(raw)


def decode_request(body: bytes) -> Request:
    """One request frame body. Raises ProtocolError."""
    raw = _obj(body, MAX_FRAME)
    op = raw.get("op")
    if op == "get":
        return ChunkRequest(
            _file_key(raw),
            _int(raw, "i", 0, MAX_CHUNKS_PER_FILE),
            _int(raw, "off", 0, MAX_CHUNK),
            _int(raw, "len", 0, MAX_CHUNK),
        )
    if op == "have":
        return HaveRequest(_file_key(raw))
    if op == "catalog":
        return CatalogRequest()
    if op == "auth":
        fp = _hex(raw, "fp", FINGERPRINT_HEX) if "fp" in raw else None
        return AuthRequest(_hex(raw, "mac", 64), fp)
    if op == "manifest":
        files = raw.get("files")
        if not isinstance(files, list) or not 0 < len(files) <= MAX_MANIFEST_FILES:
            raise MalformedMessage(f"'files' must list 1 to {MAX_MANIFEST_FILES} files")
        keys = []
        for item in files:
            if not isinstance(item, list) or len(item) != 3:
                raise MalformedMessage("each file must be [sha256, chunk_size, root]")
            keys.append(_file_key({"sha": item[0], "cs": item[1], "rt": item[2]}))
        return ManifestRequest(tuple(keys))
    raise MalformedMessage(f"unknown request {str(op)[:32]!r}")


# Replies --------------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    """The server's first frame, in clear. Under TLS it says so, and the client's TLS
    handshake follows; a client expecting TLS refuses a welcome without it (a downgrade)."""

    nonce: str
    auth_required: bool
    tls: bool = False


@dataclass(frozen=True)
class ChunkHeader:
    index: int
    offset: int
    length: int


def encode_welcome(w: Welcome) -> bytes:
    raw = {"p2p": PROTOCOL_VERSION, "op": "welcome", "nonce": w.nonce, "auth": w.auth_required}
    if w.tls:
        raw["tls"] = True
    return frame(raw)


def decode_welcome(body: bytes) -> Welcome:
    raw = _obj(body, MAX_FRAME)
    _check_version(raw, "the peer")
    if raw.get("op") != "welcome":
        raise MalformedMessage("the server did not start with a welcome")
    auth = _bool(raw, "auth")
    tls = _bool(raw, "tls") if "tls" in raw else False
    return Welcome(_hex(raw, "nonce", NONCE_HEX), auth, tls)


def encode_error(message: str) -> bytes:
    return frame({"ok": False, "error": message[:200]})


def encode_ok(**fields: Any) -> bytes:
    return frame({"ok": True, **fields})


def decode_reply(body: bytes) -> dict[str, Any]:
    """A reply header; raises RemoteRefused for an error reply, ProtocolError if malformed."""
    raw = _obj(body, MAX_FRAME)
    ok = raw.get("ok")
    if ok is False:
        error = raw.get("error")
        raise RemoteRefused(error[:200] if isinstance(error, str) else "refused")
    if ok is not True:
        raise MalformedMessage("reply has no 'ok'")
    return raw


def payload_length(reply: dict[str, Any], limit: int) -> int:
    return _int(reply, "len", 0, limit)


def encode_chunk_header(h: ChunkHeader) -> bytes:
    return encode_ok(i=h.index, off=h.offset, len=h.length)


def decode_chunk_header(body: bytes, *, expect: ChunkRequest, chunk_len: int) -> ChunkHeader:
    """The header before chunk bytes; must answer exactly what was asked. Raises ProtocolError."""
    raw = decode_reply(body)
    header = ChunkHeader(
        _int(raw, "i", 0, MAX_CHUNKS_PER_FILE),
        _int(raw, "off", 0, MAX_CHUNK),
        _int(raw, "len", 0, MAX_CHUNK),
    )
    want = expect.length or chunk_len - expect.offset
    if (header.index, header.offset, header.length) != (expect.index, expect.offset, want):
        raise MalformedMessage("chunk reply does not match the request")
    return header


def encode_have(bits: bytes | None, count: int) -> bytes:
    return encode_ok(n=count, bits=None if bits is None else base64.b64encode(bits).decode())


def decode_have(body: bytes, *, chunks: int) -> bytes | None:
    """A holdings reply: the bitfield, or None when the peer has every chunk."""
    raw = decode_reply(body)
    return _bits(raw.get("bits"), chunks)


def _bits(value: object, chunks: int) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedMessage("bitfield must be base64 or null")
    try:
        bits = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("bitfield is not base64") from None
    _check_bitfield(bits, chunks)
    return bits


# Catalog and manifests (compressed JSON payloads) ------------------------


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

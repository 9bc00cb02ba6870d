"""TCP frames: requests, the welcome, replies and chunk headers."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any

from p2pshare.services.protocol.announce import OLD_VERSION_KEY, _mac
from p2pshare.services.protocol.bitfield import _check_bitfield
from p2pshare.services.protocol.fields import (
    _bool,
    _check_version,
    _file_key,
    _hex,
    _int,
    _key_fields,
    _obj,
)
from p2pshare.services.protocol.limits import (
    AUTH_CONTEXT,
    CATALOG_EPOCH_HEX,
    FINGERPRINT_HEX,
    FRAME_HEADER,
    MAX_CHUNK,
    MAX_CHUNKS_PER_FILE,
    MAX_FRAME,
    MAX_MANIFEST_FILES,
    NONCE_HEX,
    PROTOCOL_VERSION,
    SERVER_AUTH_CONTEXT,
    FileKey,
    MalformedMessage,
    MessageTooLarge,
    RemoteRefused,
    WrongNetworkKey,
)

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
    # The client's own nonce: the server proves the key in turn by an HMAC of it, so a
    # client learns it speaks to a node of its network, with or without TLS.
    nonce: str | None = None


@dataclass(frozen=True)
class CatalogRequest:
    pass


@dataclass(frozen=True)
class ChangesRequest:
    """The catalog's changes after sequence number `since` of the log named `epoch`; with
    another epoch (or none), or a `since` the log cannot answer from, the whole catalog."""

    epoch: str | None
    since: int


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


Request = (
    AuthRequest | CatalogRequest | ChangesRequest | ManifestRequest | HaveRequest | ChunkRequest
)


def auth_mac(key: str, nonce: str, channel: tuple[str, str] | None = None) -> str:
    """The client's proof of the key for one connection: an HMAC of the server's nonce and,
    under TLS, of `channel` = (server fingerprint, client fingerprint). A proof recorded or
    relayed to another server, or through a relay with its own certificate, is worthless."""
    bound = b"" if channel is None else b"\0".join((b"", *(fp.encode() for fp in channel)))
    return _mac(key, AUTH_CONTEXT + nonce.encode() + bound)


def server_auth_mac(
    key: str, nonce: str, client_nonce: str, channel: tuple[str, str] | None = None
) -> str:
    """The server's proof of the key: an HMAC of both nonces (and, under TLS, the channel)
    under its own label, so a client's proof can never be sent back as the server's."""
    bound = b"" if channel is None else b"\0".join((b"", *(fp.encode() for fp in channel)))
    return _mac(key, SERVER_AUTH_CONTEXT + nonce.encode() + b"\0" + client_nonce.encode() + bound)


def check_auth(
    req: AuthRequest,
    *,
    key: str,
    nonce: str,
    server_fingerprint: str | None = None,
    old_key: str | None = None,
) -> tuple[str, str] | None:
    """Raises WrongNetworkKey unless the client proved it holds our key (under TLS: for this
    server's fingerprint and the client fingerprint it names). Returns the channel the
    proof is bound to (None in clear). `old_key`: the key as set, which p2pshare before key
    derivation used raw, so such a client is told what it is."""
    channel = None
    if server_fingerprint is not None:
        if req.fingerprint is None:
            raise WrongNetworkKey("the key proof is not bound to this TLS connection")
        channel = (server_fingerprint, req.fingerprint)
    if not hmac.compare_digest(req.mac, auth_mac(key, nonce, channel)):
        old = None if old_key is None else auth_mac(old_key, nonce, channel)
        if old is not None and hmac.compare_digest(req.mac, old):
            raise WrongNetworkKey(OLD_VERSION_KEY)
        raise WrongNetworkKey("wrong network key")
    if req.nonce is None:
        raise WrongNetworkKey("the key proof asks for no proof in return")
    return channel


def check_server_auth(
    reply: dict[str, Any],
    *,
    key: str,
    nonce: str,
    client_nonce: str,
    channel: tuple[str, str] | None,
) -> None:
    """Raises WrongNetworkKey unless the server's ok to our proof proves the key in turn."""
    mac = reply.get("mac")
    want = server_auth_mac(key, nonce, client_nonce, channel)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, want):
        raise WrongNetworkKey(
            "the peer did not prove the network key (a node without it, "
            "or of an older p2pshare); refusing it"
        )


# A chunk request and its reply header go once a chunk: for a folder of small files,
# once a file on each side, where json.dumps of a dict cost a tenth of the downloader's
# CPU. They are formatted directly, byte for byte what json.dumps(separators=(",", ":"))
# makes of the same fields in the same order, so every decoder reads them unchanged.
_GET = '{"op":"get","sha":"%s","cs":%d,"rt":"%s","i":%d,"off":%d,"len":%d}'
_CHUNK_HEADER = b'{"ok":true,"i":%d,"off":%d,"len":%d}'


def encode_request(req: Request) -> bytes:
    raw: dict[str, Any]
    if type(req) is ChunkRequest:
        key = req.file
        # Only hex reaches the wire this way (alphanumerics need no JSON escaping); any
        # other value takes json.dumps below, which escapes it.
        if key.sha256.isalnum() and (key.root.isalnum() or not key.root):
            body = (
                _GET % (key.sha256, key.chunk_size, key.root, req.index, req.offset, req.length)
            ).encode()
            return FRAME_HEADER.pack(len(body)) + body
    if isinstance(req, AuthRequest):
        raw = {"op": "auth", "mac": req.mac}
        if req.fingerprint is not None:
            raw["fp"] = req.fingerprint
        if req.nonce is not None:
            raw["cn"] = req.nonce
    elif isinstance(req, CatalogRequest):
        raw = {"op": "catalog"}
    elif isinstance(req, ChangesRequest):
        raw = {"op": "changes", "ce": req.epoch, "since": req.since}
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
    if op == "changes":
        epoch = None if raw.get("ce") is None else _hex(raw, "ce", CATALOG_EPOCH_HEX)
        return ChangesRequest(epoch, _int(raw, "since", 0, 2**62))
    if op == "auth":
        fp = _hex(raw, "fp", FINGERPRINT_HEX) if "fp" in raw else None
        client_nonce = _hex(raw, "cn", NONCE_HEX) if "cn" in raw else None
        return AuthRequest(_hex(raw, "mac", 64), fp, client_nonce)
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
    body = _CHUNK_HEADER % (h.index, h.offset, h.length)
    return FRAME_HEADER.pack(len(body)) + body


def decode_chunk_header(body: bytes, *, expect: ChunkRequest, chunk_len: int) -> ChunkHeader:
    """The header before chunk bytes; must answer exactly what was asked. Raises ProtocolError."""
    want = expect.length or chunk_len - expect.offset
    if body == _CHUNK_HEADER % (expect.index, expect.offset, want):
        return ChunkHeader(expect.index, expect.offset, want)  # as we encode it: no parse
    raw = decode_reply(body)
    header = ChunkHeader(
        _int(raw, "i", 0, MAX_CHUNKS_PER_FILE),
        _int(raw, "off", 0, MAX_CHUNK),
        _int(raw, "len", 0, MAX_CHUNK),
    )
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

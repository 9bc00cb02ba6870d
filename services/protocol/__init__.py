"""The whole wire format of p2pshare: UDP announcements and TCP requests and replies.

No sockets, database, clock or environment here: callers pass `now` and `key`.
Every `decode_*` raises only `ProtocolError` (or a subclass) on bad bytes.

UDP: one JSON object per datagram, at most MAX_DATAGRAM bytes:
    {"p2p": 2, "t": "announce", "node": <hex id>, "user": <name>, "port": <tcp>,
     "cv": <catalog version>, "seq": <n>, "ts": <unix seconds>[, "fp": <fingerprint>,
     "cert": <base64 DER>, "sig": <base64 ECDSA over the rest>][, "mac": <hex>]}

With a network key every HMAC uses the key derived from it with scrypt (netkey.py).

TCP: frames of a 4-byte big-endian length and a JSON object. The server speaks
first (a welcome with a nonce); with a network key the client answers with an
HMAC of that nonce and a nonce of its own ("cn"), and the server's ok carries an
HMAC of both ("mac"), before anything else. Then the client may pipeline requests;
replies come in order. A reply whose header has "len" is followed by that many
raw bytes: chunk data, or a zlib-compressed JSON catalog or manifest.

A file is offered as (sha256, chunk size, root). Its manifest has one 32-byte
entry per chunk: the SHA-256 chaining state after that chunk, the last entry
being the file's SHA-256 (see hashing.chain). The root is the SHA-256 of the
entries concatenated, so a manifest proves itself: one that does not hash to
the root it was offered under is refused, and a peer offering another root
for the same SHA-256 makes a different offer, never a poisoned one.
Version 2 of the protocol; version 1 (plain per-chunk hashes, no root) is refused.
"""

import importlib
from typing import TYPE_CHECKING

# Each section of the wire format is a module of this package; every public name is
# re-exported here, so `protocol.X` call sites do not depend on where X lives. They are
# imported at first use (PEP 562): p2pctl's settings need only `limits`, and importing
# every section (json, zlib, hmac, ssl's names, a dozen dataclasses) would be a good part
# of what each p2pctl command spends before its first query.
if TYPE_CHECKING:
    from p2pshare.services.protocol.announce import (
        Announce,
        AnnounceSigner,
        decode_announce,
        encode_announce,
    )
    from p2pshare.services.protocol.bitfield import (
        bitfield_count,
        bitfield_empty,
        bitfield_has,
        bitfield_indices,
        bitfield_set,
    )
    from p2pshare.services.protocol.catalog import (
        EMPTY_SHA256,
        CatalogEntry,
        CatalogPage,
        ManifestEntries,
        Manifests,
        check_manifest,
        decode_catalog,
        decode_manifests,
        decode_page,
        encode_catalog,
        encode_manifests,
        encode_page,
        encode_page_rows,
        manifest_reply_bytes,
        one_chunk_root,
        page_length,
    )
    from p2pshare.services.protocol.fields import check_chunk_size, check_name, check_sha
    from p2pshare.services.protocol.frames import (
        AuthRequest,
        CatalogRequest,
        ChangesRequest,
        ChunkHeader,
        ChunkRequest,
        HaveRequest,
        ManifestRequest,
        Request,
        Welcome,
        auth_mac,
        check_auth,
        check_server_auth,
        decode_chunk_header,
        decode_have,
        decode_reply,
        decode_request,
        decode_welcome,
        encode_chunk_header,
        encode_error,
        encode_have,
        encode_ok,
        encode_request,
        encode_welcome,
        frame,
        frame_length,
        payload_length,
        server_auth_mac,
    )
    from p2pshare.services.protocol.handshake import (
        CannotTalk,
        Channel,
        ClientHandshake,
        ServerHandshake,
        Stage,
    )
    from p2pshare.services.protocol.limits import (
        AUTH_CONTEXT,
        CATALOG_EPOCH_HEX,
        CHUNK_ALIGN,
        FINGERPRINT_HEX,
        FRAME_HEADER,
        HEX_RE,
        MANIFEST_ENTRIES_PER_REQUEST,
        MANIFEST_FETCHES_PER_PEER,
        MANIFEST_LABEL_RE,
        MAX_CATALOG_BYTES,
        MAX_CHUNK,
        MAX_CHUNKS_PER_FILE,
        MAX_DATAGRAM,
        MAX_FILE_SIZE,
        MAX_FRAME,
        MAX_MANIFEST_FILES,
        MAX_NAME_BYTES,
        MAX_PAGE_BYTES,
        MAX_USERNAME_BYTES,
        MIN_CHUNK,
        NODE_ID_HEX,
        NONCE_HEX,
        PAGE_ENTRIES,
        PROTOCOL_VERSION,
        SHA_RE,
        FileKey,
        MalformedMessage,
        MessageTooLarge,
        ProtocolError,
        RemoteRefused,
        WrongNetworkKey,
        WrongVersion,
        chunk_count,
        chunk_length,
        manifest_root,
        short_fingerprint,
    )
    from p2pshare.services.protocol.netkey import derive_network_key

# Searched in this order for a name not yet imported: the cheap sections first.
_SECTIONS = (
    "limits",
    "fields",
    "bitfield",
    "frames",
    "catalog",
    "announce",
    "handshake",
    "netkey",
)


def __getattr__(name: str) -> object:
    if name in __all__:
        for section in _SECTIONS:
            module = importlib.import_module(f"{__name__}.{section}")
            if name in vars(module):
                value = vars(module)[name]
                globals()[name] = value  # the next look finds it without this call
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CatalogPage",
    "decode_page",
    "encode_page",
    "encode_page_rows",
    "one_chunk_root",
    "page_length",
    "ChangesRequest",
    "CATALOG_EPOCH_HEX",
    "MAX_PAGE_BYTES",
    "PAGE_ENTRIES",
    "CannotTalk",
    "Channel",
    "ClientHandshake",
    "ServerHandshake",
    "Stage",
    "AUTH_CONTEXT",
    "Announce",
    "AnnounceSigner",
    "AuthRequest",
    "CHUNK_ALIGN",
    "CatalogEntry",
    "CatalogRequest",
    "ChunkHeader",
    "ChunkRequest",
    "EMPTY_SHA256",
    "FINGERPRINT_HEX",
    "FRAME_HEADER",
    "FileKey",
    "HEX_RE",
    "HaveRequest",
    "MANIFEST_ENTRIES_PER_REQUEST",
    "MANIFEST_FETCHES_PER_PEER",
    "MANIFEST_LABEL_RE",
    "manifest_reply_bytes",
    "MAX_CATALOG_BYTES",
    "MAX_CHUNK",
    "MAX_CHUNKS_PER_FILE",
    "MAX_DATAGRAM",
    "MAX_FILE_SIZE",
    "MAX_FRAME",
    "MAX_MANIFEST_FILES",
    "MAX_NAME_BYTES",
    "MAX_USERNAME_BYTES",
    "MIN_CHUNK",
    "MalformedMessage",
    "ManifestRequest",
    "ManifestEntries",
    "Manifests",
    "MessageTooLarge",
    "NODE_ID_HEX",
    "NONCE_HEX",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "RemoteRefused",
    "Request",
    "SHA_RE",
    "Welcome",
    "WrongNetworkKey",
    "WrongVersion",
    "auth_mac",
    "bitfield_count",
    "bitfield_empty",
    "bitfield_has",
    "bitfield_indices",
    "bitfield_set",
    "check_auth",
    "check_server_auth",
    "server_auth_mac",
    "derive_network_key",
    "check_chunk_size",
    "check_manifest",
    "check_name",
    "check_sha",
    "chunk_count",
    "chunk_length",
    "decode_announce",
    "decode_catalog",
    "decode_chunk_header",
    "decode_have",
    "decode_manifests",
    "decode_reply",
    "decode_request",
    "decode_welcome",
    "encode_announce",
    "encode_catalog",
    "encode_chunk_header",
    "encode_error",
    "encode_have",
    "encode_manifests",
    "encode_ok",
    "encode_request",
    "encode_welcome",
    "frame",
    "frame_length",
    "manifest_root",
    "payload_length",
    "short_fingerprint",
]

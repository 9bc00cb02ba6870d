"""Wire format: round trips, a table of bad input and its exceptions, and random bytes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pshare.services import protocol as p
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.protocol import (
    Announce,
    AuthRequest,
    CatalogEntry,
    CatalogRequest,
    ChunkHeader,
    ChunkRequest,
    FileKey,
    HaveRequest,
    MalformedMessage,
    ManifestRequest,
    MessageTooLarge,
    ProtocolError,
    RemoteRefused,
    Welcome,
    WrongNetworkKey,
    WrongVersion,
    catalog,
)

NODE = "0123456789abcdef" * 2
KEY = "correct horse battery staple"
TS = 1_700_000_000.125
CS = 16384
# Real contents with real chained manifests: their entries end in their SHA-256 and
# hash to their root, so they are what an honest peer sends.
DATA_A = bytes(range(256)) * (2 * CS // 256) + b"a"  # three chunks
DATA_B = b"b" * (CS + 100)  # two chunks
ENTRIES_A = manifest_entries(DATA_A, CS)
ENTRIES_B = manifest_entries(DATA_B, CS)
SHA_A = hashlib.sha256(DATA_A).hexdigest()
SHA_B = hashlib.sha256(DATA_B).hexdigest()
ROOT_A = p.manifest_root(ENTRIES_A)
ROOT_B = p.manifest_root(ENTRIES_B)
FK = FileKey(SHA_A, CS, ROOT_A)
FK_B = FileKey(SHA_B, CS, ROOT_B)
EMPTY = FileKey(p.EMPTY_SHA256, CS, p.manifest_root([]))


def canonical(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def announce_raw(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "p2p": 2,
        "t": "announce",
        "node": NODE,
        "user": "alice",
        "port": 5000,
        "cv": 3,
        "seq": 9,
        "ts": TS,
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not DROP}


DROP = object()


def datagram(**changes: Any) -> bytes:
    return canonical(announce_raw(**changes))


def signed(key: str = KEY, **changes: Any) -> bytes:
    """A datagram with an HMAC over its canonical JSON, as the spec describes."""
    raw = announce_raw(**changes)
    raw["mac"] = hmac.new(key.encode(), canonical(raw), hashlib.sha256).hexdigest()
    return canonical(raw)


def body(raw: Any) -> bytes:
    return json.dumps(raw).encode()


def catalog_payload(files: Any, cv: Any = 1) -> bytes:
    return zlib.compress(json.dumps({"cv": cv, "files": files}).encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ================================================================ round trips


@pytest.mark.parametrize("username", ["alice", "ünïcödé user@host", "x" * 64])
def test_announce_round_trip_without_key(username: str) -> None:
    ann = Announce(NODE, username, 5000, 7, 3, TS)
    data = p.encode_announce(ann, key=None)
    assert len(data) <= p.MAX_DATAGRAM
    assert p.decode_announce(data, key=None, now=0.0, max_age=0.0) == ann


def test_announce_round_trip_with_key() -> None:
    ann = Announce(NODE, "alice", 65535, 2**62, 2**62, TS)
    data = p.encode_announce(ann, key=KEY)
    assert b'"mac"' in data
    assert p.decode_announce(data, key=KEY, now=TS + 5, max_age=60) == ann


def test_an_announcement_with_the_key_used_raw_is_named_an_older_version() -> None:
    """p2pshare before key derivation signs with the key as set: refused, and said so."""
    ann = Announce(NODE, "alice", 5000, 7, 3, TS)
    old = p.encode_announce(ann, key=KEY)
    wire = p.derive_network_key(KEY)
    with pytest.raises(WrongNetworkKey, match="older p2pshare"):
        p.decode_announce(old, key=wire, now=TS, max_age=60, old_key=KEY)
    with pytest.raises(WrongNetworkKey, match="does not match"):
        p.decode_announce(old, key=wire, now=TS, max_age=60)
    assert p.decode_announce(p.encode_announce(ann, key=wire), key=wire, now=TS, max_age=60) == ann


def test_the_network_key_derivation_is_fixed() -> None:
    """Every node of a network derives the same key: the derivation is part of the wire."""
    assert p.derive_network_key(KEY) == p.derive_network_key(KEY) != KEY
    assert len(p.derive_network_key(KEY)) == 64
    assert p.derive_network_key(KEY) != p.derive_network_key(KEY + " ")


def test_announce_signed_as_spec_describes_is_accepted() -> None:
    ann = p.decode_announce(signed(), key=KEY, now=TS, max_age=60)
    assert ann == Announce(NODE, "alice", 5000, 3, 9, TS)


def test_announce_timestamp_is_rounded_to_milliseconds() -> None:
    data = p.encode_announce(Announce(NODE, "a", 1, 0, 0, 1.23456789), key=None)
    assert p.decode_announce(data, key=None, now=0, max_age=0).sent_at == 1.235


def frame_body(frame: bytes) -> bytes:
    header, rest = frame[:4], frame[4:]
    assert p.frame_length(header) == len(rest)
    return rest


@pytest.mark.parametrize(
    "request_",
    [
        AuthRequest(p.auth_mac(KEY, "ab" * 16)),
        CatalogRequest(),
        ManifestRequest((FK, FileKey(SHA_B, 64 * 1024 * 1024, ROOT_B))),
        ManifestRequest(
            tuple(
                FileKey(hashlib.sha256(bytes([i])).hexdigest(), CS + 64 * i, ROOT_A)
                for i in range(p.MAX_MANIFEST_FILES)
            )
        ),
        HaveRequest(FK),
        ChunkRequest(FK, 3, 100, 0),
        ChunkRequest(FK, p.MAX_CHUNKS_PER_FILE, p.MAX_CHUNK, p.MAX_CHUNK),
    ],
    ids=lambda r: type(r).__name__,
)
def test_request_round_trip(request_: p.Request) -> None:
    assert p.decode_request(frame_body(p.encode_request(request_))) == request_


def test_requests_name_a_file_by_sha_chunk_size_and_root_on_the_wire() -> None:
    """The v2 shapes other implementations must send: "rt" beside "sha" and "cs"."""
    get = json.loads(frame_body(p.encode_request(ChunkRequest(FK, 3, 100, 0))))
    assert get == {"op": "get", "sha": SHA_A, "cs": CS, "rt": ROOT_A, "i": 3, "off": 100, "len": 0}
    have = json.loads(frame_body(p.encode_request(HaveRequest(FK_B))))
    assert have == {"op": "have", "sha": SHA_B, "cs": CS, "rt": ROOT_B}
    manifest = json.loads(frame_body(p.encode_request(ManifestRequest((FK, FK_B)))))
    assert manifest == {"op": "manifest", "files": [[SHA_A, CS, ROOT_A], [SHA_B, CS, ROOT_B]]}


def test_offers_of_one_sha_with_two_roots_are_two_keys() -> None:
    other = FileKey(SHA_A, CS, ROOT_B)
    assert other != FK and len({FK, other}) == 2
    assert p.decode_request(body({"op": "have", **GET_KEY, "rt": ROOT_B})) == HaveRequest(other)


def test_manifest_root_is_sha256_of_the_raw_entries() -> None:
    raw = b"".join(bytes.fromhex(e) for e in ENTRIES_A)
    assert len(raw) == 3 * 32
    assert hashlib.sha256(raw).hexdigest() == ROOT_A
    assert p.manifest_root([]) == hashlib.sha256(b"").hexdigest() == p.EMPTY_SHA256
    assert ENTRIES_A[-1] == SHA_A  # the last entry is the file's plain SHA-256


@pytest.mark.parametrize("cs", [p.MIN_CHUNK, p.MIN_CHUNK + 64, 1 << 20, p.MAX_CHUNK])
def test_chunk_sizes_that_are_multiples_of_64_are_accepted(cs: int) -> None:
    assert p.check_chunk_size(cs) == cs
    req = p.decode_request(body({**GET, "cs": cs}))
    assert isinstance(req, ChunkRequest) and req.file == FileKey(SHA_A, cs, ROOT_A)


@pytest.mark.parametrize("cs", [p.MIN_CHUNK + 1, p.MIN_CHUNK + 32, p.MIN_CHUNK + 63, 1_000_016])
def test_chunk_size_not_a_multiple_of_64_is_malformed(cs: int) -> None:
    with pytest.raises(MalformedMessage, match="multiple of 64"):
        p.check_chunk_size(cs)
    for raw in (
        {**GET, "cs": cs},
        {"op": "have", **GET_KEY, "cs": cs},
        {"op": "manifest", "files": [[SHA_A, cs, ROOT_A]]},
    ):
        with pytest.raises(MalformedMessage, match="multiple of 64"):
            p.decode_request(body(raw))
    with pytest.raises(MalformedMessage, match="multiple of 64"):
        p.decode_catalog(catalog_payload([entry(cs=cs)]))


def test_auth_check_accepts_the_key_and_refuses_another() -> None:
    nonce, theirs = "0f" * 16, "2e" * 16
    p.check_auth(AuthRequest(p.auth_mac(KEY, nonce), None, theirs), key=KEY, nonce=nonce)
    with pytest.raises(WrongNetworkKey):
        p.check_auth(AuthRequest(p.auth_mac("other", nonce), None, theirs), key=KEY, nonce=nonce)
    with pytest.raises(WrongNetworkKey):
        p.check_auth(AuthRequest(p.auth_mac(KEY, "1f" * 16), None, theirs), key=KEY, nonce=nonce)
    # A proof asking for none in return: the client could not tell a stranger from us.
    with pytest.raises(WrongNetworkKey, match="no proof in return"):
        p.check_auth(AuthRequest(p.auth_mac(KEY, nonce)), key=KEY, nonce=nonce)
    # A client of the version before key derivation proves the key as set: named so.
    with pytest.raises(WrongNetworkKey, match="older p2pshare"):
        p.check_auth(
            AuthRequest(p.auth_mac("as set", nonce), None, theirs),
            key=KEY,
            nonce=nonce,
            old_key="as set",
        )


@pytest.mark.parametrize("auth", [True, False])
def test_welcome_round_trip(auth: bool) -> None:
    w = Welcome("ab" * 16, auth)
    assert p.decode_welcome(frame_body(p.encode_welcome(w))) == w


def test_ok_reply_and_payload_length() -> None:
    reply = p.decode_reply(frame_body(p.encode_ok(len=5, extra="x")))
    assert reply["extra"] == "x"
    assert p.payload_length(reply, 10) == 5
    with pytest.raises(MalformedMessage):
        p.payload_length(reply, 4)


def test_error_reply_raises_remote_refused_with_its_message() -> None:
    with pytest.raises(RemoteRefused, match="no such file"):
        p.decode_reply(frame_body(p.encode_error("no such file")))


@pytest.mark.parametrize(
    ("request_", "chunk_len", "header"),
    [
        (ChunkRequest(FK, 2, 0, 0), CS, ChunkHeader(2, 0, CS)),
        (ChunkRequest(FK, 2, 100, 0), CS, ChunkHeader(2, 100, CS - 100)),
        (ChunkRequest(FK, 0, 10, 20), CS, ChunkHeader(0, 10, 20)),
        (ChunkRequest(FK, 5, 0, 0), 7, ChunkHeader(5, 0, 7)),
    ],
)
def test_chunk_header_round_trip(
    request_: ChunkRequest, chunk_len: int, header: ChunkHeader
) -> None:
    data = frame_body(p.encode_chunk_header(header))
    assert p.decode_chunk_header(data, expect=request_, chunk_len=chunk_len) == header


@pytest.mark.parametrize(
    "header", [ChunkHeader(3, 0, CS), ChunkHeader(2, 1, CS - 1), ChunkHeader(2, 0, CS - 1)]
)
def test_chunk_header_answering_something_else_is_refused(header: ChunkHeader) -> None:
    data = frame_body(p.encode_chunk_header(header))
    with pytest.raises(MalformedMessage):
        p.decode_chunk_header(data, expect=ChunkRequest(FK, 2, 0, 0), chunk_len=CS)


def test_chunk_frames_are_the_json_a_dict_would_make() -> None:
    """The chunk request and header are formatted directly for speed: byte for byte what
    json.dumps makes of the fields, so any decoder reads them; a header formatted some
    other way (spaces, another order) is still read, by the JSON parser."""
    req = ChunkRequest(FK, 7, 100, 20)
    as_dict = {"op": "get", "sha": SHA_A, "cs": CS, "rt": ROOT_A, "i": 7, "off": 100, "len": 20}
    assert p.encode_request(req) == p.frame(as_dict)
    no_root = ChunkRequest(FileKey(SHA_A, CS, ""), 0, 0, 0)
    assert p.encode_request(no_root) == p.frame(
        {"op": "get", "sha": SHA_A, "cs": CS, "rt": "", "i": 0, "off": 0, "len": 0}
    )
    assert p.encode_chunk_header(ChunkHeader(7, 100, 20)) == p.encode_ok(i=7, off=100, len=20)
    spaced = json.dumps({"len": 20, "off": 100, "i": 7, "ok": True}).encode()
    assert p.decode_chunk_header(spaced, expect=req, chunk_len=CS) == ChunkHeader(7, 100, 20)


def test_a_key_that_is_not_hex_is_escaped_not_pasted_into_the_frame() -> None:
    odd = ChunkRequest(FileKey('a"b\\c', CS, 'x","op":"catalog'), 0, 0, 0)
    raw = json.loads(frame_body(p.encode_request(odd)))
    assert raw["op"] == "get" and raw["sha"] == 'a"b\\c' and raw["rt"] == 'x","op":"catalog'


def test_have_round_trip() -> None:
    bits = p.bitfield_empty(10)
    for i in (0, 3, 9):
        p.bitfield_set(bits, i)
    assert p.decode_have(frame_body(p.encode_have(bytes(bits), 10)), chunks=10) == bits
    assert p.decode_have(frame_body(p.encode_have(None, 10)), chunks=10) is None
    assert p.decode_have(frame_body(p.encode_have(b"", 0)), chunks=0) == b""


def test_catalog_round_trip() -> None:
    bits = p.bitfield_empty(3)
    p.bitfield_set(bits, 1)
    entries = [
        CatalogEntry("a/b c.txt", FK, len(DATA_A), None),
        CatalogEntry("ü.txt", FileKey(SHA_B, 32768, ROOT_B), 3 * 32768, bytes(bits)),
        CatalogEntry("empty", EMPTY, 0, None),
        # The same content offered under another root is another entry, kept apart.
        CatalogEntry("a-again.txt", FileKey(SHA_A, CS, ROOT_B), len(DATA_A), None),
        # The largest file the protocol allows at the largest chunk size.
        CatalogEntry(
            "huge.iso",
            FileKey(SHA_B, p.MAX_CHUNK, ROOT_B),
            p.MAX_CHUNKS_PER_FILE * p.MAX_CHUNK,
            None,
        ),
    ]
    assert p.decode_catalog(p.encode_catalog(entries, 42)) == (42, entries)
    assert entries[0].chunks == 3 and entries[2].chunks == 0
    assert p.decode_catalog(p.encode_catalog([], 0)) == (0, [])


def test_catalog_entries_have_six_fields_on_the_wire() -> None:
    bits = p.bitfield_empty(2)
    p.bitfield_set(bits, 0)
    raw = json.loads(
        zlib.decompress(
            p.encode_catalog(
                [
                    CatalogEntry("a.txt", FK, len(DATA_A), None),
                    CatalogEntry("b.txt", FK_B, len(DATA_B), bytes(bits)),
                ],
                7,
            )
        )
    )
    assert raw == {
        "cv": 7,
        "files": [
            ["a.txt", SHA_A, len(DATA_A), CS, ROOT_A, None],
            ["b.txt", SHA_B, len(DATA_B), CS, ROOT_B, b64(bytes(bits))],
        ],
    }


def test_manifests_round_trip() -> None:
    manifests = {FK: ENTRIES_A, FK_B: ENTRIES_B, EMPTY: []}
    # A file asked about that the peer lacks is simply absent from the reply.
    sizes = {FK: len(DATA_A), FK_B: len(DATA_B), EMPTY: 0, FileKey(SHA_B, 32768, ROOT_A): 5}
    got = p.decode_manifests(p.encode_manifests(manifests), sizes)
    assert got == p.Manifests(good=manifests, refused={})


def test_manifests_are_labelled_sha_chunk_size_root_on_the_wire() -> None:
    raw = json.loads(zlib.decompress(p.encode_manifests({FK: ENTRIES_A})))
    assert raw == {f"{SHA_A}:{CS}:{ROOT_A}": digests(ENTRIES_A)}


def test_check_manifest_returns_the_entries_of_an_honest_manifest() -> None:
    raw = b"".join(bytes.fromhex(e) for e in ENTRIES_A)
    assert p.check_manifest(FK, len(DATA_A), raw) == ENTRIES_A
    assert p.check_manifest(EMPTY, 0, b"") == []


def test_bitfield_helpers() -> None:
    bits = p.bitfield_empty(10)
    assert bits == bytearray(2)
    for i in (0, 7, 8, 9):
        p.bitfield_set(bits, i)
    assert bits == bytearray([0b1000_0001, 0b1100_0000])
    assert p.bitfield_count(bits) == 4
    assert p.bitfield_indices(bits, 10) == [0, 7, 8, 9]
    assert p.bitfield_has(bits, 7) and not p.bitfield_has(bits, 6)
    assert p.bitfield_has(None, 12345)
    assert p.bitfield_indices(None, 3) == [0, 1, 2]
    assert p.bitfield_empty(0) == bytearray() and p.bitfield_empty(8) == bytearray(1)


def test_chunk_count_and_length() -> None:
    assert [p.chunk_count(n, CS) for n in (0, 1, CS - 1, CS, CS + 1)] == [0, 1, 1, 1, 2]
    assert p.chunk_length(CS + 1, CS, 0) == CS
    assert p.chunk_length(CS + 1, CS, 1) == 1


def test_frames_larger_than_the_limit_are_refused() -> None:
    with pytest.raises(MessageTooLarge):
        p.frame({"op": "x" * p.MAX_FRAME})
    with pytest.raises(MessageTooLarge):
        p.frame_length((p.MAX_FRAME + 1).to_bytes(4, "big"))
    assert p.frame_length(p.MAX_FRAME.to_bytes(4, "big")) == p.MAX_FRAME


# ================================================================ bad announcements

BAD_ANNOUNCES = [
    pytest.param(datagram(pad="x" * p.MAX_DATAGRAM), None, MessageTooLarge, id="oversized"),
    pytest.param(b"[" * 100_000, None, MessageTooLarge, id="huge-nesting"),
    pytest.param(b"[" * 1300, None, MalformedMessage, id="deep-nesting-within-size"),
    pytest.param(b"\x8f\x13\x00\xffrandom\x01", None, MalformedMessage, id="random-bytes"),
    pytest.param(b"", None, MalformedMessage, id="empty"),
    pytest.param(b'{"p2p": 1, "user": "\xff\xfe"}', None, MalformedMessage, id="not-utf8"),
    pytest.param(b"[1, 2, 3]", None, MalformedMessage, id="json-array"),
    pytest.param(b'"announce"', None, MalformedMessage, id="json-string"),
    pytest.param(datagram(p2p=1), None, WrongVersion, id="version-1"),
    pytest.param(datagram(p2p=3), None, WrongVersion, id="version-3"),
    pytest.param(datagram(p2p="2"), None, WrongVersion, id="version-string"),
    pytest.param(datagram(p2p=2.0), None, WrongVersion, id="version-float"),
    pytest.param(datagram(p2p=True), None, WrongVersion, id="version-bool"),
    pytest.param(datagram(p2p=DROP), None, WrongVersion, id="no-version"),
    pytest.param(datagram(t="catalog"), None, MalformedMessage, id="wrong-t"),
    pytest.param(datagram(t=DROP), None, MalformedMessage, id="no-t"),
    pytest.param(datagram(port=-1), None, MalformedMessage, id="negative-port"),
    pytest.param(datagram(port=0), None, MalformedMessage, id="port-0"),
    pytest.param(datagram(port=70000), None, MalformedMessage, id="port-70000"),
    pytest.param(datagram(port=5000.0), None, MalformedMessage, id="port-float"),
    pytest.param(datagram(port="5000"), None, MalformedMessage, id="port-string"),
    pytest.param(datagram(port=True), None, MalformedMessage, id="port-bool"),
    pytest.param(datagram(node="z" * 32), None, MalformedMessage, id="node-not-hex"),
    pytest.param(datagram(node=NODE[:-1]), None, MalformedMessage, id="node-short"),
    pytest.param(datagram(node=NODE + "0"), None, MalformedMessage, id="node-long"),
    pytest.param(datagram(node=NODE.upper()), None, MalformedMessage, id="node-uppercase"),
    pytest.param(datagram(node=12345), None, MalformedMessage, id="node-int"),
    pytest.param(datagram(user="a\x07b"), None, MalformedMessage, id="user-control-char"),
    pytest.param(datagram(user="a\nb"), None, MalformedMessage, id="user-newline"),
    pytest.param(datagram(user="x" * 65), None, MessageTooLarge, id="user-too-long"),
    pytest.param(datagram(user="ü" * 33), None, MessageTooLarge, id="user-too-many-bytes"),
    pytest.param(datagram(user=None), None, MalformedMessage, id="user-null"),
    pytest.param(datagram(cv=-1), None, MalformedMessage, id="negative-cv"),
    pytest.param(datagram(seq=2**63), None, MalformedMessage, id="seq-too-big"),
    pytest.param(datagram(seq=DROP), None, MalformedMessage, id="seq-missing"),
    pytest.param(datagram(ts="now"), None, MalformedMessage, id="ts-string"),
    pytest.param(datagram(ts=True), None, MalformedMessage, id="ts-bool"),
    pytest.param(datagram(ts=float("nan")), None, MalformedMessage, id="ts-nan"),
    pytest.param(datagram(ts=float("inf")), None, MalformedMessage, id="ts-inf"),
    pytest.param(datagram(ts=float("-inf")), None, MalformedMessage, id="ts-minus-inf"),
    pytest.param(
        datagram().replace(str(TS).encode(), b"1e400"),
        None,
        MalformedMessage,
        id="ts-overflows-to-inf",
    ),
    pytest.param(signed(ts=float("nan")), KEY, MalformedMessage, id="keyed-ts-nan"),
    pytest.param(datagram(), KEY, WrongNetworkKey, id="missing-mac"),
    pytest.param(datagram(mac=5), KEY, WrongNetworkKey, id="mac-not-string"),
    pytest.param(signed("other key"), KEY, WrongNetworkKey, id="wrong-key"),
    pytest.param(signed(ts=TS - 3600), KEY, WrongNetworkKey, id="stale-ts"),
    pytest.param(signed(ts=TS + 3600), KEY, WrongNetworkKey, id="future-ts"),
    pytest.param(
        signed().replace(b'"port":5000', b'"port":5001'),
        KEY,
        WrongNetworkKey,
        id="tampered-after-signing",
    ),
]


@pytest.mark.parametrize(("data", "key", "exc"), BAD_ANNOUNCES)
def test_bad_announcement_is_refused(data: bytes, key: str | None, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        p.decode_announce(data, key=key, now=TS, max_age=60)


def v1_announcement() -> bytes:
    """What a p2pshare 0.1 node broadcasts."""
    return datagram(p2p=1)


@pytest.mark.parametrize("key", [None, KEY])
def test_v1_announcement_names_its_version(key: str | None) -> None:
    data = v1_announcement() if key is None else signed(p2p=1)
    with pytest.raises(WrongVersion) as info:
        p.decode_announce(data, key=key, now=TS, max_age=60)
    message = str(info.value)
    assert "v1" in message and f"v{p.PROTOCOL_VERSION}" in message
    assert "\n" not in message


def test_something_else_on_the_port_is_not_called_a_version() -> None:
    with pytest.raises(WrongVersion, match="not p2pshare") as info:
        p.decode_announce(datagram(p2p=DROP), key=None, now=TS, max_age=60)
    assert "v1" not in str(info.value)


def test_timestamp_is_not_checked_without_a_key() -> None:
    ann = p.decode_announce(datagram(ts=1.0), key=None, now=TS, max_age=60)
    assert ann.sent_at == 1.0


def test_keyed_announcement_with_non_ascii_mac_raises_protocol_error() -> None:
    data = datagram(mac="é" * 64)
    with pytest.raises(WrongNetworkKey):
        p.decode_announce(data, key=KEY, now=TS, max_age=60)


def test_keyed_announcement_with_lone_surrogate_raises_protocol_error() -> None:
    data = datagram(mac="0" * 64).replace(b'"alice"', b'"\\ud800"')
    with pytest.raises(ProtocolError):
        p.decode_announce(data, key=KEY, now=TS, max_age=60)


def test_unkeyed_announcement_with_lone_surrogate_is_malformed() -> None:
    data = datagram().replace(b'"alice"', b'"\\ud800"')
    with pytest.raises(MalformedMessage):
        p.decode_announce(data, key=None, now=TS, max_age=60)


# ================================================================ bad TCP messages

GET_KEY = {"sha": SHA_A, "cs": CS, "rt": ROOT_A}
GET = {"op": "get", **GET_KEY, "i": 0, "off": 0, "len": 0}

BAD_REQUESTS = [
    pytest.param(b"x" * (p.MAX_FRAME + 1), MessageTooLarge, id="oversized"),
    pytest.param(b"[" * 60_000, MalformedMessage, id="deep-nesting"),
    pytest.param(b"\xff\xfe\xfd", MalformedMessage, id="not-utf8"),
    pytest.param(b"not json", MalformedMessage, id="not-json"),
    pytest.param(body([]), MalformedMessage, id="array"),
    pytest.param(body({}), MalformedMessage, id="no-op"),
    pytest.param(body({"op": "delete"}), MalformedMessage, id="unknown-op"),
    pytest.param(body({"op": ["x"] * 1000}), MalformedMessage, id="op-list"),
    pytest.param(body({**GET, "sha": SHA_A.upper()}), MalformedMessage, id="sha-upper"),
    pytest.param(body({**GET, "sha": SHA_A[:-1]}), MalformedMessage, id="sha-short"),
    pytest.param(body({**GET, "cs": 16383}), MalformedMessage, id="cs-too-small"),
    pytest.param(body({**GET, "cs": p.MAX_CHUNK + 1}), MalformedMessage, id="cs-too-big"),
    pytest.param(body({**GET, "cs": CS + 1}), MalformedMessage, id="cs-not-64-multiple"),
    pytest.param(body({k: v for k, v in GET.items() if k != "rt"}), MalformedMessage, id="no-rt"),
    pytest.param(body({**GET, "rt": ROOT_A.upper()}), MalformedMessage, id="rt-upper"),
    pytest.param(body({**GET, "rt": ROOT_A[:-1]}), MalformedMessage, id="rt-short"),
    pytest.param(body({**GET, "rt": None}), MalformedMessage, id="rt-null"),
    pytest.param(body({**GET, "i": -1}), MalformedMessage, id="index-negative"),
    pytest.param(body({**GET, "i": True}), MalformedMessage, id="index-bool"),
    pytest.param(body({**GET, "off": p.MAX_CHUNK + 1}), MalformedMessage, id="offset-too-big"),
    pytest.param(body({**GET, "len": -1}), MalformedMessage, id="len-negative"),
    pytest.param(body({"op": "have", "sha": SHA_A}), MalformedMessage, id="have-no-cs"),
    pytest.param(
        body({"op": "have", "sha": SHA_A, "cs": CS}), MalformedMessage, id="have-no-rt-v1-shape"
    ),
    pytest.param(body({"op": "manifest", "files": []}), MalformedMessage, id="manifest-empty"),
    pytest.param(
        body({"op": "manifest", "files": [[SHA_A, CS, ROOT_A]] * 257}),
        MalformedMessage,
        id="manifest-too-many",
    ),
    pytest.param(
        body({"op": "manifest", "files": [[SHA_A]]}), MalformedMessage, id="manifest-item-short"
    ),
    pytest.param(
        body({"op": "manifest", "files": [[SHA_A, CS]]}),
        MalformedMessage,
        id="manifest-item-v1-shape",
    ),
    pytest.param(
        body({"op": "manifest", "files": [[SHA_A, CS, ROOT_A, 0]]}),
        MalformedMessage,
        id="manifest-item-long",
    ),
    pytest.param(
        body({"op": "manifest", "files": [[SHA_A, CS, "x" * 64]]}),
        MalformedMessage,
        id="manifest-root-not-hex",
    ),
    pytest.param(
        body({"op": "manifest", "files": [SHA_A]}), MalformedMessage, id="manifest-item-not-list"
    ),
    pytest.param(
        body({"op": "manifest", "files": {"a": 1}}), MalformedMessage, id="manifest-files-dict"
    ),
    pytest.param(
        body({"op": "manifest", "files": [[SHA_A, "16384", ROOT_A]]}),
        MalformedMessage,
        id="manifest-cs-string",
    ),
    pytest.param(body({"op": "auth", "mac": "ab"}), MalformedMessage, id="auth-short-mac"),
    pytest.param(body({"op": "auth"}), MalformedMessage, id="auth-no-mac"),
]


@pytest.mark.parametrize(("data", "exc"), BAD_REQUESTS)
def test_bad_request_is_refused(data: bytes, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        p.decode_request(data)


WELCOME = {"p2p": 2, "op": "welcome", "nonce": "ab" * 16, "auth": False}


def test_welcome_helper_is_accepted() -> None:
    assert p.decode_welcome(body(WELCOME)) == Welcome("ab" * 16, False)


def test_v1_welcome_names_its_version() -> None:
    with pytest.raises(WrongVersion) as info:
        p.decode_welcome(body({**WELCOME, "p2p": 1}))
    message = str(info.value)
    assert "v1" in message and f"v{p.PROTOCOL_VERSION}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("raw", "exc"),
    [
        ({**WELCOME, "p2p": 1}, WrongVersion),
        ({**WELCOME, "p2p": 3}, WrongVersion),
        ({**WELCOME, "p2p": "2"}, WrongVersion),
        ({k: v for k, v in WELCOME.items() if k != "p2p"}, WrongVersion),
        ({**WELCOME, "op": "hello"}, MalformedMessage),
        ({**WELCOME, "auth": "yes"}, MalformedMessage),
        ({**WELCOME, "auth": 1}, MalformedMessage),
        ({**WELCOME, "nonce": "ab" * 15}, MalformedMessage),
        ({**WELCOME, "nonce": "AB" * 16}, MalformedMessage),
        (["welcome"], MalformedMessage),
    ],
)
def test_bad_welcome_is_refused(raw: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        p.decode_welcome(body(raw))


@pytest.mark.parametrize(
    ("raw", "exc"),
    [
        ({"ok": False, "error": "nope"}, RemoteRefused),
        ({"ok": False, "error": 5}, RemoteRefused),
        ({"ok": False}, RemoteRefused),
        ({"ok": "true"}, MalformedMessage),
        ({"ok": 1}, MalformedMessage),
        ({}, MalformedMessage),
        ([True], MalformedMessage),
    ],
)
def test_bad_reply_is_refused(raw: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        p.decode_reply(body(raw))


@pytest.mark.parametrize(
    ("bits", "chunks"),
    [
        pytest.param("!!!!", 8, id="not-base64"),
        pytest.param("ü", 8, id="non-ascii"),
        pytest.param(5, 8, id="int"),
        pytest.param(b64(b"\xff"), 9, id="too-short"),
        pytest.param(b64(b"\xff\x00"), 8, id="too-long"),
        pytest.param(b64(b"\xff\xc0"), 9, id="spare-bit-set"),
        pytest.param(b64(b"\x01"), 7, id="last-spare-bit-set"),
        pytest.param(b64(b"\x00"), 0, id="bits-for-no-chunks"),
    ],
)
def test_bad_have_bitfield_is_refused(bits: Any, chunks: int) -> None:
    with pytest.raises(MalformedMessage):
        p.decode_have(body({"ok": True, "n": chunks, "bits": bits}), chunks=chunks)


# ================================================================ catalogs that lie

# A three-chunk file: a one-chunk entry must carry the root of its SHA-256 alone.
GOOD_ENTRY = ["a.txt", SHA_A, len(DATA_A), CS, ROOT_A, None]


def entry(**changes: Any) -> list[Any]:
    fields = dict(zip(["name", "sha", "size", "cs", "rt", "have"], GOOD_ENTRY, strict=True))
    fields.update(changes)
    return list(fields.values())


def test_good_catalog_entry_helper_is_accepted() -> None:
    [got] = p.decode_catalog(catalog_payload([entry()]))[1]
    assert got == CatalogEntry("a.txt", FK, len(DATA_A), None)


BAD_CATALOGS = [
    pytest.param(catalog_payload([entry(name="/etc/passwd")]), MalformedMessage, id="absolute"),
    pytest.param(catalog_payload([entry(name="C:/x.txt")]), MalformedMessage, id="drive"),
    pytest.param(catalog_payload([entry(name="../up.txt")]), MalformedMessage, id="dotdot-first"),
    pytest.param(catalog_payload([entry(name="a/../../b")]), MalformedMessage, id="dotdot-inner"),
    pytest.param(catalog_payload([entry(name="..")]), MalformedMessage, id="dotdot-only"),
    pytest.param(catalog_payload([entry(name="a/./b")]), MalformedMessage, id="dot-part"),
    pytest.param(catalog_payload([entry(name="a\x00b")]), MalformedMessage, id="nul"),
    pytest.param(catalog_payload([entry(name="a\nb")]), MalformedMessage, id="newline"),
    pytest.param(catalog_payload([entry(name="a\x1b[2Jb")]), MalformedMessage, id="escape"),
    pytest.param(catalog_payload([entry(name="a\\..\\b")]), MalformedMessage, id="backslash"),
    pytest.param(catalog_payload([entry(name="a//b")]), MalformedMessage, id="empty-part"),
    pytest.param(catalog_payload([entry(name="a/")]), MalformedMessage, id="trailing-slash"),
    pytest.param(catalog_payload([entry(name="")]), MalformedMessage, id="empty-name"),
    pytest.param(catalog_payload([entry(name=5)]), MalformedMessage, id="name-int"),
    pytest.param(catalog_payload([entry(name="\ud800")]), MalformedMessage, id="surrogate"),
    pytest.param(catalog_payload([entry(name="x" * 256)]), MalformedMessage, id="part-256"),
    pytest.param(
        catalog_payload([entry(name="a/" * 600 + "b")]), MessageTooLarge, id="name-too-long"
    ),
    pytest.param(catalog_payload([entry(size=-1)]), MalformedMessage, id="size-negative"),
    pytest.param(catalog_payload([entry(size=2**50 + 1)]), MalformedMessage, id="size-huge"),
    pytest.param(catalog_payload([entry(size="100")]), MalformedMessage, id="size-string"),
    pytest.param(catalog_payload([entry(size=100.0)]), MalformedMessage, id="size-float"),
    pytest.param(catalog_payload([entry(cs=16383)]), MalformedMessage, id="cs-small"),
    pytest.param(catalog_payload([entry(cs=p.MAX_CHUNK + 1)]), MalformedMessage, id="cs-big"),
    pytest.param(catalog_payload([entry(cs=CS + 32)]), MalformedMessage, id="cs-not-64-multiple"),
    pytest.param(catalog_payload([entry(rt=None)]), MalformedMessage, id="rt-null"),
    pytest.param(catalog_payload([entry(rt=ROOT_A.upper())]), MalformedMessage, id="rt-upper"),
    pytest.param(catalog_payload([entry(rt=ROOT_A[:32])]), MalformedMessage, id="rt-short"),
    pytest.param(catalog_payload([entry(rt=5)]), MalformedMessage, id="rt-int"),
    pytest.param(catalog_payload([entry(size=2**40)]), MalformedMessage, id="too-many-chunks"),
    pytest.param(catalog_payload([entry(sha=SHA_A.upper())]), MalformedMessage, id="sha-upper"),
    pytest.param(catalog_payload([entry(sha=None)]), MalformedMessage, id="sha-null"),
    pytest.param(
        catalog_payload([entry(have=b64(b"\x80\x00"))]), MalformedMessage, id="bitfield-too-long"
    ),
    pytest.param(
        catalog_payload([entry(size=9 * CS, have=b64(b"\xff"))]),
        MalformedMessage,
        id="bitfield-too-short",
    ),
    pytest.param(
        catalog_payload([entry(have=b64(b"\x10"))]), MalformedMessage, id="bitfield-spare-bits"
    ),
    pytest.param(catalog_payload([entry(have="%%%")]), MalformedMessage, id="bitfield-not-b64"),
    pytest.param(catalog_payload([entry()[:5]]), MalformedMessage, id="five-fields"),
    pytest.param(
        catalog_payload([["a.txt", SHA_A, 100, CS, None]]), MalformedMessage, id="v1-entry"
    ),
    pytest.param(catalog_payload([[*entry(), 0]]), MalformedMessage, id="seven-fields"),
    pytest.param(
        catalog_payload([entry(), entry(name="b.txt", size=101)]),
        MalformedMessage,
        id="one-offer-two-sizes",
    ),
    pytest.param(catalog_payload([{"name": "a.txt"}]), MalformedMessage, id="entry-dict"),
    pytest.param(catalog_payload({"a.txt": GOOD_ENTRY}), MalformedMessage, id="files-dict"),
    pytest.param(catalog_payload([entry()], cv=-1), MalformedMessage, id="cv-negative"),
    pytest.param(catalog_payload([entry()], cv=None), MalformedMessage, id="cv-null"),
    pytest.param(zlib.compress(b"[]"), MalformedMessage, id="array"),
    pytest.param(zlib.compress(b"\xff{}"), MalformedMessage, id="not-utf8"),
    pytest.param(b"not zlib at all", MalformedMessage, id="not-zlib"),
    pytest.param(catalog_payload([entry()])[:-6], MalformedMessage, id="truncated"),
    pytest.param(b"", MalformedMessage, id="empty"),
]


@pytest.mark.parametrize(("payload", "exc"), BAD_CATALOGS)
def test_lying_catalog_is_refused(payload: bytes, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        p.decode_catalog(payload)


def test_catalog_that_inflates_past_the_limit_is_refused() -> None:
    bomb = zlib.compress(b" " * (p.MAX_CATALOG_BYTES + 1), 1)
    assert len(bomb) < 1024 * 1024
    with pytest.raises(MessageTooLarge):
        p.decode_catalog(bomb)


@pytest.mark.parametrize(
    "name", ["a/b c.txt", "ü.txt", "..hidden", "a..b", "dir/.dotfile", "x" * 255, "日本/語.md"]
)
def test_check_name_accepts(name: str) -> None:
    assert p.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "c:x", "..", ".", "a/..", "a\\b", "a//b", "a\tb", "a\x7fb", None, b"bytes"],
)
def test_check_name_refuses(name: Any) -> None:
    with pytest.raises(ProtocolError):
        p.check_name(name)


# ================================================================ manifests that lie

ASKED = {FK: len(DATA_A)}
LABEL_A = f"{SHA_A}:{CS}:{ROOT_A}"


def manifest_payload(raw: Any) -> bytes:
    return zlib.compress(json.dumps(raw).encode())


def digests(hashes: list[str]) -> str:
    return b64(b"".join(bytes.fromhex(h) for h in hashes))


def forged(entries: list[str], index: int) -> list[str]:
    """The entries with one of them replaced by another 32-byte value."""
    out = list(entries)
    out[index] = hashlib.sha256(out[index].encode()).hexdigest()
    return out


# A reply that is not a manifest reply at all: the whole reply is refused.
BAD_MANIFEST_REPLIES = [
    pytest.param({f"{SHA_B}:{CS}:{ROOT_A}": digests(ENTRIES_A)}, id="file-not-asked"),
    pytest.param({f"{SHA_A}:32768:{ROOT_A}": digests(ENTRIES_A)}, id="chunk-size-not-asked"),
    pytest.param({f"{SHA_A}:{CS}:{ROOT_B}": digests(ENTRIES_A)}, id="root-not-asked"),
    pytest.param({f"{SHA_A}:{CS}": digests(ENTRIES_A)}, id="v1-label-without-root"),
    pytest.param({SHA_A: digests(ENTRIES_A)}, id="label-without-chunk-size"),
    pytest.param({f"{SHA_A}:-16384:{ROOT_A}": digests(ENTRIES_A)}, id="label-negative-cs"),
    pytest.param({f"{SHA_A}:{CS}:{ROOT_A.upper()}": digests(ENTRIES_A)}, id="label-root-upper"),
    pytest.param({LABEL_A + ":": digests(ENTRIES_A)}, id="label-trailing-colon"),
    pytest.param({LABEL_A: ENTRIES_A}, id="value-list"),
    pytest.param({LABEL_A: None}, id="value-null"),
    pytest.param({LABEL_A: "!!not base64!!"}, id="value-not-base64"),
    pytest.param([digests(ENTRIES_A)], id="array"),
]


@pytest.mark.parametrize("raw", BAD_MANIFEST_REPLIES)
def test_malformed_manifest_reply_is_refused(raw: Any) -> None:
    with pytest.raises(MalformedMessage):
        p.decode_manifests(manifest_payload(raw), ASKED)


# One manifest that does not prove itself: refused alone, with its reason.
REFUSED_MANIFESTS = [
    pytest.param(digests(ENTRIES_A[:2]), "entries, not 3", id="too-few-entries"),
    pytest.param(digests(ENTRIES_A * 2), "entries, not 3", id="too-many-entries"),
    pytest.param(digests([]), "entries, not 3", id="no-entries"),
    pytest.param(b64(b"\x00" * 95), "not 3", id="partial-entry"),
    pytest.param(digests(forged(ENTRIES_A, 0)), "root", id="first-entry-forged"),
    pytest.param(digests(forged(ENTRIES_A, 1)), "root", id="middle-entry-forged"),
    pytest.param(digests(forged(ENTRIES_A, 2)), "root", id="last-entry-forged"),
    pytest.param(digests([ENTRIES_A[1], ENTRIES_A[0], ENTRIES_A[2]]), "root", id="reordered"),
    pytest.param(digests(ENTRIES_B + ENTRIES_B[:1]), "root", id="another-files-entries"),
]


@pytest.mark.parametrize(("value", "reason"), REFUSED_MANIFESTS)
def test_a_manifest_that_does_not_prove_itself_is_refused_with_a_reason(
    value: str, reason: str
) -> None:
    got = p.decode_manifests(manifest_payload({LABEL_A: value}), ASKED)
    assert got.good == {}
    assert list(got.refused) == [FK]
    assert reason in got.refused[FK]


def test_a_forged_manifest_is_refused_while_the_rest_of_the_reply_is_kept() -> None:
    liar = FileKey(SHA_B, CS, ROOT_B)
    reply = {
        LABEL_A: digests(ENTRIES_A),
        f"{SHA_B}:{CS}:{ROOT_B}": digests(forged(ENTRIES_B, 0)),  # right count, right last
        f"{EMPTY.sha256}:{CS}:{EMPTY.root}": digests([]),
    }
    asked = {FK: len(DATA_A), liar: len(DATA_B), EMPTY: 0}
    got = p.decode_manifests(manifest_payload(reply), asked)
    assert got.good == {FK: ENTRIES_A, EMPTY: []}
    assert list(got.refused) == [liar]
    assert "root" in got.refused[liar]


def test_a_manifest_not_ending_in_the_files_sha_is_refused_even_under_its_own_root() -> None:
    # Entries that hash to the root they are offered under, but end elsewhere: a peer
    # offering SHA_A with DATA_B's manifest (or any made-up one) proves nothing about SHA_A.
    lie = forged(ENTRIES_A, 2)
    key = FileKey(SHA_A, CS, p.manifest_root(lie))
    reply = manifest_payload({f"{SHA_A}:{CS}:{key.root}": digests(lie)})
    got = p.decode_manifests(reply, {key: len(DATA_A)})
    assert got.good == {}
    assert "SHA-256" in got.refused[key]
    with pytest.raises(MalformedMessage, match="does not end in"):
        p.check_manifest(key, len(DATA_A), b"".join(bytes.fromhex(e) for e in lie))


def test_an_empty_files_manifest_must_be_empty_and_its_sha_that_of_nothing() -> None:
    liar = FileKey(SHA_A, CS, p.manifest_root([]))  # claims SHA_A is the empty file
    got = p.decode_manifests(manifest_payload({f"{SHA_A}:{CS}:{liar.root}": ""}), {liar: 0})
    assert got.good == {} and "SHA-256" in got.refused[liar]
    with pytest.raises(MalformedMessage):
        p.check_manifest(EMPTY, 0, bytes.fromhex(p.EMPTY_SHA256))


@pytest.mark.parametrize(
    ("size", "value"),
    [
        pytest.param(len(DATA_A), ENTRIES_A[:2], id="count"),
        pytest.param(len(DATA_A), forged(ENTRIES_A, 1), id="root"),
        pytest.param(len(DATA_A) - 1, ENTRIES_A, id="size-says-fewer-chunks"),
        pytest.param(len(DATA_A) + CS, ENTRIES_A, id="size-says-more-chunks"),
    ],
)
def test_check_manifest_refuses(size: int, value: list[str]) -> None:
    with pytest.raises(MalformedMessage):
        p.check_manifest(FK, size, bytes.fromhex("".join(value)))


def test_manifest_that_is_not_zlib_is_refused() -> None:
    with pytest.raises(MalformedMessage):
        p.decode_manifests(b"\x00\x01garbage", ASKED)


@pytest.mark.parametrize("cs_text", ["²", "1" * 5000], ids=["superscript-two", "5000-digits"])
def test_manifest_label_with_odd_digits_raises_protocol_error(cs_text: str) -> None:
    with pytest.raises(MalformedMessage):
        p.decode_manifests(
            manifest_payload({f"{SHA_A}:{cs_text}:{ROOT_A}": digests(ENTRIES_A)}), ASKED
        )


# ================================================================ random input

# No deadline and no too_slow check: on a loaded machine generating examples is slow, not wrong.
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_protocol_errors(decode: Any, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


@PROPERTY
@given(st.binary(max_size=2000), st.sampled_from([None, KEY]))
def test_random_bytes_into_decode_announce(data: bytes, key: str | None) -> None:
    only_protocol_errors(lambda d: p.decode_announce(d, key=key, now=TS, max_age=60), data)


@PROPERTY
@given(st.binary(max_size=2000))
def test_random_bytes_into_decode_request(data: bytes) -> None:
    only_protocol_errors(p.decode_request, data)


@PROPERTY
@given(st.binary(max_size=2000))
def test_random_bytes_into_decode_welcome(data: bytes) -> None:
    only_protocol_errors(p.decode_welcome, data)


@PROPERTY
@given(st.binary(max_size=2000))
def test_random_bytes_into_decode_reply(data: bytes) -> None:
    only_protocol_errors(p.decode_reply, data)


@PROPERTY
@given(st.binary(max_size=2000), st.booleans())
def test_random_bytes_into_decode_catalog(data: bytes, compress: bool) -> None:
    only_protocol_errors(p.decode_catalog, zlib.compress(data) if compress else data)


@PROPERTY
@given(st.binary(max_size=2000), st.booleans())
def test_random_bytes_into_decode_manifests(data: bytes, compress: bool) -> None:
    only_protocol_errors(
        lambda d: p.decode_manifests(d, ASKED), zlib.compress(data) if compress else data
    )


@PROPERTY
@given(st.binary(max_size=2000), st.integers(0, 64))
def test_random_bytes_into_decode_have(data: bytes, chunks: int) -> None:
    only_protocol_errors(lambda d: p.decode_have(d, chunks=chunks), data)


@PROPERTY
@given(st.binary(max_size=2000))
def test_random_bytes_into_decode_chunk_header(data: bytes) -> None:
    only_protocol_errors(
        lambda d: p.decode_chunk_header(d, expect=ChunkRequest(FK, 0, 0, 0), chunk_len=CS), data
    )


# JSON that has the right shape but wrong values reaches the field checks that
# random bytes never get past.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return good | json_values


@SHAPED
@given(
    st.fixed_dictionaries(
        {
            "p2p": maybe(st.sampled_from([1, 2])),
            "t": maybe(st.just("announce")),
            "node": maybe(st.just(NODE)),
            "user": maybe(st.text(max_size=70)),
            "port": maybe(st.integers(-10, 70000)),
            "cv": maybe(st.integers()),
            "seq": maybe(st.integers()),
            "ts": maybe(st.floats()),
        }
    )
)
def test_json_shaped_announcements_raise_only_protocol_errors(raw: dict[str, Any]) -> None:
    only_protocol_errors(
        lambda d: p.decode_announce(d, key=None, now=TS, max_age=60), json.dumps(raw).encode()
    )


@SHAPED
@given(
    st.fixed_dictionaries(
        {
            "op": st.sampled_from(["get", "have", "catalog", "auth", "manifest"]) | json_values,
            "sha": maybe(st.just(SHA_A)),
            "cs": maybe(st.integers() | st.integers(256, 1 << 20).map(lambda k: k * 64)),
            "rt": maybe(st.just(ROOT_A)),
            "i": maybe(st.integers()),
            "off": maybe(st.integers()),
            "len": maybe(st.integers()),
            "mac": maybe(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
            "files": maybe(
                st.lists(
                    st.lists(maybe(st.sampled_from([SHA_A, ROOT_A])) | st.integers(), max_size=4),
                    max_size=4,
                )
            ),
        }
    )
)
def test_json_shaped_requests_raise_only_protocol_errors(raw: dict[str, Any]) -> None:
    only_protocol_errors(p.decode_request, json.dumps(raw).encode())


@SHAPED
@given(
    maybe(st.integers(-5, 10)),
    st.lists(
        st.tuples(
            maybe(st.text(max_size=30)),
            maybe(st.just(SHA_A)),
            maybe(st.integers(-5, 2**51)),
            maybe(st.integers(0, 2**27) | st.integers(256, 1 << 20).map(lambda k: k * 64)),
            maybe(st.just(ROOT_A)),
            maybe(st.binary(max_size=4).map(b64)),
        ).map(list)
        | json_values,
        max_size=5,
    ),
)
def test_json_shaped_catalogs_raise_only_protocol_errors(cv: Any, files: list[Any]) -> None:
    only_protocol_errors(p.decode_catalog, catalog_payload(files, cv))


@SHAPED
@given(
    st.dictionaries(
        st.builds(
            lambda sha, cs, root: f"{sha}:{cs}:{root}",
            st.sampled_from([SHA_A, SHA_B]),
            st.integers() | st.just(CS),
            st.sampled_from([ROOT_A, ROOT_B]),
        )
        | st.text(alphabet=st.characters(blacklist_characters=":"), max_size=10),
        maybe(st.binary(max_size=200).map(b64)),
        max_size=4,
    )
)
def test_json_shaped_manifests_raise_only_protocol_errors(raw: dict[str, Any]) -> None:
    only_protocol_errors(lambda d: p.decode_manifests(d, ASKED), manifest_payload(raw))


@SHAPED
@given(
    st.lists(st.tuples(st.integers(0, 95), st.integers(1, 255)), max_size=4),
    st.integers(-40, 40),
)
def test_tampered_manifests_never_come_back_as_good(
    flips: list[tuple[int, int]], resize: int
) -> None:
    """Whatever a peer does to a manifest's bytes, decode keeps it only if it is the truth."""
    raw = bytearray(b"".join(bytes.fromhex(e) for e in ENTRIES_A))
    for pos, mask in flips:
        raw[pos] ^= mask
    raw = raw[: len(raw) + resize] if resize < 0 else raw + bytes(resize)
    asked = {FK: len(DATA_A), FK_B: len(DATA_B)}
    reply = {LABEL_A: b64(bytes(raw)), f"{SHA_B}:{CS}:{ROOT_B}": digests(ENTRIES_B)}
    got = p.decode_manifests(manifest_payload(reply), asked)
    assert got.good[FK_B] == ENTRIES_B  # the honest neighbour always survives
    if FK in got.good:
        assert got.good[FK] == ENTRIES_A and FK not in got.refused
    else:
        assert got.refused[FK]
        assert bytes(raw) != b"".join(bytes.fromhex(e) for e in ENTRIES_A)


# ================================================================ catalog pages (issue 34)

EPOCH = "0123456789abcdef"


def page_bytes(page: p.CatalogPage) -> tuple[dict[str, Any], bytes]:
    raw = p.encode_page(page)
    n = p.frame_length(raw[:4])
    return p.decode_reply(raw[4 : 4 + n]), raw[4 + n :]


def test_catalog_page_round_trip() -> None:
    entries = [
        CatalogEntry("a.txt", FK, len(DATA_A), None),
        CatalogEntry("b", FK_B, len(DATA_B), b"\x80"),
    ]
    page = p.CatalogPage(EPOCH, 7, 19, False, True, entries, [("gone.txt", SHA_B)])
    header, payload = page_bytes(page)
    assert p.page_length(header) == len(payload)
    assert p.decode_page(header, payload) == page


def test_changes_request_round_trip() -> None:
    for req in (p.ChangesRequest(None, 0), p.ChangesRequest(EPOCH, 2**40)):
        assert p.decode_request(p.encode_request(req)[4:]) == req


def test_announcement_carries_the_catalog_log() -> None:
    ann = p.Announce("1" * 32, "u", 5, 3, 1, TS, catalog_epoch=EPOCH)
    assert p.decode_announce(p.encode_announce(ann, key=None), key=None, now=TS, max_age=5) == ann


def one_chunk_entry(root: str) -> CatalogEntry:
    sha = hashlib.sha256(b"x").hexdigest()
    return CatalogEntry("x", FileKey(sha, CS, root), 1, None)


@pytest.mark.parametrize(
    ("header", "payload", "error"),
    [
        pytest.param({"from": 9, "to": 3}, None, MalformedMessage, id="ends-before-start"),
        pytest.param({"ce": "XYZ"}, None, MalformedMessage, id="bad-epoch"),
        pytest.param({"reset": 1}, None, MalformedMessage, id="reset-not-bool"),
        pytest.param({}, zlib.compress(b'{"files":[]}'), MalformedMessage, id="no-gone"),
        pytest.param(
            {},
            zlib.compress(b'{"files":[],"gone":[["../x","' + b"a" * 64 + b'"]]}'),
            MalformedMessage,
            id="gone-unsafe-name",
        ),
        pytest.param(
            {},
            zlib.compress(b'{"files":[],"gone":[["x","A"]]}'),
            MalformedMessage,
            id="gone-bad-sha",
        ),
        pytest.param(
            {},
            zlib.compress(json.dumps({"files": [], "gone": [["x", "a" * 64]] * 5001}).encode()),
            MessageTooLarge,
            id="too-many-entries",
        ),
        pytest.param(
            {}, zlib.compress(b" " * (p.MAX_PAGE_BYTES + 1)), MessageTooLarge, id="inflates-past"
        ),
    ],
)
def test_lying_catalog_page_is_refused(
    header: dict[str, Any], payload: bytes | None, error: type[Exception]
) -> None:
    good_header, good_payload = page_bytes(p.CatalogPage(EPOCH, 0, 1, False, False, [], []))
    with pytest.raises(error):
        p.decode_page({**good_header, **header}, good_payload if payload is None else payload)


def test_one_chunk_entry_must_carry_the_root_of_its_sha256() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    good = one_chunk_entry(p.one_chunk_root(sha))
    header, payload = page_bytes(p.CatalogPage(EPOCH, 0, 1, False, False, [good], []))
    assert p.decode_page(header, payload).entries == [good]
    lying = one_chunk_entry("ab" * 32)
    header, payload = page_bytes(p.CatalogPage(EPOCH, 0, 1, False, False, [lying], []))
    with pytest.raises(MalformedMessage, match="root"):
        p.decode_page(header, payload)


# ================================================================ a page's entries checked at once

# Entries that lie in one field each, and names that look odd but are allowed: checked
# among many good entries, a page's entries go through the bulk check first.
LYING_ENTRIES = [
    entry(name="/etc/passwd"),
    entry(name="C:/x.txt"),
    entry(name="a/../../b"),
    entry(name=".."),
    entry(name="a/./b"),
    entry(name="./a"),
    entry(name="a/."),
    entry(name="a\nb"),
    entry(name="a\\b"),
    entry(name="a//b"),
    entry(name="a/"),
    entry(name=""),
    entry(name=5),
    entry(name="\ud800"),
    entry(name="x" * 256),
    entry(name="d/" + "ü" * 128),
    entry(name="a/" * 600 + "b"),
    entry(size=-1),
    entry(size=True),
    entry(size=2**50 + 1),
    entry(size=100.0),
    entry(cs=CS + 32),
    entry(cs=16383),
    entry(rt=ROOT_A.upper()),
    entry(rt=ROOT_A[:63] + "g"),
    entry(rt=ROOT_A[:32]),
    entry(sha=SHA_A[:63] + "é"),
    entry(sha=None),
    entry(size=2**40),
    entry(size=100, rt=ROOT_A),
    entry(have=b64(b"\x10")),
    entry(have="%%%"),
    entry()[:5],
    [*entry(), 0],
    {"name": "a.txt"},
    "a.txt",
]
ODD_GOOD_NAMES = [
    "...",
    "..hidden",
    "a..b/c",
    "ab:c/d",
    "1:x",
    "x" * 255,
    "d/" + "ü" * 127,
    "日本/語.md",
]


def many_good(count: int) -> list[list[Any]]:
    return [entry(name=f"d{i // 10}/f{i}.bin") for i in range(count)]


@pytest.mark.parametrize("lie", LYING_ENTRIES, ids=range(len(LYING_ENTRIES)))
def test_a_lie_among_many_good_entries_is_refused_for_its_own_reason(lie: Any) -> None:
    files = [*many_good(50), lie, *many_good(3), entry(size=-2)]
    with pytest.raises(ProtocolError) as one_by_one:
        catalog._entries_one_by_one(files)
    with pytest.raises(type(one_by_one.value), match=f"^{re.escape(str(one_by_one.value))}$"):
        p.decode_catalog(catalog_payload(files))


def test_odd_but_allowed_names_among_many_are_taken() -> None:
    files = [*many_good(50), *(entry(name=name) for name in ODD_GOOD_NAMES)]
    entries = p.decode_catalog(catalog_payload(files))[1]
    assert [e.name for e in entries[50:]] == ODD_GOOD_NAMES
    assert entries == catalog._entries_one_by_one(files)


@SHAPED
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*ODD_GOOD_NAMES, "a.txt", "b/c", "/x", "a//b", "..", "C:x", "a\\b"]),
            st.sampled_from([SHA_A, SHA_B, SHA_A.upper()]),
            st.sampled_from([len(DATA_A), len(DATA_B), 0, 1, -1]),
            st.sampled_from([CS, 2 * CS, CS + 1]),
            st.sampled_from([ROOT_A, ROOT_B, p.one_chunk_root(SHA_A)]),
            st.sampled_from([None, b64(b"\xe0"), b64(b"\xc0"), b64(b"\x10"), "%"]),
        ).map(list),
        max_size=8,
    )
)
def test_entries_checked_at_once_agree_with_one_by_one(files: list[Any]) -> None:
    assert outcome(catalog._entries, files) == outcome(catalog._entries_one_by_one, files)


def outcome(check: Any, files: list[Any]) -> Any:
    """What a check of catalog entries returns, or the error it raises and its message."""
    try:
        return check(files)
    except ProtocolError as exc:
        return (type(exc), str(exc))

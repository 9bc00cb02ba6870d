"""Chained SHA-256 (services/hashing/chain.py) against hashlib and a pure-Python SHA-256.

hashlib cannot show a chaining state, so the states themselves are checked against
`PySha256` below: the FIPS 180-4 compression function written out in Python, which
shares nothing with libcrypto. hashlib checks every finished digest.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pshare.db.values import Stamp
from p2pshare.services import protocol as p
from p2pshare.services.hashing import files as hashing
from p2pshare.services.hashing.chain import (
    BLOCK,
    INITIAL_STATE,
    ChainHasher,
    check_available,
    manifest_entries,
    verify_chunk,
)

KIB = 1024

# ---------------------------------------------------------------- an independent SHA-256

_K = [
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
]  # fmt: skip
_M = 0xFFFFFFFF
# FIPS 180-4 5.3.3: the first 32 bits of the fractional parts of the first 8 primes' roots.
_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]  # fmt: skip  # noqa: E501


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M


def _compress(h: list[int], block: bytes) -> list[int]:
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
        s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M)
    a, b, c, d, e, f, g, hh = h
    for t in range(64):
        t1 = hh + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        a, b, c, d, e, f, g, hh = (t1 + t2) & _M, a, b, c, (d + t1) & _M, e, f, g
    return [(x + y) & _M for x, y in zip(h, (a, b, c, d, e, f, g, hh), strict=True)]


class PySha256:
    """SHA-256 from any chaining state, in plain Python: slow, but shares no code with OpenSSL."""

    def __init__(self, state: bytes | None = None, length: int = 0) -> None:
        self.h = list(struct.unpack(">8I", state)) if state else list(_IV)
        self.length = length
        self.pending = b""

    def update(self, data: bytes) -> PySha256:
        self.length += len(data)
        buf = self.pending + data
        full = len(buf) - len(buf) % 64
        for i in range(0, full, 64):
            self.h = _compress(self.h, buf[i : i + 64])
        self.pending = buf[full:]
        return self

    def state(self) -> bytes:
        assert not self.pending
        return struct.pack(">8I", *self.h)

    def digest(self) -> bytes:
        tail = self.pending + b"\x80" + b"\0" * ((55 - len(self.pending)) % 64)
        tail += struct.pack(">Q", (self.length * 8) & (2**64 - 1))
        h = self.h
        for i in range(0, len(tail), 64):
            h = _compress(h, tail[i : i + 64])
        return struct.pack(">8I", *h)


@functools.lru_cache(maxsize=64)
def py_entries(data: bytes, chunk_size: int) -> list[str]:
    """The manifest as the spec defines it, computed with PySha256 (for small data)."""
    h = PySha256()
    entries = []
    for start in range(0, len(data), chunk_size):
        h.update(data[start : start + chunk_size])
        last = start + chunk_size >= len(data)
        entries.append(h.digest().hex() if last else h.state().hex())
    return entries


def test_the_python_reference_is_sha256() -> None:
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000):
        data = random.Random(size).randbytes(size)
        assert PySha256().update(data).digest() == hashlib.sha256(data).digest()
    assert PySha256().state() == INITIAL_STATE


# ---------------------------------------------------------------- helpers


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chain_entries(data: bytes, chunk_size: int) -> list[bytes]:
    """Entries computed chunk after chunk with one ChainHasher (the spec's definition)."""
    h = ChainHasher()
    out = []
    for start in range(0, len(data), chunk_size):
        h.update(data[start : start + chunk_size])
        out.append(h.digest() if start + chunk_size >= len(data) else h.state())
    return out


def verifies(data: bytes, entries: list[bytes], chunk_size: int, index: int) -> bool:
    """Chunk `index` checked from its predecessor's entry alone, with a fresh hasher."""
    before = INITIAL_STATE if index == 0 else entries[index - 1]
    h = ChainHasher(before, index * chunk_size)
    h.update(data[index * chunk_size : (index + 1) * chunk_size])
    last = index == len(entries) - 1
    return (h.digest() if last else h.state()) == entries[index]


chunk_sizes = st.one_of(
    st.integers(1, 64).map(lambda k: k * BLOCK),  # 64 B .. 4 KiB: many chunks
    st.integers(1, 8 * KIB).map(lambda k: k * BLOCK),  # up to 512 KiB: few chunks
)
data_sizes = st.one_of(st.integers(0, 600), st.integers(0, 300 * KIB))
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_libcrypto_is_usable_here() -> None:
    check_available()


# ---------------------------------------------------------------- properties against hashlib


@PROPERTY
@given(size=data_sizes, chunk_size=chunk_sizes, seed=st.integers(0, 2**32), rnd=st.randoms())
def test_every_chunk_verifies_alone_from_its_predecessor(
    size: int, chunk_size: int, seed: int, rnd: random.Random
) -> None:
    data = data_of(seed, size)
    entries = chain_entries(data, chunk_size)
    assert len(entries) == p.chunk_count(size, chunk_size)
    assert (entries[-1] if entries else ChainHasher().digest()) == hashlib.sha256(data).digest()
    order = list(range(len(entries)))
    rnd.shuffle(order)
    for i in order:
        assert verifies(data, entries, chunk_size, i), f"chunk {i} of {len(entries)}"
    # The in-memory manifest helper and the protocol agree with the entries.
    assert manifest_entries(data, chunk_size) == [e.hex() for e in entries]
    root = hashlib.sha256(b"".join(entries)).hexdigest()
    assert p.manifest_root([e.hex() for e in entries]) == root


@PROPERTY
@given(
    size=st.integers(1, 300 * KIB),
    chunk_size=chunk_sizes,
    seed=st.integers(0, 2**32),
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_a_flipped_byte_fails_that_chunk_only(
    size: int, chunk_size: int, seed: int, where: float, bit: int
) -> None:
    data = data_of(seed, size)
    entries = chain_entries(data, chunk_size)
    pos = int(where * size)
    bad = bytearray(data)
    bad[pos] ^= 1 << bit
    hit = pos // chunk_size
    assert not verifies(bytes(bad), entries, chunk_size, hit)
    # Its neighbours still verify: every chunk stands alone.
    for i in {hit - 1, hit + 1} & set(range(len(entries))):
        assert verifies(bytes(bad), entries, chunk_size, i)


@PROPERTY
@given(
    size=st.integers(0, 64 * KIB),
    seed=st.integers(0, 2**32),
    cuts=st.lists(st.integers(0, 64 * KIB), max_size=8),
)
def test_update_takes_bytes_bytearray_and_memoryviews_alike(
    size: int, seed: int, cuts: list[int]
) -> None:
    data = data_of(seed, size)
    edges = sorted({0, size, *(c % (size + 1) for c in cuts)})
    pieces = [(a, b) for a, b in zip(edges, edges[1:], strict=False)]
    writable = bytearray(data)
    feeds = {
        "bytes": [data[a:b] for a, b in pieces],
        "bytearray": [bytearray(data[a:b]) for a, b in pieces],
        # Slices of one writable view: the hasher reads the caller's buffer in place.
        "writable view": [memoryview(writable)[a:b] for a, b in pieces],
        "read-only view": [memoryview(data)[a:b] for a, b in pieces],
    }
    want = hashlib.sha256(data).digest()
    for kind, feed in feeds.items():
        h = ChainHasher()
        for piece in feed:
            assert h.update(piece) is h
        assert h.length == size, kind
        assert h.digest() == want, kind
    assert writable == data  # hashing never writes to the buffer it is given


def test_update_reads_a_writable_view_slice_at_its_offset_not_the_start() -> None:
    buf = bytearray(b"A" * 64 + b"B" * 64)
    h = ChainHasher().update(memoryview(buf)[64:])
    assert h.state() == ChainHasher().update(b"B" * 64).state()
    assert h.state() != ChainHasher().update(b"A" * 64).state()


def test_update_of_a_multibyte_format_view_hashes_all_its_bytes() -> None:
    data = data_of(7, 256)
    words = memoryview(bytearray(data)).cast("I")
    want = hashlib.sha256(data).digest()
    assert ChainHasher().update(words).digest() == want
    assert ChainHasher().update(memoryview(data).cast("I")).digest() == want


def test_empty_updates_change_nothing() -> None:
    h = ChainHasher().update(b"").update(bytearray()).update(memoryview(b""))
    assert h.length == 0
    assert h.state() == INITIAL_STATE
    assert h.digest() == hashlib.sha256(b"").digest()


def test_digest_leaves_the_hasher_going_on() -> None:
    h = ChainHasher().update(b"x" * 100)
    assert h.digest() == hashlib.sha256(b"x" * 100).digest()
    assert h.hexdigest() == hashlib.sha256(b"x" * 100).hexdigest()
    h.update(b"y" * 28)
    assert h.digest() == hashlib.sha256(b"x" * 100 + b"y" * 28).digest()
    assert h.state() == PySha256().update(b"x" * 100 + b"y" * 28).state()


# ---------------------------------------------------------------- states as the spec defines them


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_state_is_the_eight_words_big_endian(blocks: int, seed: int) -> None:
    data = data_of(seed, blocks * BLOCK)
    assert ChainHasher().update(data).state() == PySha256().update(data).state()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 3000),
    chunk_size=st.integers(1, 12).map(lambda k: k * BLOCK),
    seed=st.integers(0, 2**32),
)
def test_entries_match_the_python_reference(size: int, chunk_size: int, seed: int) -> None:
    data = data_of(seed, size)
    assert [e.hex() for e in chain_entries(data, chunk_size)] == py_entries(data, chunk_size)


@pytest.mark.parametrize("length", [0, 64, 2**29, 2**32, 2**32 + 64, 2**40, 2**60])
def test_a_loaded_state_carries_its_byte_count_into_the_padding(length: int) -> None:
    # Past 2**29 bytes the bit count needs the high word: no hashlib run can reach it here.
    state = hashlib.sha256(b"any 32 bytes").digest()
    tail = data_of(length % 1000, 100)
    got = ChainHasher(state, length).update(tail)
    assert got.length == length + 100
    assert got.digest() == PySha256(state, length).update(tail).digest()
    assert ChainHasher(state, length).state() == state


def test_initial_state_is_the_standard_one() -> None:
    assert ChainHasher().state() == INITIAL_STATE == PySha256().state()
    abc = ChainHasher(INITIAL_STATE, 0).update(b"abc")
    assert abc.hexdigest() == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("size", [1, 63, 65, 100, 127, 129])
def test_state_needs_a_multiple_of_64_bytes(size: int) -> None:
    h = ChainHasher().update(b"\0" * size)
    with pytest.raises(ValueError, match="multiple of 64"):
        h.state()
    h.update(b"\0" * (-size % 64))
    assert len(h.state()) == 32


@pytest.mark.parametrize(
    ("state", "length"),
    [
        pytest.param(INITIAL_STATE[:31], 0, id="state-31-bytes"),
        pytest.param(INITIAL_STATE + b"\0", 0, id="state-33-bytes"),
        pytest.param(b"", 0, id="state-empty"),
        pytest.param(INITIAL_STATE.hex().encode(), 0, id="state-as-hex"),
        pytest.param(INITIAL_STATE, 1, id="length-1"),
        pytest.param(INITIAL_STATE, 63, id="length-63"),
        pytest.param(INITIAL_STATE, 100, id="length-100"),
        pytest.param(INITIAL_STATE, -64, id="length-negative"),
    ],
)
def test_a_bad_state_or_length_is_refused(state: bytes, length: int) -> None:
    with pytest.raises(ValueError):
        ChainHasher(state, length)


# ---------------------------------------------------------------- verify_chunk


def verified(data: bytes, **kwargs: Any) -> bool:
    """verify_chunk, where a ValueError (no chaining state after a ragged length) is a no."""
    try:
        return verify_chunk(data, **kwargs)
    except ValueError:
        return False


def test_verify_chunk_accepts_each_chunk_and_refuses_a_changed_one() -> None:
    cs = 4 * KIB
    data = data_of(11, 3 * cs + 100)
    entries = chain_entries(data, cs)
    chunks = [data[i : i + cs] for i in range(0, len(data), cs)]
    for i, chunk in enumerate(chunks):
        before = INITIAL_STATE if i == 0 else entries[i - 1]
        last = i == len(chunks) - 1
        kwargs = {"index": i, "chunk_size": cs, "before": before, "after": entries[i], "last": last}
        assert verify_chunk(chunk, **kwargs)
        assert verify_chunk(memoryview(bytearray(chunk)), **kwargs)
        flipped = bytearray(chunk)
        flipped[len(chunk) // 2] ^= 0x01
        assert not verify_chunk(flipped, **kwargs)
        assert not verified(chunk[:-1], **kwargs)  # short
        assert not verified(chunk + b"\0" * 64, **kwargs)  # long
        assert not verified(chunk, **{**kwargs, "last": not last})
        if last:
            # The byte count enters the hash only in the final padding: the last chunk
            # checked at another offset fails. (A middle chunk's state depends on its
            # predecessor's entry alone, which pins its place in the chain.)
            assert not verify_chunk(chunk, **{**kwargs, "index": i - 1})
            assert not verify_chunk(chunk, **{**kwargs, "index": i + 1})
    # The last entry is the file's plain SHA-256.
    assert entries[-1].hex() == hashlib.sha256(data).hexdigest()


def test_verify_chunk_of_a_chunk_the_manifest_does_not_chain_fails() -> None:
    cs = 1 * KIB
    data = data_of(12, 4 * cs)
    other = data_of(13, 4 * cs)
    entries, lies = chain_entries(data, cs), chain_entries(other, cs)
    # Chunk 2 of `data` is right against its own entries, wrong against another manifest's.
    chunk = data[2 * cs : 3 * cs]
    at2 = {"index": 2, "chunk_size": cs, "last": False}
    assert verify_chunk(chunk, before=entries[1], after=entries[2], **at2)
    assert not verify_chunk(chunk, before=lies[1], after=entries[2], **at2)
    assert not verify_chunk(chunk, before=entries[1], after=lies[2], **at2)


# ---------------------------------------------------------------- hash_file


# Small enough for PySha256 to keep up; the indexer's own floor is 16 KiB, which changes
# nothing here: hash_file takes any multiple of 64.
CS = 4 * KIB


def stamp(path: Path) -> Stamp:
    return Stamp.of(os.stat(path))


@pytest.mark.parametrize(
    "size", [0, 1, 63, 64, 65, CS - 64, CS - 1, CS, CS + 1, CS + 64, 2 * CS, 3 * CS - 1, 3 * CS + 5]
)
@pytest.mark.parametrize("read_block", [hashing.READ_BLOCK, 1000], ids=["big-reads", "1000B-reads"])
@pytest.mark.parametrize("whole_read", [hashing.WHOLE_READ, 0], ids=["one-read", "chained"])
def test_hash_file_matches_an_independent_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, read_block: int, whole_read: int
) -> None:
    # 1000-byte reads: the chunk hashing continues across reads that are not whole blocks.
    monkeypatch.setattr(hashing, "READ_BLOCK", read_block)
    # A one-chunk file is read whole and hashed by hashlib; the chained path gives the same.
    monkeypatch.setattr(hashing, "WHOLE_READ", whole_read)
    data = data_of(size, size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    hashed = hashing.hash_file(path, CS, expect=stamp(path))

    want = py_entries(data, CS)
    assert list(hashed.chunk_hashes) == want
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert hashed.root == hashlib.sha256(b"".join(bytes.fromhex(e) for e in want)).hexdigest()
    assert list(hashed.chunk_sizes) == [
        p.chunk_length(size, CS, i) for i in range(p.chunk_count(size, CS))
    ]
    assert (hashed.size, hashed.chunk_size) == (size, CS)
    assert hashed.key == (hashed.sha256, CS, hashed.root)
    # The manifest proves itself to a peer that receives it under that root.
    key = p.FileKey(hashed.sha256, CS, hashed.root)
    raw = b"".join(bytes.fromhex(e) for e in hashed.chunk_hashes)
    assert p.check_manifest(key, size, raw) == want


@pytest.mark.parametrize("size", [100, 3 * CS + 1], ids=["one-chunk", "chained"])
def test_hash_file_given_a_device_hashes_that_very_file_or_none(tmp_path: Path, size: int) -> None:
    # The indexer passes the device its scan met: a path that now leads to another file
    # (a folder swapped for a link) or through a link is not hashed.
    path = tmp_path / "f.bin"
    data = data_of(size, size)
    path.write_bytes(data)
    st = os.stat(path)
    sha = hashlib.sha256(data).hexdigest()
    assert hashing.hash_file(path, CS, expect=Stamp.of(st), device=st.st_dev).sha256 == sha
    with pytest.raises(hashing.FileChanged):
        hashing.hash_file(path, CS, expect=Stamp.of(st), device=st.st_dev + 1)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    with pytest.raises(OSError):
        hashing.hash_file(link, CS, expect=Stamp.of(st), device=st.st_dev)
    assert hashing.hash_file(link, CS, expect=Stamp.of(st)).sha256 == sha  # no device: followed


@pytest.mark.parametrize("chunk_size", [64, 128, 4096 + 64])
def test_hash_file_with_small_odd_chunk_sizes(tmp_path: Path, chunk_size: int) -> None:
    data = data_of(chunk_size, 5 * chunk_size + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    hashed = hashing.hash_file(path, chunk_size, expect=stamp(path))
    assert list(hashed.chunk_hashes) == py_entries(data, chunk_size)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()


def test_hash_file_notices_a_file_that_changed(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    before = stamp(path)
    path.write_bytes(b"y" * 200)
    with pytest.raises(hashing.FileChanged):
        hashing.hash_file(path, CS, expect=before)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: p.write_bytes(b"y" * 100), id="rewritten-same-size"),
        pytest.param(lambda p: p.write_bytes(b"x" * 101), id="grew"),
        pytest.param(lambda p: p.write_bytes(b"x" * 99), id="shrank"),
        pytest.param(lambda p: os.utime(p, ns=(1, 1)), id="mtime-set-back"),
        pytest.param(
            lambda p: (p.rename(p.with_name("old")), p.write_bytes(b"x" * 100)), id="swapped"
        ),
    ],
)
def test_a_one_chunk_file_changed_after_its_stat_is_noticed(tmp_path: Path, change: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    # Settled, as the indexer hashes only files SETTLE_SECONDS old: a write now stamps
    # another mtime even within one tick of the kernel's coarse clock.
    os.utime(path, ns=(10**18, 10**18))
    before = stamp(path)
    change(path)
    with pytest.raises(hashing.FileChanged):
        hashing.hash_file(path, CS, expect=before)


def test_a_short_read_is_read_on_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FUSE file systems may answer a read with fewer bytes than asked, before the end.
    data = data_of(3, 3000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 700)))
    hashed = hashing.hash_file(path, CS, expect=stamp(path))
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()

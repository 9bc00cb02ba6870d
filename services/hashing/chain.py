"""SHA-256 that can stop after any 64-byte block and go on later, elsewhere.

A file's manifest lists, per chunk, the SHA-256 chaining state after that chunk
(the eight 32-bit words, big-endian: 32 bytes); the last entry is the file's
plain SHA-256. Chunk i then verifies alone: start from entry i-1 with the byte
count i * chunk_size, hash the chunk, compare with entry i. Every chunk verified
proves the whole file's SHA-256 without reading it twice.

`hashlib` cannot load a state, so this talks to libcrypto's SHA256_Init /
SHA256_Update / SHA256_Final through ctypes: the same libcrypto that `_hashlib`
links, with the same SHA-NI / AVX2 code. ctypes releases the GIL for each call,
so hashing on one thread overlaps receiving on another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from typing import Any

BLOCK = 64  # SHA-256 processes 64-byte blocks: a state exists only at multiples of it
STATE_BYTES = 32
INITIAL_STATE = bytes.fromhex("6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19")
_WORDS = struct.Struct(">8I")

Buffer = bytes | bytearray | memoryview


class ChainUnavailable(Exception):
    """This Python's libcrypto does not offer the SHA-256 calls the protocol needs."""


class _Ctx(ctypes.Structure):
    # OpenSSL's SHA256_CTX (include/openssl/sha.h), unchanged since 0.9.8.
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _load() -> tuple[Any, Any, Any]:
    """SHA256_Init, _Update, _Final from the libcrypto hashlib uses. Raises ChainUnavailable."""
    candidates: list[str] = []
    try:
        import _hashlib  # the extension links libcrypto; dlsym on it searches that too

        if _hashlib.__file__:
            candidates.append(_hashlib.__file__)
    except (ImportError, AttributeError):
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.c_void_p]
        update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        for fn in (init, update, final):
            fn.restype = ctypes.c_int
        return init, update, final
    raise ChainUnavailable(
        "this Python's libcrypto has no SHA256_Init/SHA256_Update/SHA256_Final, which "
        "p2pshare needs to verify chunks; use a CPython built against OpenSSL 1.1 or 3"
    )


_funcs: tuple[Any, Any, Any] | None = None


def _lib() -> tuple[Any, Any, Any]:
    global _funcs
    if _funcs is None:
        _funcs = _load()
    return _funcs


def check_available() -> None:
    """Raises ChainUnavailable (one sentence) if chunks cannot be hashed here."""
    _lib()
    if ChainHasher().update(b"abc").digest() != bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    ):
        raise ChainUnavailable("libcrypto's SHA256_CTX is not laid out as p2pshare expects")


class ChainHasher:
    """A SHA-256 in progress that starts from any saved state.

    `state` is a 32-byte chaining state after `length` bytes (a multiple of 64).
    """

    __slots__ = ("_ctx", "_length")

    def __init__(self, state: bytes = INITIAL_STATE, length: int = 0) -> None:
        # SHA-256 counts bits in 64 bits: a longer message has no state.
        if len(state) != STATE_BYTES or length % BLOCK or not 0 <= length < 1 << 61:
            raise ValueError("a SHA-256 state is 32 bytes after a multiple of 64 bytes")
        init, _, _ = _lib()
        self._ctx = _Ctx()
        init(ctypes.byref(self._ctx))
        self._ctx.h[:] = _WORDS.unpack(state)
        bits = length * 8
        self._ctx.Nl, self._ctx.Nh = bits & 0xFFFFFFFF, bits >> 32
        self._length = length

    @property
    def length(self) -> int:
        return self._length

    def update(self, data: Buffer) -> ChainHasher:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if n:
            _, update, _ = _lib()
            if isinstance(data, bytes):
                update(ctypes.byref(self._ctx), data, n)
            elif isinstance(data, bytearray) or not data.readonly:
                # The address of the caller's buffer, no copy; the view pins it for the call.
                ref = ctypes.c_char.from_buffer(data)
                update(ctypes.byref(self._ctx), ctypes.addressof(ref), n)
                del ref
            else:
                update(ctypes.byref(self._ctx), bytes(data), n)
            self._length += n
        return self

    def state(self) -> bytes:
        """The chaining state now; only defined at a multiple of 64 bytes."""
        if self._length % BLOCK:
            raise ValueError(f"no chaining state after {self._length} bytes (not a multiple of 64)")
        return _WORDS.pack(*self._ctx.h)

    def digest(self) -> bytes:
        """The SHA-256 of everything so far; the hasher itself carries on unchanged."""
        _, _, final = _lib()
        ctx = _Ctx.from_buffer_copy(self._ctx)
        out = ctypes.create_string_buffer(STATE_BYTES)
        final(out, ctypes.byref(ctx))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()


def verify_chunk(
    data: Buffer, *, index: int, chunk_size: int, before: bytes, after: bytes, last: bool
) -> bool:
    """Does chunk `index` hash from `before` (entry index-1) to `after` (entry index)?

    For the last chunk, `after` is the file's SHA-256 and the hash is finished. A chunk
    that cannot be one (a middle chunk not ending on a 64-byte block) does not verify.
    """
    hasher = ChainHasher(before, index * chunk_size).update(data)
    if not last and hasher.length % BLOCK:
        return False
    return (hasher.digest() if last else hasher.state()) == after


def manifest_entries(data: Buffer, chunk_size: int) -> list[str]:
    """The manifest of bytes in memory (hex entries); hashing.hash_file does the same for a
    file on disk. For tests, fake peers and small payloads."""
    view = memoryview(data)
    hasher = ChainHasher()
    entries = []
    for start in range(0, len(view), chunk_size):
        hasher.update(view[start : start + chunk_size])
        last = start + chunk_size >= len(view)
        entries.append(hasher.hexdigest() if last else hasher.state().hex())
    return entries

"""A file's manifest in one read: the SHA-256 chaining state after each chunk, and the whole
file's SHA-256 as the last entry, from a single pass of SHA-256 over its bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TypeAlias

from p2pshare.db.values import HashedFile, Stamp
from p2pshare.services.hashing.chain import ChainHasher
from p2pshare.services.protocol import EMPTY_SHA256, manifest_root

StrPath: TypeAlias = str | Path  # the indexer passes scandir's strings: no Path per file

# A file up to this size is read whole, in one read, and hashed by hashlib: no chaining
# state is ever needed for a one-chunk file (its only entry is its SHA-256), and a share of
# many small files is mostly this path, where the per-file Python is the cost.
WHOLE_READ = 1024 * 1024

# Large reads: one ctypes call and one read syscall per 4 MiB keeps the per-call
# cost far below the hashing itself (the benchmark's `index` scenario compares the
# indexer with sha256sum).
READ_BLOCK = 4 * 1024 * 1024


class FileChanged(Exception):
    """The file changed while it was being hashed; hash it again once it settles."""


def hash_file(
    path: StrPath, chunk_size: int, *, expect: Stamp, device: int | None = None
) -> HashedFile:
    """The manifest of `path` in chunks of `chunk_size`; it must stay as `expect` throughout.

    With `device` (a scan's: the path is the file's own, no symlink), the file is opened
    without following a symlink and must be that device's inode `expect.inode`: a path whose
    folders were swapped for links since the scan cannot lead to another file. Raises
    FileChanged or OSError.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if device is None else os.O_NOFOLLOW)
    if expect.size <= min(chunk_size, WHOLE_READ):
        return _hash_one_chunk(path, chunk_size, expect, flags, device)
    hasher = ChainHasher()
    entries: list[str] = []
    chunk_sizes: list[int] = []
    buf = bytearray(min(READ_BLOCK, chunk_size))
    view = memoryview(buf)
    with open(os.open(path, flags), "rb", buffering=0) as fh:
        if not _is(os.fstat(fh.fileno()), expect, device):
            raise FileChanged(str(path))
        remaining = expect.size
        while remaining > 0:
            want = min(chunk_size, remaining)
            got_in_chunk = 0
            while got_in_chunk < want:
                n = fh.readinto(view[: min(len(buf), want - got_in_chunk)])
                if not n:
                    raise FileChanged(f"{path} is shorter than it was")
                hasher.update(view[:n])
                got_in_chunk += n
            remaining -= want
            entries.append(hasher.hexdigest() if remaining == 0 else hasher.state().hex())
            chunk_sizes.append(want)
        after = os.fstat(fh.fileno())
    if not _is(after, expect, device):
        raise FileChanged(str(path))
    return HashedFile(
        size=expect.size,
        mtime_ns=expect.mtime_ns,
        ctime_ns=expect.ctime_ns,
        inode=expect.inode,
        sha256=entries[-1] if entries else EMPTY_SHA256,
        chunk_size=chunk_size,
        chunk_hashes=entries,
        chunk_sizes=chunk_sizes,
        root=manifest_root(entries),
    )


def _is(st: os.stat_result, expect: Stamp, device: int | None) -> bool:
    """Is this the file (and version) expected?"""
    return Stamp.of(st) == expect and (device is None or st.st_dev == device)


def _hash_one_chunk(
    path: StrPath, chunk_size: int, expect: Stamp, flags: int, device: int | None
) -> HashedFile:
    """hash_file for a file of one chunk (or none): one open, one read, one fstat.

    One fstat, after the read, is enough: a write, truncate or utime stamps ctime with the
    time now and a swapped file has another inode, so a file still matching `expect` once
    its bytes are read was not changed since the scan stat it (a change within one tick of
    the kernel's coarse clock is what SETTLE_SECONDS covers, here as with two fstats).
    Raises FileChanged or OSError.
    """
    fd = os.open(path, flags)
    try:
        data = os.read(fd, expect.size + 1)  # a byte more: a file that grew shows it at once
        while 0 < len(data) < expect.size:  # a short read (FUSE may give one): read on
            more = os.read(fd, expect.size + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) != expect.size or not _is(os.fstat(fd), expect, device):
            raise FileChanged(str(path))
    finally:
        os.close(fd)
    # The manifest of one chunk is its SHA-256; its root the SHA-256 of that entry's bytes.
    # (Made by position: a share of small files is mostly this path, once per file.)
    if not data:  # no entries: the file's SHA-256 and the root are both that of nothing
        return HashedFile(
            0, expect.mtime_ns, EMPTY_SHA256, chunk_size, [], [], EMPTY_SHA256,
            expect.ctime_ns, expect.inode,
        )  # fmt: skip
    digest = hashlib.sha256(data).digest()
    sha256 = digest.hex()
    root = hashlib.sha256(digest).hexdigest()
    return HashedFile(
        expect.size, expect.mtime_ns, sha256, chunk_size, [sha256], [expect.size], root,
        expect.ctime_ns, expect.inode,
    )  # fmt: skip

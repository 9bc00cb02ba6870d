"""A file's manifest in one read: the SHA-256 chaining state after each chunk, and the whole
file's SHA-256 as the last entry, from a single pass of SHA-256 over its bytes."""

from __future__ import annotations

import os
from pathlib import Path

from p2pshare.db.values import HashedFile, Stamp
from p2pshare.services.hashing.chain import ChainHasher
from p2pshare.services.protocol import EMPTY_SHA256, manifest_root

# Large reads: one ctypes call and one read syscall per 4 MiB keeps the per-call
# cost far below the hashing itself (measured in bench: indexer against sha256sum).
READ_BLOCK = 4 * 1024 * 1024


class FileChanged(Exception):
    """The file changed while it was being hashed; hash it again once it settles."""


def hash_file(path: Path, chunk_size: int, *, expect: Stamp) -> HashedFile:
    """The manifest of `path` in chunks of `chunk_size`; it must stay as `expect` throughout.

    Raises FileChanged or OSError.
    """
    hasher = ChainHasher()
    entries: list[str] = []
    chunk_sizes: list[int] = []
    buf = bytearray(min(READ_BLOCK, chunk_size))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        if Stamp.of(os.fstat(fh.fileno())) != expect:
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
        after = Stamp.of(os.fstat(fh.fileno()))
    if after != expect:
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

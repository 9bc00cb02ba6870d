"""SHA-256 of a whole file and of each of its chunks, in one read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from p2pshare.db.index import HashedFile, Stamp

READ_BLOCK = 1024 * 1024


class FileChanged(Exception):
    """The file changed while it was being hashed; hash it again once it settles."""


def hash_file(path: Path, chunk_size: int, *, expect: Stamp) -> HashedFile:
    """Hash `path` in chunks of `chunk_size`; it must stay as `expect` throughout.

    Raises FileChanged or OSError.
    """
    whole = hashlib.sha256()
    chunk_hashes: list[str] = []
    chunk_sizes: list[int] = []
    buf = bytearray(min(READ_BLOCK, chunk_size))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        if Stamp.of(os.fstat(fh.fileno())) != expect:
            raise FileChanged(str(path))
        remaining = expect.size
        while remaining > 0:
            part = hashlib.sha256()
            want = min(chunk_size, remaining)
            got_in_chunk = 0
            while got_in_chunk < want:
                n = fh.readinto(view[: min(len(buf), want - got_in_chunk)])
                if not n:
                    raise FileChanged(f"{path} is shorter than it was")
                part.update(view[:n])
                whole.update(view[:n])
                got_in_chunk += n
            chunk_hashes.append(part.hexdigest())
            chunk_sizes.append(want)
            remaining -= want
        after = Stamp.of(os.fstat(fh.fileno()))
    if after != expect:
        raise FileChanged(str(path))
    return HashedFile(
        size=expect.size,
        mtime_ns=expect.mtime_ns,
        ctime_ns=expect.ctime_ns,
        inode=expect.inode,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunk_hashes=chunk_hashes,
        chunk_sizes=chunk_sizes,
    )

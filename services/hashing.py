"""SHA-256 of a whole file and of each of its chunks, in one read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from p2pshare.db.index import HashedFile

READ_BLOCK = 1024 * 1024


class FileChanged(Exception):
    """The file changed while it was being hashed; hash it again once it settles."""


def hash_file(path: Path, chunk_size: int, *, expect_size: int, expect_mtime_ns: int) -> HashedFile:
    """Hash `path` in chunks of `chunk_size`. Raises FileChanged or OSError."""
    whole = hashlib.sha256()
    chunk_hashes: list[str] = []
    chunk_sizes: list[int] = []
    buf = bytearray(min(READ_BLOCK, chunk_size))
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        if st.st_size != expect_size or st.st_mtime_ns != expect_mtime_ns:
            raise FileChanged(str(path))
        remaining = st.st_size
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
        after = os.fstat(fh.fileno())
    if after.st_size != expect_size or after.st_mtime_ns != expect_mtime_ns:
        raise FileChanged(str(path))
    return HashedFile(
        size=expect_size,
        mtime_ns=expect_mtime_ns,
        sha256=whole.hexdigest(),
        chunk_size=chunk_size,
        chunk_hashes=chunk_hashes,
        chunk_sizes=chunk_sizes,
    )

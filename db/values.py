"""Plain value types of the index, shared by the database layer and the roles that read
files (scan, hashing, the chunk server). No SQLAlchemy here: importing them costs nothing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class Stamp(NamedTuple):
    """One version of a file on disk, known without reading it.

    Size and mtime alone miss a rewrite that restores mtime (cp -p, rsync -t,
    tar x): ctime still moves. A file swapped for another (or for a symlink to
    one) has another inode.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True)
class IndexedStat:
    """What the index remembers of a local file, to skip re-hashing it."""

    stamp: Stamp
    file_id: int


class HashedFile(NamedTuple):
    """A file's content as the indexer measured it (stamp fields 0 for a peer's file). A
    tuple, the cheapest object to make and to pickle: a first index makes one per file and
    sends it to the writer process (a frozen dataclass cost a few microseconds more each)."""

    size: int
    mtime_ns: int
    sha256: str
    chunk_size: int
    # The manifest: per chunk, the SHA-256 chaining state after it (hex); see Chunk.
    chunk_hashes: Sequence[str]
    chunk_sizes: Sequence[int]
    root: str  # SHA-256 over the manifest's entries
    ctime_ns: int = 0
    inode: int = 0

    @property
    def key(self) -> ContentKey:
        return (self.sha256, self.chunk_size, self.root)


# (sha256, chunk_size, root): one offer of a content, the unique key of `files`.
ContentKey = tuple[str, int, str]

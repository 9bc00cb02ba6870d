"""The seam between a download and its peer workers: `JobPort`, everything a `PeerWorker`
may ask of its download (one big file, or a set of small ones), `Pipeline`, how it asks,
and `ChunkCheck`, how a received chunk is verified.

A worker sees its download only through this Protocol, so neither module imports the
other (job.py and small_batch.py import worker.py; worker.py imports this) and the
download's state stays behind its lock. Which calls take which lock is part of the
contract, named on each one. A chunk is named by its place in the download: the chunks
of its files one after another (`chunk(g)` says which file's which chunk).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from p2pshare.services.downloader.pool import PeerPool
from p2pshare.services.downloader.writer import Verdict
from p2pshare.services.hashing.chain import INITIAL_STATE, ChainHasher
from p2pshare.services.net.tls import Link
from p2pshare.services.protocol import FileKey


class ChunkCheck:
    """Verifies chunk i alone: SHA-256 resumed from entry i-1, compared with entry i.

    For the last chunk the hash is finished and compared with the file's SHA-256,
    so every chunk verified proves the whole file without a second pass.
    """

    def __init__(self, entries: list[bytes], chunk_size: int) -> None:
        self.entries = entries
        self.chunk_size = chunk_size

    def start(self, index: int) -> ChainHasher:
        before = self.entries[index - 1] if index else INITIAL_STATE
        return ChainHasher(before, index * self.chunk_size)

    def matches(self, index: int, hasher: ChainHasher) -> bool:
        last = index == len(self.entries) - 1
        return (hasher.digest() if last else hasher.state()) == self.entries[index]

    def verify(self, index: int, data: memoryview) -> bool:
        """Does chunk `index`, whole in `data`, match its entry?"""
        if len(self.entries) == 1:
            # A one-chunk file's only entry is its SHA-256 from the standard start:
            # hashlib's, without the resumable hasher's ctypes calls (a small file's case).
            return hashlib.sha256(data).digest() == self.entries[0]
        hasher = self.start(index)
        hasher.update(data)
        return self.matches(index, hasher)


@dataclass(frozen=True)
class Pipeline:
    """How a worker asks: requests in flight (at least `min_requests`, more while under
    `bytes`, never over `max_requests`), and where its connection comes from and goes
    back to (`pool`; None: its own, closed at its end)."""

    bytes: int
    min_requests: int
    max_requests: int
    pool: PeerPool | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A chunk of a download: which file's which chunk, its size and place in that file."""

    key: FileKey
    index: int
    size: int
    offset: int
    check: ChunkCheck


class JobPort(Protocol):
    """What a peer worker may read and ask of its download.

    Fixed for the download's life, read without a lock: `label` (for log lines),
    `count` (chunks), `largest_chunk`, `pipeline`, `have_key` (the file whose holdings a
    worker asks for and refreshes; None: the catalog's say is enough), `network_key`,
    `chunk`. Lock-free by nature: `halted` (an Event), `is_bad` (a set lookup).
    """

    label: str
    count: int
    largest_chunk: int
    pipeline: Pipeline
    have_key: tuple[FileKey, int] | None
    network_key: str | None

    def chunk(self, g: int) -> Chunk:
        """Chunk `g` of the download."""
        ...

    def halted(self) -> bool:
        """The job is ending, for any reason: stop asking and receiving."""
        ...

    def is_bad(self, source: tuple[str, int]) -> bool:
        """Did a chunk from this source fail verification (never asked again here)?"""
        ...

    def link(self, tls: bool, fingerprint: str | None) -> Link:
        """How to reach a source: in clear or by pinned TLS. Raises tls.CannotTalk."""
        ...

    # Each of these takes the job's lock.

    def pick(self, peer: str, *, duplicates: bool = True) -> tuple[int, bool] | None:
        """The next chunk for `peer` and whether it is an endgame copy, or None."""
        ...

    def finished(self) -> bool:
        """Is every chunk verified (nothing left to pick or to wait for)?"""
        ...

    def wait_for_work(self, timeout: float) -> None:
        """Sleep until a chunk is released or a peer's bits change, at most `timeout`."""
        ...

    def chunk_verified(
        self, peer: str, source: tuple[str, int], index: int, size: int, on_disk: bool = True
    ) -> None:
        """A chunk matched its entry; called under the writer's lock (see `write`)."""
        ...

    def chunk_bad(self, peer: str, source: tuple[str, int], index: int, size: int) -> bool:
        """A chunk did not match: release it and mark the source bad for its file. True:
        nothing more is asked of this source (the worker ends)."""
        ...

    def chunk_refused(self, peer: str, g: int, why: str) -> bool:
        """The peer refused chunk `g`. True: the download took it (the connection goes on);
        False: the worker ends its session."""
        ...

    def peer_lost(self, peer: str, pending: list[int]) -> None:
        """A connection ended with these chunks asked for and not received."""
        ...

    def peer_bits(self, peer: str, bits: bytes | None) -> None:
        """What `peer` holds now (None: all of it)."""
        ...

    # This one takes the writer's lock; its `then` (chunk_verified) takes the job's inside
    # it. The order is always writer, then job: no call holding the job's lock writes.

    def write(self, index: int, data: memoryview, offset: int, then: Verdict | None = None) -> bool:
        """Write bytes of chunk `index` at `offset`; with `then`, the chunk's last bytes,
        written and recorded under one hold of the writer's lock: `then(on_disk)` runs
        there (False when the bytes were not written: another copy won, the job is
        halting, or a write failed), so a chunk is marked done only once it is on disk."""
        ...

"""Writes a download's temp file for every peer thread, one write at a time.

Each peer thread receives a piece (a whole chunk, up to RECV_PIECE), hashes it, and
writes it itself, under this object's lock. A thread per connection doing receive, hash
and write of whole chunks costs no more CPU than one thread doing all of it, and keeps
two cores busy. Without the lock the waiting writer spins on the file's inode lock,
where a Python lock sleeps; handing blocks to a writer thread costs a wake-up and a
read on the other core per block, more than the overlap gains (bench/recvpath.py
measures these).

Because every write and every verdict happens under the one lock, the endgame needs
no locks of its own: a chunk is marked done under it, right after the bytes that
proved it were written, so a piece of any other copy that comes later sees it done
and is dropped before it can touch verified bytes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("p2p.download")

# Runs under the writer's lock right after a chunk's last write: True when the bytes are
# on disk, False when they were not (another copy won, the job halted, a write failed).
Verdict = Callable[[bool], None]

# ext4 writes pieces of this size at less CPU than larger ones (small folios), and tmpfs
# at the same cost (bench/recvpath.py).
WRITE_PIECE = 256 * 1024


class BlockWriter:
    """Writes pieces into a file, once opened, one at a time, in the calling thread.

    `is_done(index)` says a chunk is already verified on disk (its later copies are
    dropped); `halted()` drops every write; `failed(exc)` is told of a write error once,
    after which nothing is written. Callbacks given to `write` run under the lock, so
    the lock order is this writer's lock, then whatever the callback takes."""

    def __init__(
        self,
        *,
        is_done: Callable[[int], bool],
        halted: Callable[[], bool],
        failed: Callable[[OSError], None],
    ) -> None:
        self._lock = threading.Lock()
        self.fd = -1
        self.is_done = is_done
        self.halted = halted
        self.failed = failed
        self.broken = False

    def open(self, fd: int) -> None:
        """Start writing into `fd` (the temp file, open for writing)."""
        self.fd = fd

    def write(
        self,
        index: int,
        data: memoryview,
        offset: int,
        then: Verdict | None = None,
    ) -> bool:
        """Write `data` of chunk `index` at `offset` unless the chunk is done, the job
        halted or an earlier write failed; then run `then(written)` under the same
        lock. Returns whether the bytes were written."""
        with self._lock:
            wrote = not (self.broken or self.halted() or self.is_done(index))
            if wrote:
                wrote = self._write(data, offset)
            if then is not None:
                try:
                    then(wrote)
                except Exception:  # a bug in a verdict must not kill the peer thread's job
                    log.exception("a verdict on chunk %d failed", index)
            return wrote

    def drain(self) -> None:
        """Return once a write under way in another thread has ended."""
        with self._lock:
            return

    def _write(self, data: memoryview, offset: int) -> bool:
        try:
            for start in range(0, len(data), WRITE_PIECE):
                piece = data[start : start + WRITE_PIECE]
                written = os.pwrite(self.fd, piece, offset + start)
                if written != len(piece):  # tmpfs and ext4 write whole or fail; be sure
                    raise OSError(f"short write: {written} of {len(piece)} bytes")
        except OSError as exc:
            self.broken = True
            self.failed(exc)
            return False
        return True

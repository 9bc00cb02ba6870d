"""The one thread that writes a download's temp file.

Peer threads receive and hash; this thread alone writes, in the order blocks were
handed over. Two threads `pwrite`-ing one file serialize on its inode lock, and the
waiter spins on it (perf: `rwsem_spin_on_owner`, a fifth of the downloader's CPU with
two connections): one writer costs nothing to coordinate, and receiving plus hashing
on one core overlaps writing on the other.

Because every write and every verdict passes through this one queue, the endgame
needs no locks of its own: a chunk is marked done here, right after the bytes that
proved it were written, so a block of any other copy that comes later sees it done
and is dropped before it can touch verified bytes.

On a process allowed one CPU (`taskset -c 0`, a small board) there is nothing to
overlap, and handing each block to another thread costs a context switch and a GIL
handoff per 256 KiB: `inline` writes in the putting thread instead, each item under
one lock, so items are handled one at a time in the order they were put, exactly as
the queue would.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("p2p.download")

# bench/recvpath.py: ext4 writes 256 KiB pieces at half the CPU of 1 MiB+ ones (small
# folios), and tmpfs writes them at the same cost.
WRITE_PIECE = 256 * 1024


@dataclass(slots=True)
class Block:
    """Bytes of chunk `index` for `offset`, received and hashed; `done` gets `buf` back."""

    index: int
    buf: bytearray
    length: int
    offset: int
    done: Callable[[bytearray], None]


@dataclass(slots=True)
class Verdict:
    """The end of a chunk from one peer: runs `then` (verified or bad) after its blocks."""

    then: Callable[[], None]


@dataclass(slots=True)
class Whole:
    """A verified endgame copy, written whole unless the chunk is done by then."""

    index: int
    data: memoryview
    offset: int
    then: Callable[[bool], None]  # True: these bytes are now the chunk's


class BlockWriter(threading.Thread):
    """Writes blocks into a file, once opened, in the order they were put.

    `is_done(index)` says a chunk is already verified on disk (its later copies are
    dropped); `halted()` drops every write; `failed(exc)` is told of a write error once,
    after which nothing is written. `inline`: no thread, see the module's docstring."""

    def __init__(
        self,
        *,
        is_done: Callable[[int], bool],
        halted: Callable[[], bool],
        failed: Callable[[OSError], None],
        name: str,
        inline: bool = False,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.inline = inline
        self._inline_lock = threading.Lock()
        self.fd = -1
        self.is_done = is_done
        self.halted = halted
        self.failed = failed
        self.broken = False
        self._queue: queue.SimpleQueue[Block | Verdict | Whole | threading.Event | None] = (
            queue.SimpleQueue()
        )

    # ------------------------------------------------------------ any thread

    def open(self, fd: int) -> None:
        """Start writing into `fd` (the temp file, open for writing)."""
        self.fd = fd
        if not self.inline:
            self.start()

    def put(self, item: Block | Verdict | Whole) -> None:
        if self.inline:
            with self._inline_lock:
                self._run_one(item)
        else:
            self._queue.put(item)

    def drain(self) -> None:
        """Return once everything put before this call is written or dropped."""
        if self.inline:
            with self._inline_lock:  # a put under way in another thread ends first
                return
        if not self.is_alive():
            return
        passed = threading.Event()
        self._queue.put(passed)
        passed.wait()

    def close(self) -> None:
        """Write what is queued, then end the thread."""
        if self.is_alive():
            self._queue.put(None)
            self.join()

    # ------------------------------------------------------------ the thread

    def run(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            self._run_one(item)

    def _run_one(self, item: Block | Verdict | Whole | threading.Event) -> None:
        try:
            self._handle(item)
        except Exception:  # a bug here must not strand a peer thread waiting for buffers
            log.exception("the temp file's writer failed on %r", type(item).__name__)

    def _handle(self, item: Block | Verdict | Whole | threading.Event) -> None:
        if isinstance(item, Block):
            try:
                if self._may_write(item.index):
                    self._write(memoryview(item.buf)[: item.length], item.offset)
            finally:
                item.done(item.buf)  # the peer thread's buffer, back for its next block
        elif isinstance(item, Verdict):
            item.then()
        elif isinstance(item, Whole):
            wrote = self._may_write(item.index)
            if wrote:
                wrote = self._write(item.data, item.offset)
            item.then(wrote)
        else:
            item.set()

    def _may_write(self, index: int) -> bool:
        return not (self.broken or self.halted() or self.is_done(index))

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

"""A cheap look for commits by other processes, in plain sqlite3 (no SQLAlchemy): the
downloader waits on it for new requests, `p2pctl download` for its download's progress."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

from p2pshare.db.pragmas import BUSY_TIMEOUT_MS

# Without inotify, how often `wait_changed` reads the change counter.
POLL_SECONDS = 0.01
# After a write to the WAL with no commit visible yet, the counter is read again after
# 1, 2, 4 ... 256 ms (see ChangeWatch._settle): nine more looks, half a second at most.
SETTLE_FIRST_SECONDS = 0.001
SETTLE_LAST_SECONDS = 0.256

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def inotify_instance() -> tuple[int, Any] | None:
    """A new inotify instance (non-blocking, close-on-exec) and libc's inotify_add_watch,
    whose errno ctypes.get_errno() reads; None where there is no inotify (not Linux).
    Raises OSError when none can be made (the per-user limit of instances)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    fd = init(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd, add


class ChangeWatch:
    """Has any other connection committed since the last look? SQLite's `PRAGMA
    data_version` on a read-only connection of its own: microseconds a call, no
    transaction, no SQLAlchemy, so a poller can look often and run its real queries
    only when something changed (https://sqlite.org/pragma.html#pragma_data_version).

    `wait_changed` sleeps until then. On Linux it sleeps in the kernel until a file of
    the database is written (inotify on its folder), so an idle waiter costs nothing
    and still sees a commit within a millisecond; elsewhere it reads the counter every
    POLL_SECONDS (a hundred wakeups a second were most of an idle downloader's CPU)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False, isolation_level=None,
        )  # fmt: skip
        self._last: int | None = None
        self._notify: WriteNotify | None = None
        self._notify_tried = False
        self._poke_r, self._poke_w = -1, -1
        self._poke_lock = threading.Lock()  # a poke never writes into a closed (reused) fd

    def changed(self) -> bool:
        """True at the first call, then whenever another connection committed meanwhile.
        False when the counter cannot be read: callers fall back to their slow poll, whose
        own query then says what is wrong, rather than querying every few milliseconds."""
        try:
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return self._last is None
        changed, self._last = version != self._last, version
        return changed

    def enable_poke(self) -> None:
        """Let `poke()`, from any thread, end a `wait_changed` early. Call before waiting."""
        if self._poke_r < 0:
            self._poke_r, self._poke_w = os.pipe()
            os.set_blocking(self._poke_r, False)
            os.set_blocking(self._poke_w, False)

    def poke(self) -> None:
        """End the current (or next) `wait_changed` now: the waiter has other news."""
        with self._poke_lock, contextlib.suppress(BlockingIOError):  # full: awake already
            if self._poke_w >= 0:
                os.write(self._poke_w, b"\0")

    def wait_changed(self, timeout: float) -> bool:
        """Wait until another connection commits (True), `timeout` seconds pass or `poke`
        is called (False, unless a commit came too)."""
        deadline = time.monotonic() + timeout
        fresh = not self._notify_tried
        notify = self._notifier()  # first: a commit from here on raises an event
        if self.changed():
            return True
        if fresh and notify is not None:
            # A commit whose last write came just before the watch began raised no event
            # and may not be visible yet: give it the same looks as a write seen.
            changed, poked = self._settle(deadline, False)
            if changed or poked:
                return changed
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if notify is None:
                poked = self._sleep(min(remaining, POLL_SECONDS), None)
                if self.changed():
                    return True
            else:
                poked = self._sleep(remaining, notify.fd)
                if notify.drain():  # the WAL was written
                    changed, poked = self._settle(deadline, poked)
                    if changed:
                        return True
                elif self.changed():
                    return True
            if poked:
                return False

    def _settle(self, deadline: float, poked: bool) -> tuple[bool, bool]:
        """The WAL was written: is a commit visible (and was there a poke meanwhile)?
        SQLite publishes a commit in the WAL index (shared memory, which raises no event)
        just after its last write, and a busy machine can hold the writer between the two;
        a big transaction writes pages before it commits. So look again at growing
        intervals, and stop at a poke, or when the WAL is empty: a checkpoint truncated it
        (which every role's runs when the node is quiet, an event without a commit), and a
        commit still to come writes to it again first, which is an event of its own."""
        pause = SETTLE_FIRST_SECONDS
        while True:
            if self.changed():
                return True, poked
            if poked or pause > SETTLE_LAST_SECONDS or time.monotonic() + pause >= deadline:
                return False, poked
            if self._wal_empty():  # a commit it held was published before it was emptied
                return self.changed(), poked
            poked = self._sleep(pause, None)
            pause *= 2

    def _wal_empty(self) -> bool:
        try:
            return os.stat(f"{self.path}-wal").st_size == 0
        except OSError:  # no WAL: nothing written since the last close
            return True

    def _sleep(self, seconds: float, fd: int | None) -> bool:
        """Until `fd` is readable, a poke or `seconds`; whether it was a poke."""
        fds = [f for f in (fd, self._poke_r) if f is not None and f >= 0]
        if not fds:
            time.sleep(seconds)
            return False
        ready, _, _ = select.select(fds, [], [], seconds)
        if self._poke_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._poke_r, 4096)
            return True
        return False

    def _notifier(self) -> WriteNotify | None:
        if not self._notify_tried:
            self._notify_tried = True
            self._notify = WriteNotify.open(self.path)
        return self._notify

    def close(self) -> None:
        self._conn.close()
        if self._notify is not None:
            self._notify.close()
        with self._poke_lock:
            for fd in (self._poke_r, self._poke_w):
                if fd >= 0:
                    os.close(fd)
            self._poke_r = self._poke_w = -1


class WriteNotify:
    """inotify on the database's folder: readable when a file in it is written; `drain`
    says whether one was the database's WAL, where every commit is written (a checkpoint
    writes the database file itself, and commits nothing)."""

    def __init__(self, fd: int, wal: bytes) -> None:
        self.fd = fd
        self.wal = wal

    @classmethod
    def open(cls, db_path: Path) -> WriteNotify | None:
        """None where inotify is missing or its per-user limit is reached: poll instead."""
        try:
            instance = inotify_instance()
        except OSError:
            return None
        if instance is None:
            return None
        fd, add = instance
        folder = os.fsencode(db_path.parent)
        if add(fd, folder, IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0:
            os.close(fd)
            return None
        return cls(fd, os.fsencode(db_path.name) + b"-wal")

    def drain(self) -> bool:
        """Read the pending events; whether one was about the WAL (or events were lost)."""
        ours = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return ours
            offset = 0
            while offset + EVENT.size <= len(data):
                _, mask, _, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size : offset + EVENT.size + length]
                ours = ours or bool(mask & IN_Q_OVERFLOW) or name.rstrip(b"\0") == self.wal
                offset += EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)

"""A cheap look for commits by other processes, in plain sqlite3 (no SQLAlchemy): the
downloader polls it for new requests, `p2pctl download` for its download's progress."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from p2pshare.db.quick import BUSY_TIMEOUT_MS


class ChangeWatch:
    """Has any other connection committed since the last look? SQLite's `PRAGMA
    data_version` on a read-only connection of its own: microseconds a call, no
    transaction, no SQLAlchemy, so a poller can look every few milliseconds and run its
    real queries only when something changed (https://sqlite.org/pragma.html#pragma_data_version)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False, isolation_level=None,
        )  # fmt: skip
        self._last: int | None = None

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

    def close(self) -> None:
        self._conn.close()

"""Keeping `p2p.db-wal` bounded: checkpoints on purpose, and the files' sizes.

SQLite's automatic checkpoint (every 1000 pages, PASSIVE) cannot copy frames a reader
still needs, and never shrinks the file: one `sqlite3` shell left open in a terminal
lets the WAL grow for as long as it stays open. So each role, every few seconds,
runs a PASSIVE checkpoint (never waits, never blocks a writer) and, when the node is
quiet and no reader holds old frames, a TRUNCATE one that returns the file to zero
bytes. TRUNCATE waits for writers, so it runs on its own connection with a short busy
timeout: a busy moment makes it give up, not stall the role's writers.

Plain sqlite3, no SQLAlchemy: `p2pctl status` reads the sizes too, and stays quick.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

# Frames written since the last check below which the node counts as quiet: the four
# roles' heartbeats write a few frames every 2 s; a download or a rollup writes far more.
QUIET_FRAMES = 200
# TRUNCATE waits at most this long for a writer to finish (it blocks new ones meanwhile).
TRUNCATE_WAIT_MS = 100
# After a checkpoint resets it, the WAL file is cut back to this size on the next write
# even while the node is busy (SQLite's journal_size_limit).
WAL_SIZE_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    mode: str  # PASSIVE or TRUNCATE
    busy: bool  # it could not finish (a reader or writer was in the way)
    wal_frames: int  # frames in the WAL before it ran (-1: not in WAL mode)
    copied: int  # frames it copied into the database


@dataclass(frozen=True)
class Sizes:
    database: int
    wal: int


def sizes(db_path: Path) -> Sizes:
    """Bytes of the database file and of its WAL (0 when there is none)."""
    return Sizes(_size(db_path), _size(Path(f"{db_path}-wal")))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Checkpointer:
    """One role's checkpoints: call `step()` every few seconds."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._conn: sqlite3.Connection | None = None
        self._last_frames = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.db_path, timeout=TRUNCATE_WAIT_MS / 1000)
            conn.isolation_level = None
            conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._conn = conn
        return self._conn

    def run(self, mode: str) -> Checkpoint:
        """One checkpoint; a locked database is reported as busy, never raised."""
        try:
            row = self._connection().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            return Checkpoint(mode, True, -1, 0)
        busy, frames, copied = (int(v) for v in row)
        return Checkpoint(mode, bool(busy), frames, copied)

    def step(self) -> Checkpoint:
        """PASSIVE always; TRUNCATE too when few frames came since the last step and
        the PASSIVE one copied every frame (no reader holds old ones)."""
        passive = self.run("PASSIVE")
        grown = passive.wal_frames - self._last_frames
        self._last_frames = passive.wal_frames
        complete = not passive.busy and passive.copied == passive.wal_frames
        if complete and passive.wal_frames > 0 and (grown < QUIET_FRAMES or grown < 0):
            done = self.run("TRUNCATE")
            if not done.busy:
                self._last_frames = 0
                return done
        return passive

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

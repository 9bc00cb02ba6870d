"""The indexer's writer process: large batches of hashed files recorded on the second core.

A thread cannot do it: SQLite releases the GIL for each row's step only, so a writer
thread and the hashing thread hand the GIL back and forth thousands of times a second and
run one after the other. A process of its own (its own connection, the same write
transactions and commits as the role would make) writes a batch while the role
hashes the next; the role waits for each commit before it goes on, so what is offered and
when it is durable (served.py) are exactly as without it.

The role speaks to it over its stdin and stdout: a pickled (root, batch, now) a batch, a
pickled None (committed) or one sentence (the error, the batch rolled back) in reply. Its
stdin closing (the role gone) ends it.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

from p2pshare.db.engine import Database
from p2pshare.db.local_index import BATCH_CACHE_KIB, record_local_rows
from p2pshare.db.values import HashedFile

# How long a writer asked to stop may take to finish its batch before it is killed.
STOP_SECONDS = 10.0


class WriterFailed(Exception):
    """The writer process could not record a batch (it said why, or it is gone)."""


class WriterProcess:
    """One writer process, for one pass of the indexer (not thread-safe: one batch at a
    time, which is how the indexer hands them over)."""

    def __init__(self, db_path: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def record(self, root: str, batch: list[tuple[str, HashedFile]], *, now: float) -> None:
        """Record these files under root in one write transaction, committed on return.

        Raises WriterFailed."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        try:
            pickle.dump((root, batch, now), stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
            reply = pickle.load(stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            raise WriterFailed(f"the index writer process is gone ({exc})") from None
        if reply is not None:
            raise WriterFailed(str(reply))

    def close(self) -> None:
        """Let the process finish and exit (killed if it does not within STOP_SECONDS)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):  # gone already: it has nothing left to do
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def serve(db_path: Path, requests: BinaryIO, replies: BinaryIO) -> None:
    """Record each batch read from `requests` and reply, until `requests` ends."""
    database = Database.open_existing(db_path)
    try:
        while True:
            try:
                root, batch, now = pickle.load(requests)
            except EOFError:
                return
            reply: str | None = None
            try:
                with database.write() as conn:
                    # Its one pooled connection keeps the large page cache between
                    # batches (see _roomy_cache): the next lands on the same b-tree pages.
                    conn.exec_driver_sql(f"PRAGMA cache_size=-{BATCH_CACHE_KIB}")
                    record_local_rows(conn, root, batch, now=now)
            except Exception as exc:  # told to the role, which logs it and scans again
                reply = f"{type(exc).__name__}: {exc}"
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
    finally:
        database.close()


def main() -> None:
    # What it makes (batches, rows) holds no cycle: the collector's passes over each batch
    # would find nothing to free.
    gc.disable()
    serve(Path(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()

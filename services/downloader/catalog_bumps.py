"""When the catalog version moves for small files that arrived: once for every batch of
the downloader, at a pace set by the catalog's size.

Every peer that hears a new version fetches this node's whole catalog again, so a move
costs each of them in proportion to the catalog. Batches used to move it each on their
own clock (two at a time, each moving it at its start and its end), and the server's
indexer moved it for the same files again: a 10,000-file folder moved it 28 times in 6 s,
and the seeder spent 1.3 CPU-s refetching a catalog that grew to 10,000 entries. Now the
moves share one clock, and the gap after a move grows with the entries it announced.
"""

from __future__ import annotations

import threading
import time

from p2pshare.db import index as dbindex
from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database

BUMP_SECONDS = 1.0
# A peer fetches, decodes and records a catalog entry in about 50 us; with this gap a peer
# spends at most a tenth of a core on this node's catalog (10,000 entries: every 5 s).
SECONDS_PER_ENTRY = 0.0005


class CatalogBumps:
    """One clock for the batches' catalog moves: `due` says whether a move may happen now
    (else it is owed), `moved` starts the next gap, `settle` makes an owed move once its
    gap has passed (the role's loop calls it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0  # time.monotonic() from which the next move may happen
        self.owed = False

    def due(self) -> bool:
        """Whether the caller moves the version now, in the transaction that records the
        files (then it calls `moved`); if not, a move is owed."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self.owed = True
                return False
            self.owed = False
            self._next = now + BUMP_SECONDS  # until `moved` knows the catalog's size
            return True

    def moved(self, entries: int) -> None:
        with self._lock:
            self._next = time.monotonic() + max(BUMP_SECONDS, entries * SECONDS_PER_ENTRY)

    def settle(self, database: Database, *, force: bool = False) -> None:
        """Make the owed move if its time has come (or, with `force`, at once: the role is
        stopping, and files it recorded must not stay unannounced)."""
        if not self.owed:
            return
        if force:
            with self._lock:
                self._next = 0.0
        if not self.due():
            return
        with database.write() as s:
            dbnode.bump_catalog_version(s, now=time.time())
            entries = dbindex.local_file_count(s)
        self.moved(entries)

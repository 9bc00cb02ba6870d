"""What peers are told of this node's catalog is durable before they are told.

Peers hold this node's catalog log up to the version it served them and later ask only
for what came after it. Most commits that move the log are cheap ones (`synchronous=NORMAL`:
the indexer's, say), which a power cut may roll back; a node that served version N and
came back at M < N would then number its next changes M+1 ... N again, and a peer that
held N would never ask for them. So before a version is served, one durable commit makes
it, and every commit before it, survive a cut: at most once per new version, whoever asks.
"""

from __future__ import annotations

import threading
import time

from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database


class ServedDurably:
    """Call with each catalog version about to be served (from any thread)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.version = -1  # the newest version made durable by this process
        self._lock = threading.Lock()

    def __call__(self, version: int) -> None:
        with self._lock:
            if version <= self.version:
                return
            # Any real write will do: its FULL commit fsyncs the WAL, and so every commit
            # before it, the ones that moved the log up to `version` among them.
            with self.database.write(durable=True) as s:
                dbnode.touch(s, now=time.time())
            self.version = version

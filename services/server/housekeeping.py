"""The server's housekeeping: ledgers and history kept to P2P_HISTORY_DAYS, free pages
returned.

The server writes `uploads`, so it rolls them up too: every HOUSEKEEPING_SECONDS it
probes for rows older than the horizon (one index lookup) and, if there are any,
moves them into `upload_days` in batches of short transactions. Downloads that ended
before the horizon go the same way into `download_days`, then requests left without
downloads into `request_days`, then `files` rows nothing refers to any more (`db.history`).
The catalog log's oldest tombstones go beyond its bound (`db.catalog_log.compact`).
Then it gives the freed pages back to the file system (`PRAGMA incremental_vacuum`). A
database from before schema v5 has auto_vacuum off; the first rollup that empties its
backlog switches it with one VACUUM, when the file is at its smallest.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from p2pshare.db import catalog_log, history, ledger
from p2pshare.db.engine import BUSY_TIMEOUT_MS, Database

log = logging.getLogger("p2p.housekeeping")

HOUSEKEEPING_SECONDS = 5.0
# Between two rollup batches: other writers get the lock in the gap.
BATCH_GAP_SECONDS = 0.005


@dataclass
class Housekeeping:
    database: Database
    history_days: int
    stop: threading.Event
    # Forgotten files are looked for after downloads were rolled up, and once at start
    # (a node upgraded to schema v6 may hold some from before).
    _files_due: bool = True

    def step(self, now: float) -> int:
        """One round: roll up uploads and downloads, forgive old bad peers, forget files
        nothing refers to, vacuum; returns rows rolled up or deleted."""
        cutoff = ledger.horizon(now, self.history_days)
        with self.database.read() as s:
            backlog = ledger.has_rows_before(s, cutoff)
        started = time.monotonic()
        moved = self._in_batches(ledger.roll_up_batch, cutoff) if backlog else 0
        with self.database.write() as s:
            forgiven = ledger.expire_bad_peers(s, cutoff)
        if forgiven:
            log.info("forgave %d bad-peer marks older than %d days", forgiven, self.history_days)
        moved += self.roll_up_history(cutoff)
        with self.database.write() as s:
            compacted = catalog_log.compact(s)
        if compacted:
            log.info("compacted %d removed entries out of the catalog log", compacted)
        if moved:
            log.info(
                "rolled up %d uploads rows older than %d days into upload_days in %.1f s",
                moved,
                self.history_days,
                time.monotonic() - started,
            )
            self.vacuum()
        return moved

    def roll_up_history(self, cutoff: float) -> int:
        """Downloads and requests older than cutoff into their per-day tables, then files
        nothing refers to any more; returns rows moved or deleted."""
        with self.database.read() as s:
            backlog = history.has_old_downloads(s, cutoff)
        requests = files = 0
        started = time.monotonic()
        downloads = self._in_batches(history.roll_up_downloads, cutoff) if backlog else 0
        if downloads or self._files_due:
            with self.database.write() as s:
                requests = history.roll_up_requests(s, cutoff)
            files = self._in_batches(history.forget_files, cutoff)
            self._files_due = False
        if downloads or requests or files:
            log.info(
                "rolled up %d downloads and %d requests older than %d days into "
                "download_days and request_days, forgot %d files nothing refers to, in %.1f s",
                downloads,
                requests,
                self.history_days,
                files,
                time.monotonic() - started,
            )
        return downloads + requests + files

    def _in_batches(self, batch: Callable[[Connection, float], int], cutoff: float) -> int:
        """Run one batch a short transaction until it finds nothing more (or the role
        stops), leaving the lock to other writers between two; returns rows moved."""
        total = 0
        while not self.stop.is_set():
            with self.database.write() as s:
                n = batch(s, cutoff)
            total += n
            if n == 0:
                break
            time.sleep(BATCH_GAP_SECONDS)
        return total

    def vacuum(self) -> None:
        """Return free pages to the file system; switch an old database to incremental
        auto_vacuum first (one VACUUM, the only way SQLite allows)."""
        conn = sqlite3.connect(self.database.path, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.isolation_level = None
        try:
            mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
            if mode != 2:  # 2: INCREMENTAL
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
                log.info("switched the database to incremental auto_vacuum (one VACUUM)")
            else:
                # Each step of this pragma frees one page, and sqlite3's execute() steps
                # a statement without rows once; executescript runs it to the end.
                conn.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.OperationalError as exc:
            log.warning("could not vacuum the database, will try after the next rollup: %s", exc)
        finally:
            conn.close()


def housekeeping_loop(keeper: Housekeeping) -> None:
    """Run `step` at start and every HOUSEKEEPING_SECONDS until stopped; an error in one
    round is logged, not fatal."""
    while not keeper.stop.is_set():
        try:
            keeper.step(time.time())
        except Exception:
            log.exception("housekeeping failed; retrying")
        keeper.stop.wait(HOUSEKEEPING_SECONDS)

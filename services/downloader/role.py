"""Downloader role: runs the downloads p2pctl queued, several at once, resuming any a crash cut.

A big file gets a job of its own (job.py); small files go in batches
(small_batch.py), hundreds at a time, and whatever a batch cannot finish simply comes
back here as a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from p2pshare.db import batch as dbbatch
from p2pshare.db import jobs as dbjobs
from p2pshare.services.downloader.engine import Download, Shared
from p2pshare.services.downloader.job import DownloadJob
from p2pshare.services.downloader.manifests import ManifestFetcher
from p2pshare.services.downloader.pool import PeerPool
from p2pshare.services.downloader.small_batch import (
    BATCH_FILES,
    SMALL_MAX,
    SMALL_MAX_CHUNKS,
    SmallBatch,
    batchable,
)
from p2pshare.services.runtime import RoleContext, run_role, start_heartbeat

log = logging.getLogger("p2p.downloader")

# A queued download is picked up the moment its request is committed: the loop sleeps on
# the database's change counter (watch.py: inotify, else a look every 10 ms) and reads the
# queue itself only when it moved, a job or batch ended, or POLL_SECONDS passed. A batch's
# catalog move owed is made within CHECK_SECONDS of its gap's end.
CHECK_SECONDS = 0.01
POLL_SECONDS = 0.5
MAX_ACTIVE = 3
# Two batches: the next fetches while the last publishes its final group.
MAX_BATCHES = 2
STOP_GRACE_SECONDS = 6.0
# A paused download cancelled leaves its temp file to this sweep; no hurry.
SWEEP_SECONDS = 5.0


def run(ctx: RoleContext) -> None:
    ctx.detail = "0 running, 0 db writes"
    ctx.record_settings(
        {
            "download_dir": ctx.settings.download_dir,
            "temp_dir": ctx.settings.temp_dir,
            "wait_timeout": ctx.settings.wait_timeout,
        }
    )
    start_heartbeat(ctx)
    runner = Runner(ctx)
    # Before any job starts: what a crash or a cancel left behind goes now.
    sweep_temp(ctx, set())
    next_sweep = time.monotonic() + SWEEP_SECONDS
    watch = ctx.watch_until_stop()
    runner.poke = watch.poke  # a job's end wakes the loop: its slot is free
    last_poll = woke = 0.0
    try:
        while not ctx.stop.is_set():
            # With nothing unfinished, nothing is due before the next sweep: a download
            # queued, resumed or ended is a commit, and that wakes the watch.
            idle = runner.idle()
            wait = max(0.0, (next_sweep if idle else last_poll + POLL_SECONDS) - time.monotonic())
            changed = watch.wait_changed(wait)
            # At most one look every CHECK_SECONDS, however often other roles commit.
            time.sleep(max(0.0, woke + CHECK_SECONDS - time.monotonic()))
            woke = time.monotonic()
            if ctx.stop.is_set():
                break
            woken = runner.wake.is_set()
            if not changed and not woken and woke - last_poll < POLL_SECONDS:
                continue
            runner.wake.clear()
            last_poll = time.monotonic()
            runner.reap()
            if time.monotonic() >= next_sweep:
                sweep_temp(ctx, runner.running())
                runner.pool.prune()
                next_sweep = time.monotonic() + SWEEP_SECONDS
            runner.start_waiting(woken)
            ctx.detail = (
                f"{runner.count(DownloadJob)} running, "
                f"{len(runner.running()) - runner.count(DownloadJob)} in batches, "
                f"{ctx.database.write_count} db writes"
            )
    finally:
        watch.close()
        runner.join(STOP_GRACE_SECONDS)
        runner.pool.close()


class Runner:
    """The running downloads (jobs and batches), and which downloads go to which."""

    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.shared = Shared(ctx.settings, ctx.database, ctx.stop, ctx.tls)
        self.downloads: list[tuple[threading.Thread, Download[Any]]] = []
        self.not_batchable: set[int] = set()  # a batch gave them back: full jobs run them
        self.pool = PeerPool()
        self.manifests = ManifestFetcher(ctx, self._woken)
        self.wake = threading.Event()  # a job or batch ended: its slot is free
        self.poke: Callable[[], None] = lambda: None  # ...and this wakes the role's loop
        self.looked_for_big = 0.0
        self.read_all_at = 0.0
        self.mark: tuple[int, int, int] | None = None  # unfinished downloads at the last read

    def _woken(self) -> None:
        self.wake.set()
        self.poke()

    def running(self) -> set[int]:
        return {i for _, download in self.downloads for i in download.download_ids}

    def count(self, policy: type[Download[Any]]) -> int:
        return sum(isinstance(download, policy) for _, download in self.downloads)

    def idle(self) -> bool:
        """Nothing runs and, at the last look, no download was unfinished."""
        return not self.downloads and self.mark is not None and self.mark[0] == 0

    def reap(self) -> None:
        for thread, download in list(self.downloads):
            if not thread.is_alive():
                self.downloads.remove((thread, download))
                self.not_batchable.update(download.left_over)

    def start_waiting(self, woken: bool) -> None:
        batch_slot = self.count(SmallBatch) < MAX_BATCHES
        job_slot = self.count(DownloadJob) < MAX_ACTIVE
        if not (batch_slot or job_slot):
            return  # nothing could start: spare the query, which grows with the queue
        now = time.monotonic()
        if not batch_slot and not woken and now - self.looked_for_big < POLL_SECONDS:
            # Batches commit a group every fraction of a second and each commit wakes this
            # loop: a big download queued meanwhile waits at most POLL_SECONDS.
            return
        self.looked_for_big = now
        # Every unfinished download when a job or batch ended (what it gave back), or
        # POLL_SECONDS passed; else only the queued ones, what a change can have added:
        # and not even those when nothing was queued, resumed or ended since the last
        # read (the queue's query would otherwise run at every commit of another role,
        # many a second in a boot storm, under the GIL its download threads need).
        full = woken or now - self.read_all_at >= POLL_SECONDS
        mark = self._mark()
        if mark is not None and mark[0] == 0:  # nothing unfinished, so nothing to read
            self.mark = mark
            self.not_batchable.clear()
            return
        if not full and mark is not None and mark == self.mark:
            return
        self.mark = mark
        if full:
            self.read_all_at = now
        running = self.running()
        only_big = None if batch_slot else (SMALL_MAX_CHUNKS, SMALL_MAX)
        with self.ctx.database.read() as s:
            runnable = dbbatch.runnable_downloads(
                s, only_big=only_big, also=self.not_batchable, only_queued=not full
            )
        waiting = [r for r in runnable if r.download_id not in running]
        unhashed = {r.file_id for r in waiting if not r.hashed}
        if unhashed:  # started once their manifests are here (the fetcher wakes us)
            self.manifests.want(unhashed)
            waiting = [r for r in waiting if r.hashed]
        if only_big is None and full:  # every runnable download was read: forget the ended
            self.not_batchable.intersection_update(r.download_id for r in waiting)
        small = [
            r.download_id
            for r in waiting
            if batchable(r.chunks, r.size)
            and not r.resuming
            and r.download_id not in self.not_batchable
        ]
        if small and batch_slot:
            self._start(SmallBatch(small[:BATCH_FILES], self.shared, self.pool))
        if job_slot:
            batched = set(small)
            big = [r.download_id for r in waiting if r.download_id not in batched]
            for download_id in big[: MAX_ACTIVE - self.count(DownloadJob)]:
                with self.ctx.database.read() as s:
                    spec = dbjobs.job_spec(s, download_id)
                assert spec is not None
                self._start(DownloadJob(spec, self.shared))

    def _mark(self) -> tuple[int, int, int] | None:
        """dbbatch.unfinished_mark, or None when it cannot be read (the full read then
        runs, and its own query says what is wrong)."""
        try:
            with self.ctx.database.read() as s:
                return dbbatch.unfinished_mark(s)
        except SQLAlchemyError:
            return None

    def _start(self, download: Download[Any]) -> None:
        def run() -> None:
            try:
                download.run()
            finally:  # its slot is free
                self.wake.set()
                self.poke()

        thread = threading.Thread(target=run, name=download.label, daemon=True)
        self.downloads.append((thread, download))
        thread.start()

    def join(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        for thread, _ in self.downloads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))


def sweep_temp(ctx: RoleContext, running: set[int]) -> None:
    """Remove temp files of downloads that ended without a job to clean up after them (a
    paused download cancelled, a crash between a version switch and its rename)."""
    folder = ctx.settings.temp_dir
    try:
        names = [p.name for p in folder.iterdir() if p.name.endswith(".part")]
    except OSError:
        return
    if not names:
        return
    with ctx.database.read() as s:
        kept = dbjobs.downloads_keeping_temp(s) | running
    removed = []
    for name in sorted(names):
        owner = name.split("-", 1)[0]
        if owner.isdigit() and int(owner) in kept:
            continue
        try:
            (folder / name).unlink()
        except OSError as exc:
            log.warning("could not remove the stale temp file %s: %s", name, exc.strerror)
        else:
            removed.append(name)
    if removed:  # one line however many: a crash can leave dozens
        shown = ", ".join(removed[:5]) + (
            f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        )
        log.info(
            "removed %d temp file%s no unfinished download owns: %s",
            len(removed),
            "" if len(removed) == 1 else "s",
            shown,
        )


def main() -> None:
    run_role("downloader", run)


if __name__ == "__main__":
    main()

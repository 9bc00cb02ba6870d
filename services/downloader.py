"""Downloader role: runs the downloads p2pctl queued, several at once, resuming any a crash cut."""

from __future__ import annotations

import logging
import threading
import time

from p2pshare.db import downloads as dbdl
from p2pshare.services.download_job import DownloadJob
from p2pshare.services.runtime import RoleContext, run_role, start_heartbeat

log = logging.getLogger("p2p.downloader")

# A queued download is picked up within CHECK_SECONDS: the database's change counter is
# read that often (microseconds), the queue itself only when it moved or POLL_SECONDS
# passed (a job that ended frees its slot without a commit the counter would see).
CHECK_SECONDS = 0.01
POLL_SECONDS = 0.5
MAX_ACTIVE = 3
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
    jobs: dict[int, threading.Thread] = {}
    # Before any job starts: what a crash or a cancel left behind goes now.
    sweep_temp(ctx, set())
    next_sweep = time.monotonic() + SWEEP_SECONDS
    watch = ctx.database.watch()
    last_poll = 0.0
    try:
        while not ctx.stop.wait(CHECK_SECONDS):
            if not watch.changed() and time.monotonic() - last_poll < POLL_SECONDS:
                continue
            last_poll = time.monotonic()
            for download_id, thread in list(jobs.items()):
                if not thread.is_alive():
                    del jobs[download_id]
            if time.monotonic() >= next_sweep:
                sweep_temp(ctx, set(jobs))
                next_sweep = time.monotonic() + SWEEP_SECONDS
            if len(jobs) >= MAX_ACTIVE:
                continue
            with ctx.database.read() as s:
                waiting = [d for d in dbdl.unfinished_downloads(s) if d not in jobs]
            for download_id in waiting[: MAX_ACTIVE - len(jobs)]:
                jobs[download_id] = start_job(ctx, download_id)
            ctx.detail = f"{len(jobs)} running, {ctx.database.write_count} db writes"
    finally:
        watch.close()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for thread in jobs.values():
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
        kept = dbdl.downloads_keeping_temp(s) | running
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


def start_job(ctx: RoleContext, download_id: int) -> threading.Thread:
    with ctx.database.read() as s:
        spec = dbdl.job_spec(s, download_id)
    assert spec is not None
    job = DownloadJob(
        spec, ctx.settings, ctx.database, ctx.stop, ctx.settings.wait_timeout, ctx.tls
    )
    thread = threading.Thread(target=job.run, name=f"download-{download_id}", daemon=True)
    thread.start()
    return thread


def main() -> None:
    run_role("downloader", run)


if __name__ == "__main__":
    main()

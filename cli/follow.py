"""Following a download request with one progress bar until every file in it has ended.

Each poll is one short read (`db.following`, `db.reports`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import click

from p2pshare.cli.context import Ctl, NodeNotRunning, UserError
from p2pshare.db import following, queueing, reports
from p2pshare.db.status import ENDED, Status
from p2pshare.db.watch import ChangeWatch
from p2pshare.services.units import plural

if TYPE_CHECKING:
    from tqdm import tqdm

# A small file is done in milliseconds; a slow poll would be most of what the user waits.
# So wait on the database's change counter (watch.py: asleep until a commit where inotify
# is, else a look of microseconds every 10 ms), and run the real queries only when it
# moved, or MAX_POLL_SECONDS passed. After a change they wait QUERY_PAUSE times the CPU
# time they last took: a single file's take well under a millisecond, so its end is seen
# within a few milliseconds, while a folder of thousands of files on a node that commits
# all the time keeps its queries to a tenth of a core; a shorter pause would take CPU
# from the downloader it is waiting for.
QUERY_PAUSE = 9.0
MAX_POLL_SECONDS = 1.0


class Interrupted(UserError):
    """Ctrl-C while following: no mistake, so no `error:` before what it says."""

    exit_code = 130

    def show(self, file: object = None) -> None:
        click.echo(self.message, err=True)


class Paused(UserError):
    exit_code = 4


# Requests of one download: a file, or a torrent (a folder torrent too is one download).
SINGLE = ("file", "torrent")


def follow(ctl: Ctl, queued: queueing.Queued, role: str = "downloader") -> None:
    """Show progress until every download of the request has ended (or is paused), while
    `role` (the one running them: downloader, or torrent) is alive.
    Returns when all arrived; raises UserError saying how many did not and why."""
    bar = LazyBar(queued)
    try:
        states = _poll(ctl, queued, bar, role)
    except KeyboardInterrupt:
        raise Interrupted(
            "stopped following; the download continues in the background "
            "(p2pctl history shows it, p2pctl pause or cancel stops it)"
        ) from None
    finally:
        bar.close()
    _report(ctl, queued, states)


class LazyBar:
    """The progress bar, made at the first look that finds the request still running.

    Importing tqdm is slow (its version lookup reads package metadata): a small
    file is often done before p2pctl first looks, and then needs no bar, only its one
    line saying so."""

    def __init__(self, queued: queueing.Queued) -> None:
        self.queued = queued
        self.single = queued.kind in SINGLE
        self.bar: tqdm | None = None

    def show(self, progress: following.RequestProgress, *, ended: bool) -> None:
        if self.bar is None:
            if ended:
                return
            from tqdm import tqdm

            name = self.queued.candidates[0].name[-32:]
            self.bar = tqdm(
                total=self.queued.total_bytes,
                # What a resumed download held already is no part of its rate or ETA.
                initial=progress.bytes_done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name if self.single else f"0/{len(self.queued.downloads)} files",
                dynamic_ncols=True,
                leave=True,
            )
        _show(self.bar, progress, self.single, len(self.queued.downloads))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _poll(
    ctl: Ctl, queued: queueing.Queued, bar: LazyBar, role: str
) -> list[following.FollowState]:
    watch = ChangeWatch(ctl.settings.db_path)
    try:
        return _poll_watched(ctl, queued, bar, watch, role)
    finally:
        watch.close()


def _poll_watched(
    ctl: Ctl, queued: queueing.Queued, bar: LazyBar, watch: ChangeWatch, role: str
) -> list[following.FollowState]:
    ids = queueing.json_list(queued.downloads)
    while True:
        last, cpu = time.monotonic(), time.thread_time()
        watch.changed()  # what the queries below see is what the next change is against
        with ctl.database.read() as conn:
            progress = following.request_progress(conn, ids)
            beats = reports.role_statuses(conn, now=time.time(), with_web=True)
            roles = {r.role: r for r in beats}
            ended = all(s in (*ENDED, Status.PAUSED) for s in progress.counts)
            if ended:  # the rows, once, for the report
                states = following.follow_states(conn, queued.downloads)
        # CPU time, not wall: on a busy machine a preempted round must not stretch the pause.
        queried = time.thread_time() - cpu
        if progress.downloads != len(queued.downloads):
            raise UserError("a download of this request is gone from the database")
        bar.show(progress, ended=ended)
        if ended:
            return states
        running = roles.get(role)
        if running is None or not running.alive:
            raise NodeNotRunning(
                f"the {role} role stopped; the download resumes when it "
                "runs again (p2pctl history shows it)"
            )
        _wait_for_change(watch, last, queried * (1 + QUERY_PAUSE))


def _show(bar: tqdm, progress: following.RequestProgress, single: bool, files: int) -> None:
    """The bar's bytes, its file count (a folder or --all) and its peers and waiting note."""
    if progress.size != bar.total:  # a download moved to another version of its file
        bar.total = progress.size
    bar.update(progress.bytes_done - bar.n)
    if not single:
        bar.set_description_str(
            f"{progress.counts.get(Status.DONE, 0)}/{files} files", refresh=False
        )
    note = ""
    if progress.waiting:
        name, reason = progress.waiting
        note = f", {reason}" if single else f", {name}: {reason}"
    bar.set_postfix_str(f"{plural(progress.peers, 'peer')}{note}", refresh=False)


def _wait_for_change(watch: ChangeWatch, last: float, least: float) -> None:
    """Until the database changed (and `least` seconds passed since `last`) or
    MAX_POLL_SECONDS did."""
    pause = last + least - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    watch.wait_changed(max(0.0, last + MAX_POLL_SECONDS - time.monotonic()))


def _report(ctl: Ctl, queued: queueing.Queued, states: list[following.FollowState]) -> None:
    """One line per file that did not arrive, then one sentence; exit 0 only if all did."""
    folder = ctl.settings.download_dir
    if queued.kind in SINGLE:
        st = states[0]
        if st.status == Status.DONE:
            click.echo(f"saved as {folder / (st.saved_as or st.name)}")
            return
        if st.status == Status.PAUSED and st.reason and st.reason != queueing.PAUSED_BY_USER:
            raise Paused(f"download paused: {st.reason}")  # the node's reason says what next
        if st.status == Status.PAUSED:
            raise Paused(f"download paused; p2pctl resume {st.id} continues it")
        raise UserError(f"download {st.status}: {st.reason or 'no reason recorded'}")
    for st in states:
        if st.status != Status.DONE:
            click.echo(f"{st.status}: {st.name}: {st.reason or 'no reason recorded'}", err=True)
    counts = Counter(st.status for st in states)
    here = f" ({len(queued.already_here)} already here)" if queued.already_here else ""
    where = f" under {folder / queued.pattern}" if queued.kind == "folder" else ""
    arrived = f"{counts[Status.DONE]} of {plural(len(states), 'file')} arrived{where}{here}"
    if counts[Status.DONE] == len(states):
        click.echo(arrived)
        return
    missing = ", ".join(
        f"{counts[s]} {s}" for s in (Status.FAILED, Status.CANCELLED, Status.PAUSED) if counts[s]
    )
    if counts[Status.PAUSED] and not counts[Status.FAILED] and not counts[Status.CANCELLED]:
        raise Paused(f"{arrived}; {missing}: p2pctl resume {queued.pattern!r} continues them")
    raise UserError(f"{arrived}; {missing}")

"""The listener's one writer: every database write of the listener, on one thread, in short batches.

Announcements heard, catalogs fetched and expiry come in as jobs; the writer takes as
many as fit in TX_BUDGET seconds into one transaction, then rests before the next, so
the other roles' writers (the downloader's progress, a heartbeat, p2pctl) wait at most
one of our transactions: SQLite's busy handler retries a waiting writer at gaps of at
most about half of what it has waited so far (never more than 100 ms, and 20 ms or less
in its first 50 ms), so a rest of half the transaction's length, and at least MIN_REST,
always lets it in. A catalog comes in pages (protocol.PAGE_ENTRIES entries at most),
each applied in a transaction of its own. Files
rows nothing refers to any more are swept in slices of ORPHAN_SLICE rows: after peers
expire at once, after catalogs change at most every ORPHAN_EVERY seconds (not after
every write, which costs a scan of `files` each).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import peers as dbpeers
from p2pshare.services import protocol
from p2pshare.services.listener.catalog_fetch import CatalogFetcher, FetchedPage, Wanted
from p2pshare.services.runtime import RoleContext

log = logging.getLogger("p2p.listener")

# A transaction's length: what another role's write waits at most. Short, because a
# download of a few hundred MiB takes well under a second, and each of its few writes
# (start, progress, finish) may wait one; a longer one records a storm sooner at the cost
# of downloads beside it.
TX_BUDGET = 0.02
MIN_REST = 0.025
ORPHAN_EVERY = 10.0
ORPHAN_SLICE = 5000
ANNOUNCES_PER_STEP = 64  # announcements recorded with one lookup, between looks at the clock
# Catalog pages fetched and not yet applied: a fetch thread waits beyond this many pages,
# or this many entries in them (a page of 5,000 entries is some 5 MB of Python objects),
# so memory stays bounded however far the writer is behind and however large a catalog;
# a page is always let in when none waits.
MAX_PENDING_CATALOGS = 16
MAX_PENDING_ENTRIES = 12_000
# Announcements waiting: beyond this the UDP loop waits, and the kernel drops what
# does not fit its socket buffer (a flood), rather than this process growing.
MAX_PENDING_ANNOUNCES = 50_000
IDLE_WAIT = 0.25
# Announcements are gathered this long before they are written: last_seen a tenth of a
# second late is nothing against P2P_PEER_TTL. A newcomer's is written at once: a node
# that just started is waited for by whoever started it.
GATHER_SECONDS = 0.1
RETRY_EVERY = 1.0  # failed fetches due again are looked for this often
STOP_WAIT = 5.0  # seconds the role waits for the writer's last transaction


@dataclass
class Heard:
    """Valid announcements, in the order received."""

    items: deque[tuple[protocol.Announce, str]]
    at: float = field(default_factory=time.monotonic)
    newcomer: bool = False  # from a node whose catalog this listener never fetched


@dataclass
class Expire:
    now: float


@dataclass
class Apply:
    catalog: FetchedPage


Job = Heard | Expire | Apply


@dataclass
class After:
    """What to do once a transaction has committed: log lines and fetches to start."""

    new_peers: list[tuple[protocol.Announce, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # ip, why
    announced: int = 0
    wanted: list[Wanted] = field(default_factory=list)
    applied: list[tuple[FetchedPage, int | None]] = field(default_factory=list)
    broken: list[tuple[FetchedPage, str]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    live: set[str] | None = None


class PageBudget:
    """What fetch threads may hand the writer before they wait: MAX_PENDING_CATALOGS pages
    holding MAX_PENDING_ENTRIES entries at most (one page always)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pages = 0
        self.entries = 0

    def take(self, entries: int, stop: threading.Event) -> bool:
        """Wait for room for a page of `entries`; False if the role stops first."""
        with self.cond:
            while self.pages and (
                self.pages >= MAX_PENDING_CATALOGS or self.entries + entries > MAX_PENDING_ENTRIES
            ):
                if stop.is_set():
                    return False
                self.cond.wait(IDLE_WAIT)
            self.pages += 1
            self.entries += entries
            return True

    def give_back(self, entries: int) -> None:
        with self.cond:
            self.pages -= 1
            self.entries -= entries
            self.cond.notify_all()


class ListenerWriter:
    """Owns every write of the listener; the UDP loop and the fetch threads only hand it jobs."""

    def __init__(self, ctx: RoleContext, on_refused: Callable[[str, str], None]) -> None:
        self.ctx = ctx
        self.on_refused = on_refused
        self.fetcher = CatalogFetcher(ctx, self.put_catalog)
        self.jobs: deque[Job] = deque()
        self.lock = threading.Condition()
        self.announces = 0  # announcements queued
        self.catalogs = PageBudget()
        self.orphans_dirty = False
        self.sweep_soon = False  # peers left: sweep at once, not at next_sweep
        self.sweep_after: int | None = None  # files id the orphan sweep goes on from
        self.next_sweep = time.monotonic() + ORPHAN_EVERY
        self.thread = threading.Thread(target=self._loop, name="writer", daemon=True)

    def start(self) -> None:
        self.fetcher.start()
        self.thread.start()

    def join(self) -> None:
        self.thread.join(STOP_WAIT)

    # ------------------------------------------------------------ jobs in

    def put_heard(self, heard: list[tuple[protocol.Announce, str]]) -> None:
        """Queue announcements; waits while MAX_PENDING_ANNOUNCES are already queued.

        Announcements that follow others still queued join their job: in a boot storm
        they come a few datagrams at a time, and each job recorded on its own costs the
        lookups of a whole step (the node's state, the peers it names) for a handful of
        rows, most of the writer's time for announcements in a storm.
        """
        newcomer = any(not self.fetcher.knows(ann.node_id) for ann, _ in heard)
        with self.lock:
            while self.announces >= MAX_PENDING_ANNOUNCES and not self.ctx.stop.is_set():
                self.lock.wait(IDLE_WAIT)
            self.announces += len(heard)
            last = self.jobs[-1] if self.jobs else None
            if isinstance(last, Heard):  # queued, so not being written: safe to extend
                last.items.extend(heard)
                last.newcomer = last.newcomer or newcomer
            else:
                self.jobs.append(Heard(deque(heard), newcomer=newcomer))
            self.lock.notify_all()

    def put_expire(self, now: float) -> None:
        with self.lock:
            self.jobs.append(Expire(now))
            self.lock.notify_all()

    def put_catalog(self, catalog: FetchedPage) -> None:
        """Queue a fetched catalog (called by fetch threads; waits while the writer is behind)."""
        if not self.catalogs.take(catalog.size, self.ctx.stop):
            return
        with self.lock:
            self.jobs.append(Apply(catalog))
            self.lock.notify_all()

    # ------------------------------------------------------------ the thread

    def _loop(self) -> None:
        swept = False  # the last transaction was a sweep's: jobs go next, however many
        next_retry = 0.0
        while not self.ctx.stop.is_set():
            with self.lock:
                if not self.jobs and not self._sweep_due():
                    self.lock.wait(IDLE_WAIT)
                busy = bool(self.jobs)
                gather = self._gather_for()
            if gather > 0:
                self.ctx.stop.wait(gather)
                continue
            if time.monotonic() >= next_retry:
                self.fetcher.retry_due(time.time())
                next_retry = time.monotonic() + RETRY_EVERY
            if self._sweep_due() and not (busy and swept):
                took, swept = self._sweep(), True
            elif busy:
                took, swept = self._transaction(), False
            else:
                continue
            # Rest, so a writer waiting in another process gets in (see the module's docstring).
            self.ctx.stop.wait(max(MIN_REST, took / 2))

    def _gather_for(self) -> float:
        """Seconds to wait for more announcements before writing those queued (lock held).

        A steady round of 1,000 peers arrives as one datagram every few milliseconds;
        written as they come, each would cost a transaction of its own."""
        if not self.jobs or self.announces >= ANNOUNCES_PER_STEP:
            return 0.0
        if any(not isinstance(job, Heard) or job.newcomer for job in self.jobs):
            return 0.0
        first = self.jobs[0]
        assert isinstance(first, Heard)
        return first.at + GATHER_SECONDS - time.monotonic()

    def _take(self) -> Job | None:
        with self.lock:
            return self.jobs.popleft() if self.jobs else None

    def _put_back(self, job: Job) -> None:
        with self.lock:
            self.jobs.appendleft(job)

    def _transaction(self) -> float:
        """One transaction of as many jobs as fit in TX_BUDGET; returns its seconds."""
        started = time.monotonic()
        after = After()
        finished: list[Job] = []  # taken and done (a job not finished goes back in the queue)
        job: Job | None = None
        try:
            with self.ctx.database.write() as s:
                while time.monotonic() - started < TX_BUDGET:
                    job = self._take()
                    if job is None:
                        break
                    if not self._step(s, job, started, after):
                        self._put_back(job)
                        break
                    finished.append(job)
        except Exception:
            # A bug or a database error: what this transaction held is lost, except the
            # catalogs, fetched again shortly; announcements come again anyway.
            log.exception("listener write failed")
            lost = finished if job is None or job in finished else [*finished, job]
            for done in lost:
                if isinstance(done, Apply):
                    self.catalogs.give_back(done.catalog.size)
                    self.fetcher.not_applied(done.catalog.wanted, "could not be written")
            return time.monotonic() - started
        self._after(after)
        return time.monotonic() - started

    def _step(self, s: Connection, job: Job, started: float, after: After) -> bool:
        """Do (part of) a job inside the transaction; False if it is not finished."""
        if isinstance(job, Heard):
            return self._record_heard(s, job, started, after)
        if isinstance(job, Expire):
            gone = dbpeers.expire_peers(s, now=job.now, ttl=self.ctx.settings.peer_ttl)
            if gone:
                after.gone += gone
                after.live = dbpeers.live_node_ids(s)
                # What a peer that left offered goes at once (in the next slices), not
                # at the next scheduled sweep: peers leave seldom, catalogs come often.
                # A sweep under way goes on, and a whole new one follows it, since rows
                # it has passed may have become orphans only now.
                self.orphans_dirty = self.sweep_soon = True
            return True
        return self._apply(s, job, after)

    def _record_heard(self, s: Connection, job: Heard, started: float, after: After) -> bool:
        waiting = len(job.items)
        try:
            self._record_some(s, job, started, after, time.time())
        finally:
            with self.lock:
                self.announces -= waiting - len(job.items)
                self.lock.notify_all()
        return not job.items

    def _record_some(
        self, s: Connection, job: Heard, started: float, after: After, now: float
    ) -> None:
        while job.items:
            if time.monotonic() - started >= TX_BUDGET and after.announced:
                break
            part = [job.items.popleft() for _ in range(min(ANNOUNCES_PER_STEP, len(job.items)))]
            records = [
                dbpeers.Heard(
                    ann.node_id,
                    ann.username,
                    ip,
                    ann.tcp_port,
                    ann.catalog_version,
                    ann.seq,
                    ann.fingerprint,
                    ann.tls,
                    ann.catalog_epoch,
                    ann.proves_identity,
                )
                for ann, ip in part
            ]
            outcomes = dbpeers.record_announces(s, records, now=now)
            after.announced += len(part)
            for (ann, ip), outcome in zip(part, outcomes, strict=True):
                if outcome.ignored:
                    continue
                if outcome.peer_id is None:
                    after.refused.append((ip, f"{outcome.refused} from node {ann.node_id[:8]}"))
                    continue
                if outcome.new:
                    after.new_peers.append((ann, ip))
                if outcome.needs_catalog:
                    after.wanted.append(
                        Wanted(
                            outcome.peer_id,
                            ann.node_id,
                            ann.catalog_version,
                            ip,
                            ann.tcp_port,
                            ann.fingerprint,
                            ann.tls,
                            ann.catalog_epoch,
                        )
                    )

    def _apply(self, s: Connection, job: Apply, after: After) -> bool:
        fetched = job.catalog
        try:
            applied = dbcatalogs.apply_page(
                s, fetched.wanted.peer_id, fetched.wanted.node_id, fetched.page, now=time.time(),
                entry_budget=self.ctx.settings.peer_catalog_entries,
            )  # fmt: skip
        except dbcatalogs.NotContinuous as exc:
            after.broken.append((fetched, str(exc)))
            return True
        # Holdings gone may leave contents nobody offers. A first fetch removes none: its
        # pages must not set off a sweep of every content (a slice of it between each two
        # of a million-entry catalog's pages).
        if applied is not None and applied.dropped:
            self.orphans_dirty = True
        after.applied.append((fetched, None if applied is None else applied.kept))
        return True

    def _after(self, after: After) -> None:
        for ip, why in after.refused:
            self.on_refused(ip, why)
        for ann, ip in after.new_peers:
            log.info(
                "new peer %s at %s:%d (node %s)", ann.username, ip, ann.tcp_port, ann.node_id[:8]
            )
        for fetched, why in after.broken:
            self.catalogs.give_back(fetched.size)
            self.fetcher.not_applied(fetched.wanted, why)
        for fetched, kept in after.applied:
            self.catalogs.give_back(fetched.size)
            page = fetched.page
            if kept is None:
                self.fetcher.not_recorded(fetched.wanted, page.end)
                continue
            if not fetched.last:
                continue  # one line for the whole fetch, at its last page
            log.info(
                "catalog of %s:%d %s v%d: %d entries in %d page%s, in %.2f s",
                fetched.address,
                fetched.port,
                "whole at" if page.reset else f"changes v{fetched.first_start}..",
                page.end,
                fetched.entries,
                fetched.number,
                "" if fetched.number == 1 else "s",
                time.monotonic() - fetched.started,
            )
        for name in after.gone:
            log.info("peer %s silent for %.0f s: forgotten", name, self.ctx.settings.peer_ttl)
        if after.live is not None:
            self.fetcher.keep_only(after.live)
        # Last, once the fetcher has forgotten what went with peers gone: a peer back
        # under its old node id in this very transaction is then fetched again.
        for wanted in after.wanted:
            self.fetcher.want(wanted)

    # ------------------------------------------------------------ orphans

    def _sweep_due(self) -> bool:
        return self.sweep_after is not None or (
            self.orphans_dirty and (self.sweep_soon or time.monotonic() >= self.next_sweep)
        )

    def _sweep(self) -> float:
        """One slice of the orphan sweep, in its own transaction; returns its seconds."""
        started = time.monotonic()
        if self.sweep_after is None:
            self.sweep_after, self.orphans_dirty, self.sweep_soon = 0, False, False
        try:
            with self.ctx.database.write() as s:
                _, last = dbcatalogs.delete_orphan_files_after(s, self.sweep_after, ORPHAN_SLICE)
        except Exception:
            log.exception("sweeping files nothing refers to failed; retried later")
            last = None
            self.orphans_dirty = True
        self.sweep_after = last
        if last is None:
            self.next_sweep = time.monotonic() + ORPHAN_EVERY
        return time.monotonic() - started

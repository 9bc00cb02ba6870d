"""The listener's catalog fetches: a few threads, each peer's catalog once per announced version.

A fetch asks the peer for the changes of its catalog since the version this node holds
(`protocol.ChangesRequest`; the whole catalog the first time, or when the peer's log was
replaced), and hands each page to the listener's one writer (`listener.writer`) as it
arrives; nothing here writes to the database. A page waits for the writer when it is
behind, so memory holds a few pages whatever the size of the peer's share. A peer of
protocol 2.0 announces no catalog log: its whole catalog is fetched as one page.
Manifests are not fetched here: the downloader asks for one when a download needs it.
Which versions were fetched (or are being fetched), and up to where pages were handed
over, is kept in memory per node id, so a peer announcing the same version again, or
many times during a boot storm, costs nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.services import protocol
from p2pshare.services.net.client import PeerClient
from p2pshare.services.runtime import RoleContext

log = logging.getLogger("p2p.listener")

# Fetches at once: at most FETCH_THREADS, of which at most BUSY_FETCHES younger than
# SLOW_FETCH. A fetch is a few round trips to the peer and some decoding under the GIL;
# on loopback two at a time keep up with the writer, and every thread more that runs
# at once costs CPU in handing the GIL round without recording a storm any sooner. A peer
# that answers slowly holds one thread for at most FETCH_DEADLINE, but counts as busy
# only for SLOW_FETCH, so slow peers never hold up the others.
FETCH_THREADS = 8
BUSY_FETCHES = 2
SLOW_FETCH = 0.5
FETCH_DEADLINE = 30.0  # a whole catalog of protocol 2.0, or one page
RETRY_SECONDS = 5.0
IDLE_WAIT = 0.5  # a fetch thread looks at the stop flag this often


@dataclass(frozen=True)
class Wanted:
    """A peer's catalog at (at least) an announced version."""

    peer_id: int
    node_id: str
    version: int
    # Where and how to reach it, as announced.
    address: str
    port: int
    fingerprint: str | None
    tls: bool
    epoch: str | None = None  # of the peer's catalog log; None: protocol 2.0, whole catalogs


@dataclass(frozen=True)
class FetchedPage:
    """A page of a peer's catalog as fetched and decoded, ready for the writer to apply."""

    wanted: Wanted
    page: dbcatalogs.Page
    address: str
    port: int
    started: float  # monotonic, when the fetch began
    number: int  # pages of this fetch so far, this one included
    entries: int  # entries (and entries gone) of this fetch so far
    first_start: int  # the version the fetch went on from (0: whole)
    last: bool  # the fetch's last page

    @property
    def size(self) -> int:
        """Entries in the page (and entries gone): what it weighs while it waits."""
        return len(self.page.offered) + len(self.page.gone)


class CatalogFetcher:
    """FETCH_THREADS threads fetching the catalogs wanted, each node's at most once per version."""

    def __init__(self, ctx: RoleContext, deliver: Callable[[FetchedPage], None]) -> None:
        self.ctx = ctx
        self.deliver = deliver  # may block while the writer is behind
        self.lock = threading.Condition()
        self.queue: deque[str] = deque()  # node ids, in the order first wanted
        self.queued: dict[str, Wanted] = {}
        self.inflight: dict[str, int] = {}  # node id -> version being fetched
        self.began: dict[str, float] = {}  # node id -> monotonic start of its fetch
        self.fetched: dict[str, int] = {}  # node id -> version fetched (applied or on its way)
        self.failed: dict[str, tuple[float, str, Wanted]] = {}  # retry at, error logged
        # node id -> (epoch, version) of the last page handed to the writer: the next fetch
        # goes on from there, not from what the database holds while pages still queue.
        self.handed: dict[str, tuple[str | None, int]] = {}
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(FETCH_THREADS):
            thread = threading.Thread(target=self._loop, name=f"catalog-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def want(self, wanted: Wanted) -> None:
        """Fetch this catalog unless this version or a newer one is fetched, under way or queued."""
        node = wanted.node_id
        with self.lock:
            if max(self.fetched.get(node, -1), self.inflight.get(node, -1)) >= wanted.version:
                return
            if node in self.queued:
                self.queued[node] = wanted  # the newest announcement says where it is now
                return
            failed = self.failed.get(node)
            if failed is not None:  # retried when due (retry_due), at the newest version
                self.failed[node] = (failed[0], failed[1], wanted)
                return
            self.queued[node] = wanted
            self.queue.append(node)
            self.lock.notify()

    def retry_due(self, now: float) -> None:
        with self.lock:
            due = [w for at, _, w in self.failed.values() if at <= now]
            for wanted in due:
                self.failed.pop(wanted.node_id, None)
        for wanted in due:
            self.want(wanted)

    def not_applied(self, wanted: Wanted, error: str) -> None:
        """The writer could not apply a fetched page: fetch again after RETRY_SECONDS, from
        what the database holds."""
        with self.lock:
            self.fetched.pop(wanted.node_id, None)
            self.handed.pop(wanted.node_id, None)
        self._failed(wanted, error)

    def not_recorded(self, wanted: Wanted, version: int) -> None:
        """A fetched catalog found its peer gone: should the node come back under the same
        id, its catalog is fetched again (its holdings went with it)."""
        with self.lock:
            if self.fetched.get(wanted.node_id) == max(version, wanted.version):
                del self.fetched[wanted.node_id]
            self.handed.pop(wanted.node_id, None)

    def keep_only(self, live: set[str]) -> None:
        """Forget what was fetched from nodes no longer known (expired or replaced)."""
        with self.lock:
            for table in (self.fetched, self.failed, self.handed):
                for node in [n for n in table if n not in live]:
                    del table[node]

    def knows(self, node_id: str) -> bool:
        """This node's catalog was fetched, is being fetched, is queued or failed."""
        with self.lock:
            tables = (self.fetched, self.inflight, self.queued, self.failed)
            return any(node_id in table for table in tables)

    def pending(self) -> int:
        with self.lock:
            return len(self.queue) + len(self.inflight)

    # ------------------------------------------------------------ threads

    def _loop(self) -> None:
        self._fetch_while_running()

    def _fetch_while_running(self) -> None:
        while not self.ctx.stop.is_set():
            with self.lock:
                wait = self._turn_in(time.monotonic())
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                node = self.queue.popleft()
                wanted = self.queued.pop(node)
                self.inflight[node] = wanted.version
                self.began[node] = time.monotonic()
            try:
                got = self._fetch(wanted)
            except (OSError, protocol.ProtocolError) as exc:
                self._done(wanted, None)
                self._failed(wanted, f"{type(exc).__name__}: {exc}")
                continue
            except Exception:
                log.exception("catalog fetch from peer %d failed", wanted.peer_id)
                self._done(wanted, None)
                self._failed(wanted, "internal error")
                continue
            self._done(wanted, got)

    def _turn_in(self, now: float) -> float:
        """0 if this thread may start the next fetch now, else how long to wait before
        looking again (lock held): nothing queued, or BUSY_FETCHES under way that are
        not yet slow."""
        if not self.queue:
            return IDLE_WAIT
        young = [at for at in self.began.values() if now - at < SLOW_FETCH]
        if len(young) < BUSY_FETCHES:
            return 0.0
        return min(IDLE_WAIT, min(young) + SLOW_FETCH - now)

    def _done(self, wanted: Wanted, got: int | None) -> None:
        with self.lock:
            self.inflight.pop(wanted.node_id, None)
            self.began.pop(wanted.node_id, None)
            self.lock.notify()  # a turn is free
            if got is not None:
                # Never older than announced: a catalog older than its announcement (a
                # peer's clock of versions gone wrong) is not fetched again for it.
                self.fetched[wanted.node_id] = max(got, wanted.version)
                previous = self.failed.pop(wanted.node_id, None)
                if previous is not None:
                    log.info("catalog of peer %d fetched again", wanted.peer_id)

    def _failed(self, wanted: Wanted, error: str) -> None:
        with self.lock:
            previous = self.failed.get(wanted.node_id)
            self.failed[wanted.node_id] = (time.time() + RETRY_SECONDS, error, wanted)
        if previous is None or previous[1] != error:
            log.warning("cannot fetch the catalog of peer %d: %s", wanted.peer_id, error)

    def _fetch(self, wanted: Wanted) -> int:
        """Hand the peer's catalog changes to the writer page by page; returns the
        version they reach. Whether the peer is still known is the writer's to check."""
        address, port = wanted.address, wanted.port
        link = self.ctx.tls.link(wanted.tls, wanted.fingerprint)  # raises CannotTalk
        started = time.monotonic()
        number = entries = last = 0
        with PeerClient(address, port, key=self.ctx.settings.network_key, link=link) as client:
            first = -1
            for page, more in self._pages(client, wanted):
                number += 1
                entries += len(page.offered) + len(page.gone)
                first = page.start if first < 0 else first
                with self.lock:
                    self.handed[wanted.node_id] = (page.epoch, page.end)
                self.deliver(
                    FetchedPage(
                        wanted, page, address, port, started, number, entries, first, not more
                    )
                )
                last = page.end
        return last

    def _pages(self, client: PeerClient, wanted: Wanted) -> Iterator[tuple[dbcatalogs.Page, bool]]:
        """The pages, each with whether another follows."""
        if wanted.epoch is None:  # protocol 2.0: the whole catalog, as one page
            client.deadline = time.monotonic() + FETCH_DEADLINE
            version, entries = client.catalog()
            yield dbcatalogs.Page(None, 0, version, True, _offered(entries), []), False
            return
        epoch, since = self._held(wanted)
        for page in client.changes(epoch, since, page_seconds=FETCH_DEADLINE):
            offered = _offered(page.entries)
            yield (
                dbcatalogs.Page(page.epoch, page.start, page.end, page.reset, offered, page.gone),
                page.more,
            )

    def _held(self, wanted: Wanted) -> tuple[str | None, int]:
        """(epoch, version) of the peer's catalog that this node holds or is applying."""
        with self.lock:
            handed = self.handed.get(wanted.node_id)
        if handed is not None:
            return handed
        with self.ctx.database.read() as conn:
            return dbcatalogs.held_of(conn, wanted.peer_id, wanted.node_id)


def _offered(entries: list[protocol.CatalogEntry]) -> list[dbcatalogs.Offered]:
    count, chunk_count = protocol.bitfield_count, protocol.chunk_count
    return [
        dbcatalogs.Offered(
            name, sha, cs, root, size, have, chunk_count(size, cs) if have is None else count(have)
        )
        for name, (sha, cs, root), size, have in entries
    ]

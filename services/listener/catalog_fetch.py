"""The listener's catalog fetches: a few threads, each peer's catalog once per announced version.

A fetch reads the peer's catalog over TCP, decodes it, asks for the manifests of the
contents this database lacks, and hands the result to the listener's one writer
(`listener.writer`); nothing here writes to the database. Which versions were
fetched (or are being fetched) is kept in memory per node id, so a peer announcing the
same version again, or many times during a boot storm, costs nothing more.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import quick
from p2pshare.db.values import ContentKey
from p2pshare.services import protocol
from p2pshare.services.net.client import PeerClient
from p2pshare.services.runtime import RoleContext

log = logging.getLogger("p2p.listener")

# Fetches at once: at most FETCH_THREADS, of which at most BUSY_FETCHES younger than
# SLOW_FETCH. A fetch is a few round trips to the peer and some decoding under the GIL;
# on loopback two at a time keep up with the writer, and every thread more that runs
# at once costs CPU in handing the GIL round (a 1,000-peer storm: 1.6 CPU-s of fetching
# with eight busy threads, 1.2 with four, 0.8 with two, all recorded as fast). A peer
# that answers slowly holds one thread for at most FETCH_DEADLINE, but counts as busy
# only for SLOW_FETCH, so slow peers never hold up the others.
FETCH_THREADS = 8
BUSY_FETCHES = 2
SLOW_FETCH = 0.5
FETCH_DEADLINE = 30.0
RETRY_SECONDS = 5.0
# A liar may send thousands of bad manifests; a few lines say enough.
MAX_REFUSED_LOGGED = 5
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


@dataclass(frozen=True)
class FetchedCatalog:
    """A catalog as fetched and decoded, ready for the writer to apply."""

    wanted: Wanted
    version: int  # the catalog's own
    address: str
    port: int
    offered: list[dbcatalogs.Offered]
    manifests: dict[ContentKey, list[str]]
    started: float  # monotonic


class CatalogFetcher:
    """FETCH_THREADS threads fetching the catalogs wanted, each node's at most once per version."""

    def __init__(self, ctx: RoleContext, deliver: Callable[[FetchedCatalog], None]) -> None:
        self.ctx = ctx
        self.deliver = deliver  # may block while the writer is behind
        self.lock = threading.Condition()
        self.queue: deque[str] = deque()  # node ids, in the order first wanted
        self.queued: dict[str, Wanted] = {}
        self.inflight: dict[str, int] = {}  # node id -> version being fetched
        self.began: dict[str, float] = {}  # node id -> monotonic start of its fetch
        self.fetched: dict[str, int] = {}  # node id -> version fetched (applied or on its way)
        self.failed: dict[str, tuple[float, str, Wanted]] = {}  # retry at, error logged
        self.threads: list[threading.Thread] = []
        self.local = threading.local()  # each fetch thread's read connection

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
        """The writer could not apply a fetched catalog: fetch it again after RETRY_SECONDS."""
        with self.lock:
            if self.fetched.get(wanted.node_id, -1) >= wanted.version:
                del self.fetched[wanted.node_id]
        self._failed(wanted, error)

    def not_recorded(self, wanted: Wanted, version: int) -> None:
        """A fetched catalog found its peer gone: should the node come back under the same
        id, its catalog is fetched again (its holdings went with it)."""
        with self.lock:
            if self.fetched.get(wanted.node_id) == max(version, wanted.version):
                del self.fetched[wanted.node_id]

    def keep_only(self, live: set[str]) -> None:
        """Forget what was fetched from nodes no longer known (expired or replaced)."""
        with self.lock:
            for table in (self.fetched, self.failed):
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

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection to the node database, opened at first use."""
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = quick.connect(self.ctx.database.path)
        return conn

    def _loop(self) -> None:
        try:
            self._fetch_while_running()
        finally:
            conn = getattr(self.local, "conn", None)
            if conn is not None:
                conn.close()

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
            self.deliver(got)

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

    def _done(self, wanted: Wanted, got: FetchedCatalog | None) -> None:
        with self.lock:
            self.inflight.pop(wanted.node_id, None)
            self.began.pop(wanted.node_id, None)
            self.lock.notify()  # a turn is free
            if got is not None:
                # Never older than announced: a catalog older than its announcement (a
                # peer's clock of versions gone wrong) is not fetched again for it.
                self.fetched[wanted.node_id] = max(got.version, wanted.version)
                previous = self.failed.pop(wanted.node_id, None)
                if previous is not None:
                    log.info("catalog of peer %d fetched again", wanted.peer_id)

    def _failed(self, wanted: Wanted, error: str) -> None:
        with self.lock:
            previous = self.failed.get(wanted.node_id)
            self.failed[wanted.node_id] = (time.time() + RETRY_SECONDS, error, wanted)
        if previous is None or previous[1] != error:
            log.warning("cannot fetch the catalog of peer %d: %s", wanted.peer_id, error)

    def _fetch(self, wanted: Wanted) -> FetchedCatalog:
        """The peer's catalog, with the manifests of the contents new here.

        Whether the peer is still known is the writer's to check when it applies it."""
        address, port = wanted.address, wanted.port
        link = self.ctx.tls.link(wanted.tls, wanted.fingerprint)  # raises CannotTalk
        started = time.monotonic()
        with PeerClient(address, port, key=self.ctx.settings.network_key, link=link) as client:
            client.deadline = time.monotonic() + FETCH_DEADLINE
            version, entries = client.catalog()
            with quick.reading(self._reader()) as conn:
                known = dbcatalogs.known_contents_in(conn, (e.file for e in entries))
            need = {
                e.file: e.size for e in entries if e.file not in known or not known[e.file].complete
            }
            manifests = client.manifests(need) if need else protocol.Manifests({}, {})
        for key, why in list(manifests.refused.items())[:MAX_REFUSED_LOGGED]:
            log.warning(
                "refused the manifest of %s (root %s) from %s:%d: %s",
                key.sha256[:12],
                key.root[:12],
                address,
                port,
                why,
            )
        offered = [
            dbcatalogs.Offered(
                e.name,
                e.file.sha256,
                e.file.chunk_size,
                e.file.root,
                e.size,
                e.have,
                e.chunks if e.have is None else protocol.bitfield_count(e.have),
            )
            for e in entries
        ]
        good: dict[ContentKey, list[str]] = {
            (k.sha256, k.chunk_size, k.root): v for k, v in manifests.good.items()
        }
        return FetchedCatalog(wanted, version, address, port, offered, good, started)

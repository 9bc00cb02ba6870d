"""The manifests of downloads about to start, fetched from the peers that offer them.

A catalog brings each content's key and size, not its chunk hashes: most of what a
network offers is never downloaded here. So the downloader's loop leaves a download
whose content lacks them to this thread, which derives a one-chunk file's manifest
from its key, asks the peers offering the others (a few hundred files a request),
keeps only manifests that hash to the root they were offered under, records them and
wakes the loop. A content no peer answers for is tried again after RETRY_SECONDS.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from p2pshare.db import manifests as dbmanifests
from p2pshare.db import quick
from p2pshare.db.engine import Database, driver_connection
from p2pshare.services import protocol
from p2pshare.services.net.client import PeerClient
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.protocol import FileKey
from p2pshare.services.runtime import RoleContext
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.downloader")

RETRY_SECONDS = 5.0
DEADLINE_SECONDS = 30.0  # for one peer's answers
PEERS_TRIED = 4  # per content, per round


class ManifestFetcher:
    """Fetches manifests for the contents `want` names; `wake` is called when some arrived."""

    def __init__(self, ctx: RoleContext, wake: Callable[[], None]) -> None:
        self.ctx = ctx
        self.wake = wake
        self.lock = threading.Condition()
        self.wanted: set[int] = set()  # file ids
        self.not_before: dict[int, float] = {}  # file id -> monotonic time of its next try
        self.conn: sqlite3.Connection | None = None  # the thread's own, for reading
        self.thread = threading.Thread(target=self._loop, name="manifests", daemon=True)
        self.thread.start()

    def want(self, file_ids: set[int]) -> None:
        with self.lock:
            new = file_ids - self.wanted
            if new:
                self.wanted |= new
                self.lock.notify()

    def _loop(self) -> None:
        while not self.ctx.stop.is_set():
            with self.lock:
                now = time.monotonic()
                due = {f for f in self.wanted if self.not_before.get(f, 0.0) <= now}
                if not due:
                    self.lock.wait(0.5)
                    continue
            try:
                got = self._round(due)
            except Exception:  # a bug or the database: log it, try again later
                log.exception("fetching manifests failed")
                got = set()
            with self.lock:
                self.wanted -= got
                for fid in got:
                    self.not_before.pop(fid, None)
                later = time.monotonic() + RETRY_SECONDS
                for fid in due - got:
                    self.not_before[fid] = later
            if got:
                self.wake()

    def _round(self, due: set[int]) -> set[int]:
        """Try once for every content due; returns those whose manifest is here now."""
        if self.conn is None:
            self.conn = quick.connect(self.ctx.database.path)
        return fetch_manifests(
            self.conn, self.ctx.database, self.ctx.settings, self.ctx.tls, due, self.ctx.stop
        )


def fetch_manifests(
    conn: sqlite3.Connection,
    database: Database,
    settings: Settings,
    tls: NodeTls,
    file_ids: set[int],
    stop: threading.Event,
) -> set[int]:
    """Fetch (or derive) and record the manifests these contents lack, from the peers that
    offer them; returns the contents whose manifest is here now. `conn` reads."""
    with quick.reading(conn):
        missing = dbmanifests.unhashed(conn, sorted(file_ids))
        holders = dbmanifests.holders(conn, [c.file_id for c in missing])
    done = file_ids - {c.file_id for c in missing}  # hashed meanwhile (or empty)
    found: dict[dbmanifests.Unhashed, list[str]] = {}
    by_peer: dict[dbmanifests.Holder, list[dbmanifests.Unhashed]] = {}
    for content in missing:
        if content.chunks == 1:
            entries = dbmanifests.one_chunk_entries(content)
            if entries is not None:
                found[content] = entries
            continue
        for holder in holders[content.file_id][:PEERS_TRIED]:
            by_peer.setdefault(holder, []).append(content)
    for holder, contents in by_peer.items():
        if stop.is_set():
            break
        todo = [c for c in contents if c not in found]
        if todo:
            found.update(_ask(settings, tls, holder, todo))
    if found:
        with database.write() as s:
            dbmanifests.record_manifests(driver_connection(s), found)
    return done | {c.file_id for c in found}


def _ask(
    settings: Settings,
    tls: NodeTls,
    holder: dbmanifests.Holder,
    contents: list[dbmanifests.Unhashed],
) -> dict[dbmanifests.Unhashed, list[str]]:
    sizes = {FileKey(*c.key): c.size for c in contents}
    try:
        link = tls.link(holder.tls, holder.fingerprint)
        with PeerClient(
            holder.address, holder.tcp_port, key=settings.network_key, link=link
        ) as client:
            client.deadline = time.monotonic() + DEADLINE_SECONDS
            got = client.manifests(sizes)
    except (OSError, protocol.ProtocolError) as exc:
        log.warning("cannot fetch manifests from %s:%d: %s", holder.address, holder.tcp_port, exc)
        return {}
    for key, why in list(got.refused.items())[:5]:
        log.warning(
            "refused the manifest of %s from %s:%d: %s",
            key.sha256[:12],
            holder.address,
            holder.tcp_port,
            why,
        )
    return {c: got.good[FileKey(*c.key)] for c in contents if FileKey(*c.key) in got.good}

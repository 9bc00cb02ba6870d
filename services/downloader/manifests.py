"""The manifests of downloads about to start, fetched from the peers that offer them.

A catalog brings each content's key and size, not its chunk hashes: most of what a
network offers is never downloaded here. So the downloader's loop leaves a download
whose content lacks them to this thread, which derives a one-chunk file's manifest
from its key, asks the peers offering the others (a few hundred files a request),
keeps only manifests that hash to the root they were offered under, records them and
wakes the loop. What one peer's manifests may make this node store is its budget,
P2P_PEER_MANIFEST_ROWS (db/budgets.py): a manifest's size is known from the catalog
before it is asked for, so one that would pass it is never fetched, and the peer is
recorded over budget; one peer is asked at most MANIFEST_FETCHES_PER_PEER requests at
once, each of at most MANIFEST_ENTRIES_PER_REQUEST entries. A content no peer answers
for is tried again after RETRY_SECONDS; its queued downloads say why meanwhile
(`cannot talk to bob (...): connection refused`), and fail with that reason after
P2P_WAIT_TIMEOUT, as a download waiting for a chunk does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice

from p2pshare.db import budgets as dbbudgets
from p2pshare.db import jobs as dbjobs
from p2pshare.db import manifests as dbmanifests
from p2pshare.db import offer_switch as dbswitch
from p2pshare.db.engine import Database
from p2pshare.db.status import Status
from p2pshare.services import protocol
from p2pshare.services.downloader.worker import talk_error
from p2pshare.services.net.client import PeerClient
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.protocol import FileKey
from p2pshare.services.runtime import RoleContext
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.downloader")

RETRY_SECONDS = 5.0
DEADLINE_SECONDS = 30.0  # for one peer's answers
PEERS_TRIED = 4  # per content, per round
ASK_AT_ONCE = 8  # peers asked for manifests at once
# Chunk rows per write transaction: a manifest of P2P_PEER_MANIFEST_ROWS is written in a
# few dozen short transactions, so no other role waits long for the write lock.
STORE_ROWS = 8192
# Manifest entries asked in one round, of every peer together (a larger manifest alone):
# what a round holds in memory until it is recorded, however many peers (or node ids of
# one attacker, each with a budget of its own) offer what is wanted. The rest wait for
# the next round.
ROUND_ENTRIES = 1 << 18
WAITING_REASON = "waiting for its manifest: no peer offering it has sent one that proves itself"


class ManifestFetcher:
    """Fetches manifests for the contents `want` names; `wake` is called when some arrived."""

    def __init__(self, ctx: RoleContext, wake: Callable[[], None]) -> None:
        self.ctx = ctx
        self.wake = wake
        self.lock = threading.Condition()
        self.wanted: set[int] = set()  # file ids
        self.not_before: dict[int, float] = {}  # file id -> monotonic time of its next try
        self.failing_since: dict[int, float] = {}  # file id -> when no peer first answered
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
            why: dict[int, str] = {}
            moved = False
            try:
                got = self._round(due, why)
                given_up = self._say_why(got, why)
                moved = self._move_stuck(due - got - given_up)
            except Exception:  # a bug or the database: log it, try again later
                log.exception("fetching manifests failed")
                got, given_up = set(), set()
            with self.lock:
                self.wanted -= got | given_up
                for fid in got | given_up:
                    self.not_before.pop(fid, None)
                later = time.monotonic() + RETRY_SECONDS
                for fid in due - got - given_up:
                    self.not_before[fid] = later
            if got or moved:
                self.wake()

    def _move_stuck(self, missed: set[int]) -> bool:
        """Move queued downloads of contents whose manifest did not come to another offer
        of the same file (or the version now offered under its name), as a running job
        does when its offer fails it: their offer's peers lied about the manifest (marked
        bad) or went. Returns whether any moved (its new offer needs the loop)."""
        if not missed:
            return False
        database = self.ctx.database
        with database.read() as s:
            stuck = dbmanifests.queued_for(s, sorted(missed))
        moved = False
        for download_id in stuck:
            with database.read() as s:
                lacking = dbswitch.offers_to_hash(s, download_id)
            if lacking:
                self._round(lacking, {})
            with database.write() as s:
                change = dbswitch.switch_offer(s, download_id)
                if change is not None and change.ended:  # NAME@SHA: that version or nothing
                    dbjobs.finish_download(
                        s, download_id, status=Status.FAILED, reason=change.reason, now=time.time()
                    )
            if change is not None:
                log.warning("download %d: %s", download_id, change.reason)
                moved = True
        return moved

    def _say_why(self, got: set[int], why: dict[int, str]) -> set[int]:
        """Record why the contents still lacking a manifest lack it on their queued
        downloads, and fail those waiting longer than P2P_WAIT_TIMEOUT; returns the
        contents given up."""
        now = time.time()
        for fid in got | (set(self.failing_since) - set(why)):
            self.failing_since.pop(fid, None)
        if not why:
            return set()
        for fid in why:
            self.failing_since.setdefault(fid, now)
        timeout = self.ctx.settings.wait_timeout
        over = {fid for fid in why if now - self.failing_since[fid] > timeout}
        with self.ctx.database.write() as s:
            dbmanifests.note_unreachable(s, {f: w for f, w in why.items() if f not in over})
            for fid in sorted(over):
                reason = f"{why[fid]} for {timeout:.0f} s"
                for did in dbmanifests.queued_for(s, [fid]):
                    dbjobs.finish_download(s, did, status=Status.FAILED, reason=reason, now=now)
        for fid in over:
            self.failing_since.pop(fid, None)
        return over

    def _round(self, due: set[int], why: dict[int, str]) -> set[int]:
        """Try once for every content due; returns those whose manifest is here now."""
        return fetch_manifests(
            self.ctx.database, self.ctx.settings, self.ctx.tls, due, self.ctx.stop, why
        )


def fetch_manifests_now(
    database: Database,
    settings: Settings,
    tls: NodeTls,
    file_ids: set[int],
    stop: threading.Event,
) -> set[int]:
    """fetch_manifests for a caller outside the fetcher's thread (a job moving to another
    offer, the torrent role's LAN copy)."""
    return fetch_manifests(database, settings, tls, file_ids, stop)


def fetch_manifests(
    database: Database,
    settings: Settings,
    tls: NodeTls,
    file_ids: set[int],
    stop: threading.Event,
    why: dict[int, str] | None = None,
) -> set[int]:
    """Fetch (or derive) and record the manifests these contents lack, from the peers that
    offer them, within each peer's P2P_PEER_MANIFEST_ROWS; returns the contents whose
    manifest is here now. `why` gets, for a content no peer could be asked,
    the peers that could not and why."""
    with database.read() as conn:
        missing = dbmanifests.unhashed(conn, sorted(file_ids))
        holders = dbmanifests.holders(conn, [c.file_id for c in missing])
        used = dbbudgets.manifest_rows_used(
            conn, {h.peer_id for found in holders.values() for h in found}
        )
    done = file_ids - {c.file_id for c in missing}  # hashed meanwhile (or empty)
    plan = _plan(missing, holders, used, settings.peer_manifest_rows)
    found = dict(plan.derived)
    source: dict[dbmanifests.Unhashed, int] = {}  # content -> peer id its manifest came from
    failed: dict[int, list[str]] = {}
    liars: list[tuple[int, str, int]] = []  # (file id, address, port) of manifests refused
    # Every peer is asked at once: a peer that hangs (stopped, or behind a dead link) must
    # not hold up the answer another gives at once. The round ends when every content has
    # a manifest or every peer answered; one still hanging ends on its own timeout.
    pool = ThreadPoolExecutor(max_workers=ASK_AT_ONCE, thread_name_prefix="manifest")
    asked = {
        pool.submit(_ask, settings, tls, holder, contents): (holder, contents)
        for holder, contents in plan.by_peer.items()
    }
    wanted = {c for contents in plan.by_peer.values() for c in contents}
    try:
        for future in as_completed(asked):
            holder, contents = asked[future]
            answered, error, refused = future.result()
            for content, entries in answered.items():
                if content not in found:
                    found[content] = entries
                    source[content] = holder.peer_id
            liars.extend((c.file_id, holder.address, holder.tcp_port) for c in refused)
            if error is not None:
                for c in contents:
                    failed.setdefault(c.file_id, []).append(f"{_name(holder)}: {error}")
            if stop.is_set() or wanted <= found.keys():
                break
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    got = {c.file_id for c in found}
    if why is not None:
        for fid, named in failed.items():
            if fid not in got:
                more = f"; and {len(named) - 3} more" if len(named) > 3 else ""
                why[fid] = f"cannot talk to {'; '.join(sorted(named)[:3])}{more}"
        for fid, named in plan.over_budget.items():
            if fid not in got and fid not in why:
                why[fid] = (
                    f"its manifest would pass the budget of {_name_peers(named)} "
                    f"({settings.peer_manifest_rows} chunk rows a peer's manifests may add "
                    "before downloaded bytes prove them, P2P_PEER_MANIFEST_ROWS)"
                )
    _record(database, found, source)
    missed = [c.file_id for c in missing if c not in found]
    if missed or liars or plan.over_peers:
        now = time.time()
        with database.write() as s:
            # A peer whose manifest does not prove the root it offered lies about that
            # file: marked bad for it, as a peer sending a bad chunk is, so the download
            # may move to another offer rather than wait on it.
            dbmanifests.mark_liars(s, liars, now=now)
            if missed:
                dbmanifests.note_waiting(s, missed, WAITING_REASON)
            newly = [
                holder
                for peer_id, holder in sorted(plan.over_peers.items())
                if dbbudgets.record_over_budget(
                    s,
                    peer_id,
                    dbbudgets.MANIFEST_BUDGET,
                    settings.peer_manifest_rows,
                    now=now,
                )
            ]
        for holder in newly:
            log.warning(
                "%s reached its manifest budget (P2P_PEER_MANIFEST_ROWS=%d): manifests that "
                "would pass it are not asked for",
                _name(holder),
                settings.peer_manifest_rows,
            )
    return done | got


@dataclass
class _Plan:
    """Which peer is asked for which manifests this round, within their budgets."""

    derived: dict[dbmanifests.Unhashed, Sequence[str]] = field(default_factory=dict)
    by_peer: dict[dbmanifests.Holder, list[dbmanifests.Unhashed]] = field(default_factory=dict)
    over_peers: dict[int, dbmanifests.Holder] = field(default_factory=dict)  # by peer id
    over_budget: dict[int, list[str]] = field(default_factory=dict)  # file id -> peers


def _plan(
    missing: list[dbmanifests.Unhashed],
    holders: dict[int, list[dbmanifests.Holder]],
    used: dict[int, int],
    limit: int,
) -> _Plan:
    """Derive one-chunk manifests from their keys; ask up to PEERS_TRIED holders for each
    other content, each only while the manifests asked of it this round and those it gave
    before stay within `limit` chunk rows (a peer over it is not asked: a manifest's size
    is known from the catalog before it is asked for), and while the round asks at most
    ROUND_ENTRIES entries in all."""
    plan = _Plan()
    used = dict(used)
    planned = 0  # entries asked this round
    for content in missing:
        if content.chunks == 1:
            entries = dbmanifests.one_chunk_entries(content)
            if entries is not None:
                plan.derived[content] = entries
            continue
        asked = 0
        for holder in holders[content.file_id]:
            if asked == PEERS_TRIED:
                break
            if used.get(holder.peer_id, 0) + content.chunks > limit:
                plan.over_peers[holder.peer_id] = holder
                plan.over_budget.setdefault(content.file_id, []).append(_name(holder))
                continue
            if planned and planned + content.chunks > ROUND_ENTRIES:
                break  # the next round asks
            planned += content.chunks
            used[holder.peer_id] = used.get(holder.peer_id, 0) + content.chunks
            plan.by_peer.setdefault(holder, []).append(content)
            asked += 1
    return plan


def _record(
    database: Database,
    found: dict[dbmanifests.Unhashed, Sequence[str]],
    source: dict[dbmanifests.Unhashed, int],
) -> None:
    """Record the manifests found, STORE_ROWS chunk rows per write transaction (a large
    manifest never holds the write lock long enough for another role to wait it out),
    each charged to the peer it came from."""
    rows = dbmanifests.manifest_rows(found)
    now = time.time()
    while batch := list(islice(rows, STORE_ROWS)):
        sources = [
            (c.file_id, source[c], len(found[c])) for c, i, _ in batch if i == 0 and c in source
        ]
        with database.write() as s:
            dbmanifests.record_manifest_rows(s, batch)
            dbbudgets.record_manifest_sources(s, sources, now=now)


def _name(holder: dbmanifests.Holder) -> str:
    return f"{holder.username or 'a peer'} ({holder.address}:{holder.tcp_port})"


def _name_peers(named: list[str]) -> str:
    more = f" and {len(named) - 3} more" if len(named) > 3 else ""
    return ", ".join(sorted(named)[:3]) + more


class _PeerSlots:
    """MANIFEST_FETCHES_PER_PEER requests under way to each peer, for the whole process
    (the downloader's manifest thread and its jobs moving to other offers ask alike)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}

    @contextmanager
    def hold(self, address: str, port: int) -> Iterator[None]:
        """Raises TimeoutError when the peer's slots stay taken for DEADLINE_SECONDS."""
        with self.lock:
            slot = self.slots.setdefault(
                (address, port), threading.BoundedSemaphore(protocol.MANIFEST_FETCHES_PER_PEER)
            )
        if not slot.acquire(timeout=DEADLINE_SECONDS):
            raise TimeoutError("another manifest request to this peer is still under way")
        try:
            yield
        finally:
            slot.release()


_SLOTS = _PeerSlots()


def _requests(contents: list[dbmanifests.Unhashed]) -> Iterator[list[dbmanifests.Unhashed]]:
    """The contents in requests of at most MANIFEST_ENTRIES_PER_REQUEST entries (a larger
    manifest alone) and MAX_MANIFEST_FILES files."""
    group: list[dbmanifests.Unhashed] = []
    entries = 0
    for content in contents:
        full = len(group) == protocol.MAX_MANIFEST_FILES
        if group and (full or entries + content.chunks > protocol.MANIFEST_ENTRIES_PER_REQUEST):
            yield group
            group, entries = [], 0
        group.append(content)
        entries += content.chunks
    if group:
        yield group


def _ask(
    settings: Settings,
    tls: NodeTls,
    holder: dbmanifests.Holder,
    contents: list[dbmanifests.Unhashed],
) -> tuple[dict[dbmanifests.Unhashed, Sequence[str]], str | None, list[dbmanifests.Unhashed]]:
    """The manifests `holder` gave, why it could not be asked (None: it answered), and
    the contents whose manifest it sent but that did not prove itself."""
    good: dict[dbmanifests.Unhashed, Sequence[str]] = {}
    refused: list[dbmanifests.Unhashed] = []
    try:
        with _SLOTS.hold(holder.address, holder.tcp_port):
            link = tls.link(holder.tls, holder.fingerprint)
            with PeerClient(
                holder.address, holder.tcp_port, key=settings.network_key, link=link
            ) as client:
                client.deadline = time.monotonic() + DEADLINE_SECONDS
                for group in _requests(contents):
                    got = client.manifests({FileKey(*c.key): c.size for c in group})
                    _log_refused(holder, got.refused)
                    good.update(
                        (c, got.good[FileKey(*c.key)]) for c in group if FileKey(*c.key) in got.good
                    )
                    refused.extend(c for c in group if FileKey(*c.key) in got.refused)
    except (OSError, protocol.ProtocolError) as exc:
        log.warning("cannot fetch manifests from %s:%d: %s", holder.address, holder.tcp_port, exc)
        return good, talk_error(exc), refused
    return good, None, refused


def _log_refused(holder: dbmanifests.Holder, refused: dict[FileKey, str]) -> None:
    for key, why in list(refused.items())[:5]:
        log.warning(
            "refused the manifest of %s from %s:%d: %s",
            key.sha256[:12],
            holder.address,
            holder.tcp_port,
            why,
        )

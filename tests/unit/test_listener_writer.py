"""The listener's one writer and its catalog fetcher: batching, and one fetch per peer and version.

The writer runs on a real temp-file database; the fetch itself (TCP to the peer) is a
stub that counts what it was asked and can be held open, so announcements arrive while a
fetch is under way, as they do in a boot storm.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import peers as dbpeers
from p2pshare.db.engine import Database
from p2pshare.services import protocol
from p2pshare.services.listener import catalog_fetch
from p2pshare.services.listener import writer as listener_writer
from p2pshare.services.listener.catalog_fetch import FetchedPage, Wanted
from p2pshare.services.listener.writer import ListenerWriter
from p2pshare.services.net import identity
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.runtime import RoleContext
from p2pshare.services.settings import load_settings

CS = protocol.MIN_CHUNK
IP = "127.0.0.1"
WAIT = 30.0  # a bound on waits for what must happen; a busy machine only takes longer


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def file_of(label: str) -> tuple[dbcatalogs.Offered, tuple[str, int, str], list[str]]:
    """A one-chunk file offered as `label`: its catalog entry, content key and manifest."""
    data = hashlib.sha256(label.encode()).digest() * 10
    sha = hashlib.sha256(data).hexdigest()
    root = protocol.manifest_root([sha])
    return dbcatalogs.Offered(label, sha, CS, root, len(data), None, 1), (sha, CS, root), [sha]


class Lan:
    """Catalogs of simulated peers (node id -> version -> file names) and a fetch stub."""

    def __init__(self) -> None:
        self.catalogs: dict[str, dict[int, list[str]]] = {}
        self.fetches: Counter[tuple[str, int]] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.open = 0  # fetches under way now, and the most at once
        self.most_open = 0

    def fetch(self, wanted: Wanted, deliver: Callable[[FetchedPage], None]) -> int:
        """The whole catalog at the wanted version, handed over as one page (as a peer of
        protocol 2.0 sends it); returns the version."""
        with self.lock:
            self.fetches[(wanted.node_id, wanted.version)] += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            self.gate.wait(WAIT)
        finally:
            with self.lock:
                self.open -= 1
        names = self.catalogs[wanted.node_id][wanted.version]
        offered = [file_of(name)[0] for name in names]
        page = dbcatalogs.Page(None, 0, wanted.version, True, offered, [])
        started = time.monotonic()
        deliver(
            FetchedPage(
                wanted, page, wanted.address, wanted.port, started, 1, len(offered), 0, True
            )
        )
        return wanted.version


class Node:
    """A ListenerWriter on a temp database, its fetches answered by a Lan."""

    def __init__(self, home: Path, lan: Lan) -> None:
        settings = load_settings({"P2P_HOME": str(home), "P2P_BROADCAST": "127.255.255.255"})
        self.db_path = settings.db_path
        self.database = Database.open(settings.db_path)
        tls = NodeTls(identity.load_or_create(settings.identity_dir), settings.encrypt)
        self.ctx = RoleContext("listener", settings, self.database, threading.Event(), tls)
        self.refused: list[tuple[str, str]] = []
        self.writer = ListenerWriter(self.ctx, lambda ip, why: self.refused.append((ip, why)))
        fetcher = self.writer.fetcher
        fetcher._fetch = lambda wanted: lan.fetch(wanted, fetcher.deliver)  # type: ignore[method-assign]
        self.transactions = 0
        write = self.database.write

        def counted() -> AbstractContextManager[Session]:
            self.transactions += 1
            return write()

        self.database.write = counted  # type: ignore[method-assign]

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def holdings(self, username: str) -> list[str]:
        rows = self.sql(
            "SELECT h.name FROM holdings h JOIN peers p ON p.id = h.peer_id "
            "WHERE p.username = ? ORDER BY h.name",
            username,
        )
        return [name for (name,) in rows]

    def seq(self, username: str) -> int:
        rows = self.sql("SELECT announce_seq FROM peers WHERE username = ?", username)
        return int(rows[0][0]) if rows else -1

    def close(self) -> None:
        self.ctx.stop.set()
        self.writer.join()
        for thread in self.writer.fetcher.threads:
            thread.join(5)
        self.database.close()


@pytest.fixture
def lan() -> Lan:
    return Lan()


@pytest.fixture
def node(tmp_path: Path, lan: Lan) -> Iterator[Node]:
    n = Node(tmp_path, lan)
    yield n
    lan.gate.set()
    n.close()


def announce(
    node_id: str, seq: int, version: int, port: int = 5000
) -> tuple[protocol.Announce, str]:
    return protocol.Announce(node_id, f"u-{node_id[:6]}", port, version, seq, time.time()), IP


def test_repeated_announcements_during_and_after_a_fetch_fetch_once(node: Node, lan: Lan) -> None:
    a = "a" * 32
    lan.catalogs[a] = {1: ["one.txt", "two.txt"], 2: ["one.txt", "three.txt"]}
    lan.gate.clear()  # the first fetch stays open while the peer goes on announcing
    node.writer.start()
    node.writer.put_heard([announce(a, 1, 1)])
    wait_for("the fetch of v1 to begin", lambda: lan.fetches[(a, 1)] == 1)
    for seq in range(2, 12):  # one a batch, as a trickle arrives
        node.writer.put_heard([announce(a, seq, 1)])
    node.writer.put_heard([announce(a, seq, 1) for seq in range(12, 30)])  # and a burst
    wait_for("seq 29 to be recorded", lambda: node.seq("u-aaaaaa") == 29)
    lan.gate.set()
    wait_for("v1's holdings", lambda: node.holdings("u-aaaaaa") == ["one.txt", "two.txt"])
    node.writer.put_heard([announce(a, seq, 1) for seq in range(30, 40)])  # applied: still v1
    wait_for("seq 39 to be recorded", lambda: node.seq("u-aaaaaa") == 39)
    node.writer.put_heard([announce(a, 40, 2)])
    wait_for("v2's holdings", lambda: node.holdings("u-aaaaaa") == ["one.txt", "three.txt"])
    # Reordered: an older version with a newer sequence number, and an older datagram.
    node.writer.put_heard([announce(a, 41, 1), announce(a, 39, 1), announce(a, 42, 2)])
    wait_for("seq 42 to be recorded", lambda: node.seq("u-aaaaaa") == 42)
    assert node.writer.fetcher.pending() == 0
    assert lan.fetches == {(a, 1): 1, (a, 2): 1}
    assert node.holdings("u-aaaaaa") == ["one.txt", "three.txt"]
    assert [why for _, why in node.refused] == ["replayed announcement (seq 39) from node aaaaaaaa"]


def test_a_storm_of_shuffled_repeats_fetches_each_catalog_once(node: Node, lan: Lan) -> None:
    nodes = [f"{i:032x}" for i in range(200)]
    for i, n in enumerate(nodes):
        lan.catalogs[n] = {1: ["common.bin", f"p{i}/own.txt"]}
    # Each peer announces three times; the datagrams arrive shuffled across batches (each
    # peer's own in order, as their sequence numbers would otherwise be refused).
    rng = random.Random(22)
    queue = [list(range(1, 4)) for _ in nodes]
    order = [i for i, seqs in enumerate(queue) for _ in seqs]
    rng.shuffle(order)
    datagrams = [announce(nodes[i], queue[i].pop(0), 1, 5000 + i) for i in order]
    node.writer.start()
    for start in range(0, len(datagrams), 37):
        node.writer.put_heard(datagrams[start : start + 37])
    wait_for(
        "every peer's holdings",
        lambda: node.sql("SELECT count(*) FROM holdings") == [(2 * len(nodes),)],
    )
    wait_for("every announcement recorded", lambda: node.writer.announces == 0)
    assert set(lan.fetches) == {(n, 1) for n in nodes}
    assert max(lan.fetches.values()) == 1
    assert node.sql("SELECT count(*) FROM files") == [(1 + len(nodes),)]
    assert not node.refused


def test_announcements_queued_are_written_in_one_transaction(
    node: Node, lan: Lan, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However slow the machine, a transaction's budget is not what ends it here.
    monkeypatch.setattr(listener_writer, "TX_BUDGET", WAIT)
    lan.gate.clear()  # no catalog arrives to be applied meanwhile
    nodes = [f"{i:032x}" for i in range(1000)]
    for n in nodes:
        lan.catalogs[n] = {1: []}
    for i, n in enumerate(nodes):  # one job each, as datagrams trickling in one by one
        node.writer.put_heard([announce(n, 1, 1, 5000 + i)])
    node.writer.start()
    wait_for("1,000 peers", lambda: node.sql("SELECT count(*) FROM peers") == [(1000,)])
    assert node.transactions == 1


def test_announcements_queued_one_by_one_are_recorded_a_step_at_a_time(
    node: Node, lan: Lan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Datagrams trickling in join the job queued before them, so each step records
    ANNOUNCES_PER_STEP of them with one set of lookups, not one job each."""
    monkeypatch.setattr(listener_writer, "TX_BUDGET", WAIT)
    record = dbpeers.record_announces
    sizes: list[int] = []

    def counting(s: Session, heards: Any, *, now: float) -> Any:
        sizes.append(len(heards))
        return record(s, heards, now=now)

    monkeypatch.setattr(dbpeers, "record_announces", counting)
    lan.gate.clear()
    nodes = [f"{i:032x}" for i in range(1000)]
    for n in nodes:
        lan.catalogs[n] = {1: []}
    for i, n in enumerate(nodes):
        node.writer.put_heard([announce(n, 1, 1, 5000 + i)])
    node.writer.put_expire(time.time())  # a job of another kind ends the run of announcements
    node.writer.put_heard([announce(nodes[0], 2, 1, 5000)])
    node.writer.start()
    wait_for("1,000 peers", lambda: node.sql("SELECT count(*) FROM peers") == [(1000,)])
    last = "SELECT announce_seq FROM peers WHERE node_id = ?"
    wait_for("the last announcement", lambda: node.sql(last, nodes[0]) == [(2,)])
    step = listener_writer.ANNOUNCES_PER_STEP
    assert sizes == [step] * (1000 // step) + [1000 % step, 1]


def test_a_peer_gone_while_its_catalog_was_fetched_is_fetched_again_when_back(
    node: Node, lan: Lan
) -> None:
    a = "a" * 32
    lan.catalogs[a] = {1: ["one.txt"]}
    lan.gate.clear()
    node.writer.start()
    node.writer.put_heard([announce(a, 1, 1)])
    wait_for("the fetch to begin", lambda: lan.fetches[(a, 1)] == 1)
    node.writer.put_expire(time.time() + 10 * node.ctx.settings.peer_ttl)  # silent too long
    wait_for("the peer to be forgotten", lambda: node.seq("u-aaaaaa") == -1)
    lan.gate.set()  # the catalog arrives for a peer no longer known: nothing recorded
    # Once the fetch is done, the fetcher forgets the version only when the writer found
    # the peer gone.
    wait_for(
        "the catalog to be found without its peer",
        lambda: node.writer.fetcher.pending() == 0 and a not in node.writer.fetcher.fetched,
    )
    node.writer.put_heard([announce(a, 2, 1)])  # back after an outage, same node id
    wait_for("its holdings", lambda: node.holdings("u-aaaaaa") == ["one.txt"])
    assert lan.fetches == {(a, 1): 2}


def test_a_newcomer_is_written_without_waiting_for_more(
    node: Node, lan: Lan, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Announcements of known peers wait to be gathered; a newcomer's must not.
    monkeypatch.setattr(listener_writer, "GATHER_SECONDS", 10 * WAIT)
    a, b = "a" * 32, "b" * 32
    lan.catalogs[a] = {1: ["one.txt"]}
    lan.catalogs[b] = {1: ["two.txt"]}
    node.writer.start()
    node.writer.put_heard([announce(a, 1, 1)])
    wait_for("a's holdings", lambda: node.holdings("u-aaaaaa") == ["one.txt"])
    node.writer.put_heard([announce(a, 2, 1)])  # known now: may wait to be gathered
    node.writer.put_heard([announce(b, 1, 1, 5001)])  # a newcomer behind it
    wait_for("b's holdings", lambda: node.holdings("u-bbbbbb") == ["two.txt"])
    assert node.seq("u-aaaaaa") == 2


def test_at_most_busy_fetches_run_at_once_while_none_is_slow(
    node: Node, lan: Lan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetch threads beyond BUSY_FETCHES only cost CPU handing the GIL round, unless
    the fetches under way are slow (here none ever counts as slow)."""
    monkeypatch.setattr(catalog_fetch, "SLOW_FETCH", 10 * WAIT)
    busy = catalog_fetch.BUSY_FETCHES
    assert busy < catalog_fetch.FETCH_THREADS
    nodes = [f"{i:032x}" for i in range(20)]
    for n in nodes:
        lan.catalogs[n] = {1: [f"{n}.txt"]}
    lan.gate.clear()
    node.writer.start()
    node.writer.put_heard([announce(n, 1, 1, 5000 + i) for i, n in enumerate(nodes)])
    wait_for(f"{busy} fetches under way", lambda: lan.open == busy)
    lan.gate.set()
    wait_for("every catalog", lambda: node.sql("SELECT count(*) FROM holdings") == [(20,)])
    assert lan.most_open == busy
    assert sum(lan.fetches.values()) == 20


def test_slow_fetches_leave_their_turn_to_others_up_to_every_thread(
    node: Node, lan: Lan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_fetch, "SLOW_FETCH", 0.05)
    threads = catalog_fetch.FETCH_THREADS
    nodes = [f"{i:032x}" for i in range(threads + 4)]
    for n in nodes:
        lan.catalogs[n] = {1: [f"{n}.txt"]}
    lan.gate.clear()  # every fetch hangs: a LAN of slow peers
    node.writer.start()
    node.writer.put_heard([announce(n, 1, 1, 5000 + i) for i, n in enumerate(nodes)])
    wait_for("every fetch thread busy", lambda: lan.open == threads)
    lan.gate.set()
    wait_for("every catalog", lambda: node.sql("SELECT count(*) FROM holdings") == [(len(nodes),)])
    assert lan.most_open == threads


def test_only_holdings_removed_make_the_writer_sweep_for_orphans(node: Node, lan: Lan) -> None:
    a = "a" * 32
    lan.catalogs[a] = {1: ["one.txt", "two.txt"], 2: ["one.txt", "three.txt"]}
    node.writer.next_sweep = time.monotonic() + 3600  # a sweep due is left to wait
    node.writer.start()
    node.writer.put_heard([announce(a, 1, 1)])
    wait_for("v1's holdings", lambda: node.holdings("u-aaaaaa") == ["one.txt", "two.txt"])
    # A first catalog removed nothing: no content can have lost its last offer.
    assert not node.writer.orphans_dirty
    node.writer.put_heard([announce(a, 2, 2)])
    wait_for("v2's holdings", lambda: node.holdings("u-aaaaaa") == ["one.txt", "three.txt"])
    # v2 came whole, so v1's holdings went first: two.txt's content may be offered by none.
    assert node.writer.orphans_dirty

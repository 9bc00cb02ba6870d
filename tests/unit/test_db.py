"""The node database: schema, WAL, several processes at once, and the discovery queries."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Row, Table, insert, select, text
from sqlalchemy.exc import IntegrityError

from p2pshare.db import catalog_log
from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import downloads as dbdl
from p2pshare.db import index as dbindex
from p2pshare.db import jobs as dbjobs
from p2pshare.db import offer_switch as dbswitch
from p2pshare.db import peers as dbpeers
from p2pshare.db import reports as dbreports
from p2pshare.db.engine import SCHEMA_VERSION, ChangeWatch, Database, SchemaError
from p2pshare.db.node import (
    node_state,
    record_heartbeat,
    record_role_settings,
    role_settings,
    set_node_id,
)
from p2pshare.db.schema import bad_peers, chunks, downloads, peers, retired_nodes
from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries

CS = 16384
NOW = 1_700_000_000.0
NODE_A = "a" * 32
NODE_B = "b" * 32
OWN = "0" * 32


def row_of(conn: Connection, table: Table, row_id: int) -> Row[Any]:
    """One row of `table` by its id, as it stands in this transaction."""
    found = conn.execute(select(table).where(table.c.id == row_id)).first()
    assert found is not None
    return found


def sql(path: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """What `sqlite3 p2p.db` would show: an independent connection, no SQLAlchemy."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "p2p.db"


# ---------------------------------------------------------------- schema and engine


def test_open_creates_the_schema(db: Database, db_path: Path) -> None:
    assert sql(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in sql(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "node",
        "heartbeats",
        "files",
        "chunks",
        "local_files",
        "peers",
        "holdings",
        "downloads",
        "uploads",
    } <= tables


def test_database_is_wal_with_foreign_keys_and_busy_timeout(db: Database, db_path: Path) -> None:
    assert sql(db_path, "PRAGMA journal_mode") == [("wal",)]
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_change_watch_sees_other_connections_commits(db: Database, db_path: Path) -> None:
    watch = db.watch()
    try:
        assert watch.changed()  # the first look
        assert not watch.changed()
        with db.read() as s:  # a read commits nothing
            s.execute(text("SELECT count(*) FROM peers"))
        assert not watch.changed()
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("CREATE TABLE scratch (x)")  # any commit by another connection
        other.close()
        assert watch.changed()
        assert not watch.changed()
    finally:
        watch.close()


def test_change_watch_that_cannot_read_says_nothing_changed(tmp_path: Path) -> None:
    """A counter it cannot read must not make a poller query every few milliseconds."""
    path = tmp_path / "x.db"
    sqlite3.connect(path).close()
    watch = ChangeWatch(path)
    assert watch.changed()
    watch.close()  # every read now fails
    assert not watch.changed()


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.write() as s:
        s.execute(insert(chunks).values(file_id=12345, chunk_index=0, size=1, sha256="0" * 64))


def test_failed_write_rolls_back(db: Database, db_path: Path) -> None:
    with pytest.raises(RuntimeError), db.write() as s:
        record_heartbeat(s, "server", pid=1, started_at=NOW, now=NOW)
        raise RuntimeError("boom")
    assert sql(db_path, "SELECT count(*) FROM heartbeats") == [(0,)]


def test_reopening_keeps_data_and_version(db: Database, db_path: Path) -> None:
    with db.write() as s:
        record_heartbeat(s, "server", pid=1, started_at=NOW, now=NOW)
    again = Database.open(db_path)
    try:
        with again.read() as s:
            assert node_state(s).catalog_version == 0
        assert sql(db_path, "SELECT role FROM heartbeats") == [("server",)]
        assert sql(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        again.close()


def test_newer_schema_is_refused(db: Database, db_path: Path) -> None:
    db.close()
    sql(db_path, f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="newer"):
        Database.open(db_path)
    with pytest.raises(SchemaError):
        Database.open_existing(db_path)


def test_open_existing_refuses_a_missing_or_unversioned_database(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no node database"):
        Database.open_existing(tmp_path / "missing.db")
    sql(tmp_path / "bare.db", "CREATE TABLE t (x)")
    with pytest.raises(SchemaError, match="schema version 0"):
        Database.open_existing(tmp_path / "bare.db")


# ---------------------------------------------------------------- several processes

WORKER = """
import os, sys, time
from pathlib import Path
from p2pshare.db.engine import Database
from p2pshare.db.node import node_state, record_heartbeat

path, writes = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # the parent releases every worker at once
db = Database.open(path)
role = "w%d" % os.getpid()
for i in range(writes):
    with db.write() as s:
        record_heartbeat(s, role, pid=os.getpid(), started_at=0.0, now=time.time())
        record_heartbeat(s, "%s-%d" % (role, i), pid=os.getpid(), started_at=0.0, now=time.time())
    with db.read() as s:
        node_state(s).catalog_version
db.close()
"""


def run_together(path: Path, workers: int, writes: int) -> None:
    """Start `workers` processes, release them at the same instant, expect all to succeed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(writes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert "locked" not in err
        assert proc.returncode == 0, err


def test_four_processes_create_the_same_database_at_once(db_path: Path) -> None:
    run_together(db_path, workers=4, writes=0)
    assert sql(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert sql(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert sql(db_path, "SELECT count(*) FROM node") in ([(0,)], [(1,)])


def test_four_processes_writing_concurrently_never_see_locked(db_path: Path) -> None:
    Database.open(db_path).close()
    run_together(db_path, workers=4, writes=200)
    # Every write of every worker committed: one heartbeat row each, besides its own.
    assert sql(db_path, "SELECT count(*) FROM heartbeats") == [(804,)]


# ---------------------------------------------------------------- peers


def heard(
    node: str = NODE_A,
    seq: int = 1,
    *,
    address: str = "127.0.0.2",
    port: int = 5001,
    cv: int = 1,
    user: str = "alice",
    cert: str | None = None,
    proven: bool = False,
) -> dbpeers.Heard:
    """An announcement; with `cert` it names that certificate, and with `proven` its
    signature by that certificate's key checks out (a real node's own announcement)."""
    return dbpeers.Heard(node, user, address, port, cv, seq, cert, proof=lambda: proven)


# A certificate, as a restarted node keeps it across node ids.
CERT = "f" * 64


def peer_rows(path: Path) -> list[tuple[Any, ...]]:
    return sql(
        path,
        "SELECT node_id, username, address, tcp_port, announce_seq, last_seen "
        "FROM peers ORDER BY node_id",
    )


def test_first_announcement_creates_a_peer(db: Database, db_path: Path) -> None:
    with db.write() as s:
        outcome = dbpeers.record_announce(s, heard(), now=NOW)
    assert outcome.peer_id is not None
    assert outcome.new and outcome.needs_catalog and not outcome.ignored
    assert peer_rows(db_path) == [(NODE_A, "alice", "127.0.0.2", 5001, 1, NOW)]
    # The announcer answers a newcomer at once.
    assert sql(db_path, "SELECT announce_wanted_at FROM node") == [(NOW,)]


def test_replayed_or_older_announcement_is_refused(db: Database, db_path: Path) -> None:
    with db.write() as s:
        dbpeers.record_announce(s, heard(seq=5), now=NOW)
    for seq in (5, 4, 0):
        with db.write() as s:
            outcome = dbpeers.record_announce(s, heard(seq=seq, user="mallory"), now=NOW + 9)
        assert outcome.peer_id is None and not outcome.ignored and not outcome.new
    assert peer_rows(db_path) == [(NODE_A, "alice", "127.0.0.2", 5001, 5, NOW)]


def test_newer_announcement_refreshes_the_peer(db: Database, db_path: Path) -> None:
    with db.write() as s:
        first = dbpeers.record_announce(s, heard(seq=1), now=NOW)
    with db.write() as s:
        # The server restarted alone on a new port: same run of the announcer.
        second = dbpeers.record_announce(s, heard(seq=2, port=5002), now=NOW + 5)
    assert second.peer_id == first.peer_id and not second.new
    assert peer_rows(db_path) == [(NODE_A, "alice", "127.0.0.2", 5002, 2, NOW + 5)]


def test_a_node_id_cannot_change_its_name_or_jump_its_sequence(db: Database, db_path: Path) -> None:
    with db.write() as s:
        dbpeers.record_announce(s, heard(seq=1), now=NOW)
    with db.write() as s:
        renamed = dbpeers.record_announce(s, heard(seq=2, user="mallory", port=1), now=NOW + 1)
        jumped = dbpeers.record_announce(s, heard(seq=2**62, port=1), now=NOW + 1)
    assert renamed.peer_id is None and "already belongs to alice" in str(renamed.refused)
    assert jumped.peer_id is None and "jumps" in str(jumped.refused)
    assert peer_rows(db_path) == [(NODE_A, "alice", "127.0.0.2", 5001, 1, NOW)]


def test_own_announcement_is_ignored(db: Database, db_path: Path) -> None:
    with db.write() as s:
        set_node_id(s, OWN, now=NOW)
    with db.write() as s:
        assert node_state(s).node_id == OWN
        outcome = dbpeers.record_announce(s, heard(OWN), now=NOW)
    assert outcome.ignored and outcome.peer_id is None
    assert peer_rows(db_path) == []


def test_new_node_id_on_the_same_endpoint_replaces_the_old_peer(
    db: Database, db_path: Path
) -> None:
    old = add_peer_holding(db, NODE_A, b"old content" * 100, cert=CERT)
    with db.write() as s:
        other_port = dbpeers.record_announce(s, heard("c" * 32, port=6000), now=NOW)
        replaced = dbpeers.record_announce(
            s, heard(NODE_B, seq=1, cert=CERT, proven=True), now=NOW + 1
        )
    assert replaced.new and replaced.peer_id != old
    assert [r[0] for r in peer_rows(db_path)] == [NODE_B, "c" * 32]
    assert other_port.peer_id is not None
    assert sql(db_path, "SELECT count(*) FROM holdings") == [(0,)]


@pytest.mark.parametrize(
    ("cert", "proven"),
    [(None, False), ("e" * 64, True), (CERT, False)],
    ids=["no-certificate", "another-certificate", "its-certificate-unproven"],
)
def test_a_new_node_id_that_does_not_prove_the_certificate_retires_nobody(
    db: Database, db_path: Path, cert: str | None, proven: bool
) -> None:
    """A spoof: a fresh node id from the seeder's address and port, naming no certificate,
    its own, or the seeder's without its signature. The seeder stays, and so do its offers
    and its next announcements."""
    seeder = add_peer_holding(db, NODE_A, b"old content" * 100, cert=CERT)
    with db.write() as s:
        spoof = dbpeers.record_announce(
            s, heard(NODE_B, seq=1, cert=cert, proven=proven), now=NOW + 1
        )
        later = dbpeers.record_announce(s, heard(NODE_A, seq=2, cert=CERT), now=NOW + 2)
    assert spoof.new and spoof.peer_id != seeder
    assert later.peer_id == seeder and later.refused is None
    assert sorted(r[0] for r in peer_rows(db_path)) == [NODE_A, NODE_B]
    assert sql(db_path, "SELECT count(*) FROM retired_nodes") == [(0,)]
    assert sql(db_path, "SELECT peer_id FROM holdings") == [(seeder,)]


def test_a_node_id_moves_to_another_address_only_with_its_signature(
    db: Database, db_path: Path
) -> None:
    """Its announcement replayed from elsewhere got there first: the node's own next one
    (a higher seq, signed) takes its node id back; an unsigned one does not."""
    with db.write() as s:
        replayed = dbpeers.record_announce(
            s, heard(NODE_A, seq=1, address="127.0.0.9", cert=CERT), now=NOW
        )
        claimed = dbpeers.record_announce(s, heard(NODE_A, seq=2, cert=CERT), now=NOW + 1)
        real = dbpeers.record_announce(s, heard(NODE_A, seq=3, cert=CERT, proven=True), now=NOW + 2)
        back = dbpeers.record_announce(
            s, heard(NODE_A, seq=3, address="127.0.0.9", cert=CERT, proven=True), now=NOW + 3
        )
    assert claimed.refused is not None and "already belongs to alice" in claimed.refused
    assert real.peer_id == replayed.peer_id and real.refused is None
    # Whatever was fetched at the other address is not trusted: its catalog comes again.
    assert real.needs_catalog
    assert sql(db_path, "SELECT catalog_synced, catalog_epoch FROM peers") == [(-1, None)]
    assert back.refused is not None and "replayed" in back.refused  # the replay, again
    assert peer_rows(db_path) == [(NODE_A, "alice", "127.0.0.2", 5001, 3, NOW + 2)]


def test_a_restart_on_another_port_with_the_same_certificate_replaces_the_old_peer(
    db: Database, db_path: Path
) -> None:
    """Issue 36: with P2P_TCP_PORT=0 a restarted node takes another port; its old row
    must not offer its files from the closed one until the TTL."""
    cert, other = CERT, "e" * 64
    with db.write() as s:
        first = dbpeers.record_announce(s, heard(NODE_A, cert=cert, proven=True), now=NOW)
        # Another node on the same machine (its own certificate) stays.
        beside = dbpeers.record_announce(
            s, heard("c" * 32, port=6000, cert=other, proven=True), now=NOW
        )
        again = dbpeers.record_announce(
            s, heard(NODE_B, port=7000, cert=cert, proven=True), now=NOW + 1
        )
        replay = dbpeers.record_announce(
            s, heard(NODE_A, seq=2, cert=cert, proven=True), now=NOW + 2
        )
    assert again.new and again.peer_id not in (first.peer_id, beside.peer_id)
    assert sorted(r[0] for r in peer_rows(db_path)) == sorted([NODE_B, "c" * 32])
    assert replay.refused is not None and "restart replaced" in replay.refused


def test_record_announces_in_one_batch_agrees_with_one_at_a_time(
    db: Database, db_path: Path
) -> None:
    """A batch sees its own earlier announcements: restarts, moves and replays within it."""
    mine = {"cert": CERT, "proven": True}  # A and its restart B: one machine
    batch = [
        heard(NODE_A, seq=1, port=5001, **mine),
        heard(NODE_A, seq=2, port=5003, **mine),  # moves to another port
        heard("c" * 32, seq=1, port=5001, user="carol"),  # the old port: nobody there now
        heard(NODE_B, seq=1, port=5003, **mine),  # a restart where A is now: A goes
        heard(NODE_A, seq=3, port=5003, **mine),  # the replaced id again
        heard(NODE_B, seq=1, port=5003, **mine),  # a replay
        heard(NODE_B, seq=2, port=5003, cv=2, **mine),
        heard(OWN),
    ]
    with db.write() as s:
        set_node_id(s, OWN, now=NOW)
    with db.write() as s:
        together = dbpeers.record_announces(s, batch, now=NOW)
    rows = peer_rows(db_path)
    other = db_path.parent / "one-by-one.db"
    alone = Database.open(other)
    try:
        with alone.write() as s:
            set_node_id(s, OWN, now=NOW)
        singly = []
        for h in batch:
            with alone.write() as s:
                singly.append(dbpeers.record_announce(s, h, now=NOW))
    finally:
        alone.close()
    assert [(o.new, o.needs_catalog, o.ignored, o.refused) for o in together] == [
        (o.new, o.needs_catalog, o.ignored, o.refused) for o in singly
    ]
    assert [o.refused is not None for o in together] == [0, 0, 0, 0, 1, 1, 0, 0]
    assert rows == peer_rows(other)
    assert [(r[0], r[3], r[4]) for r in rows] == [(NODE_B, 5003, 2), ("c" * 32, 5001, 1)]


def test_a_batch_of_new_peers_gets_their_own_ids_and_the_transaction_sees_the_writes(
    db: Database, db_path: Path
) -> None:
    """Peers are written in bulk: each outcome names its own row, and reads in the same
    transaction (here of a peer and a retired node) show what the batch wrote."""
    with db.write() as s:
        first = dbpeers.record_announce(
            s, heard(NODE_A, seq=1, port=5001, cert=CERT, proven=True), now=NOW
        )
    with db.write() as s:
        held = row_of(s, peers, first.peer_id)
        assert held is not None and held.announce_seq == 1
        nodes = [f"{i:032x}" for i in range(1, 301)]
        batch = [heard(n, seq=1, port=6000 + i, user=f"u{i}") for i, n in enumerate(nodes)]
        batch += [
            heard(NODE_A, seq=7, port=5009, cv=3, cert=CERT, proven=True),
            heard(NODE_B, seq=1, port=5009, cert=CERT, proven=True),
        ]
        outcomes = dbpeers.record_announces(s, batch, now=NOW + 5)
        # NODE_A moved to 5009 and NODE_B restarted there: A is replaced, in this session too.
        retired = s.execute(select(retired_nodes).where(retired_nodes.c.node_id == NODE_A)).first()
        assert retired is not None and retired.replaced and retired.last_seq == 7
        assert s.scalar(select(peers.c.id).where(peers.c.node_id == NODE_A)) is None
    ids = dict(sql(db_path, "SELECT node_id, id FROM peers"))
    assert [o.peer_id for o in outcomes[:300]] == [ids[n] for n in nodes]
    assert all(o.new and o.needs_catalog for o in outcomes[:300])
    assert outcomes[300].peer_id == first.peer_id and not outcomes[300].new
    assert outcomes[301].new and outcomes[301].peer_id == ids[NODE_B]
    assert sql(db_path, "SELECT count(*), min(last_seen) FROM peers") == [(301, NOW + 5)]
    with db.write() as s:
        again = dbpeers.record_announce(s, heard(NODE_A, seq=8, port=5009, cert=CERT), now=NOW + 6)
        assert again.refused is not None and "restart replaced" in again.refused
        peer = row_of(s, peers, ids[nodes[0]])
        assert peer is not None and peer.tcp_port == 6000
        move = heard(nodes[0], seq=2, port=7000, user="u0")
        assert dbpeers.record_announce(s, move, now=NOW + 6).peer_id == peer.id
        peer = row_of(s, peers, peer.id)
        assert (peer.tcp_port, peer.announce_seq, peer.last_seen) == (7000, 2, NOW + 6)


def test_expire_peers_deletes_silent_peers_and_their_holdings(db: Database, db_path: Path) -> None:
    add_peer_holding(db, NODE_A, b"silent" * 1000, now=NOW - 100)
    fresh = add_peer_holding(db, NODE_B, b"fresh" * 1000, now=NOW, port=5002)
    with db.write() as s:
        gone = dbpeers.expire_peers(s, now=NOW, ttl=30)
    assert gone == ["alice (127.0.0.2:5001)"]
    assert [r[0] for r in peer_rows(db_path)] == [NODE_B]
    assert sql(db_path, "SELECT peer_id FROM holdings") == [(fresh,)]
    with db.write() as s:
        assert dbpeers.expire_peers(s, now=NOW, ttl=30) == []


# ---------------------------------------------------------------- catalogs


def chunked(data: bytes, cs: int = CS) -> tuple[str, list[str]]:
    """The file's SHA-256 and its chained manifest."""
    return hashlib.sha256(data).hexdigest(), manifest_entries(data, cs)


def root_of(data: bytes) -> str:
    return protocol.manifest_root(chunked(data)[1])


def offered(name: str, data: bytes, have: bytes | None = None) -> dbcatalogs.Offered:
    sha, hashes = chunked(data)
    held = len(hashes) if have is None else protocol.bitfield_count(have)
    return dbcatalogs.Offered(name, sha, CS, root_of(data), len(data), have, held)


def manifest(*datas: bytes) -> dict[dbindex.ContentKey, list[str]]:
    return {(chunked(d)[0], CS, root_of(d)): chunked(d)[1] for d in datas}


def add_peer_holding(
    db: Database,
    node: str,
    data: bytes,
    *,
    now: float = NOW,
    port: int = 5001,
    cert: str | None = None,
) -> int:
    with db.write() as s:
        peer_id = dbpeers.record_announce(
            s, heard(node, port=port, cert=cert, proven=True), now=now
        ).peer_id
        assert peer_id is not None
        kept = dbcatalogs.apply_catalog(
            s, peer_id, 1, [offered(f"{node[:4]}.bin", data)], manifest(data), now=now
        )
    assert kept == 1
    return peer_id


def local_file(db: Database, name: str, data: bytes) -> None:
    sha, hashes = chunked(data)
    sizes = [len(data[i : i + CS]) for i in range(0, len(data), CS)]
    hashed = dbindex.HashedFile(len(data), 1, sha, CS, hashes, sizes, root_of(data))
    with db.write() as s:
        dbindex.record_local_file(s, "share", name, hashed, now=NOW)


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_apply_catalog_keeps_what_it_can_verify(db: Database, db_path: Path) -> None:
    movie, unknown, mine, partial = (
        data_of(1, 3 * CS + 5),
        data_of(2, 100),
        data_of(3, 20000),
        data_of(4, 4 * CS),
    )
    local_file(db, "mine.txt", mine)
    bits = protocol.bitfield_empty(4)
    protocol.bitfield_set(bits, 2)
    liar = offered("mine-liar.txt", mine)
    liar = dbcatalogs.Offered(liar.name, liar.sha256, CS, liar.root, 999, None, 1)
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        kept = dbcatalogs.apply_catalog(
            s,
            peer_id,
            7,
            [
                offered("movie.mkv", movie),
                offered("unknown.bin", unknown),
                liar,
                offered("mine-copy.txt", mine),
                offered("partial.iso", partial, bytes(bits)),
            ],
            manifest(movie, partial),
            now=NOW,
        )
    assert kept == 3
    holdings = sql(db_path, "SELECT name, chunks_held, bitfield FROM holdings ORDER BY name")
    assert holdings == [
        ("mine-copy.txt", 2, None),
        ("movie.mkv", 4, None),
        ("partial.iso", 1, bytes(bits)),
    ]
    # The new content arrived with its manifest entries, sizes and root.
    movie_sha, movie_hashes = chunked(movie)
    assert sql(
        db_path,
        "SELECT size, chunk_size, root, chunk_count FROM files WHERE sha256 = ?",
        movie_sha,
    ) == [(len(movie), CS, root_of(movie), 4)]
    assert sql(
        db_path,
        "SELECT c.chunk_index, c.size, c.sha256 FROM chunks c JOIN files f "
        "ON f.id = c.file_id WHERE f.sha256 = ? ORDER BY c.chunk_index",
        movie_sha,
    ) == [(i, min(CS, len(movie) - i * CS), h) for i, h in enumerate(movie_hashes)]
    # Unknown content without a manifest left no trace; the lie did not overwrite the truth.
    assert sql(db_path, "SELECT count(*) FROM files WHERE sha256 = ?", chunked(unknown)[0]) == [
        (0,)
    ]
    assert sql(db_path, "SELECT size FROM files WHERE sha256 = ?", chunked(mine)[0]) == [
        (len(mine),)
    ]
    # The synced version is remembered: the same catalog version needs no refetch.
    with db.write() as s:
        assert not dbpeers.record_announce(s, heard(seq=2, cv=7), now=NOW).needs_catalog
        assert dbpeers.record_announce(s, heard(seq=3, cv=8), now=NOW).needs_catalog


def test_apply_catalog_removes_holdings_no_longer_offered(db: Database, db_path: Path) -> None:
    a, b = data_of(5, 100), data_of(6, CS + 1)
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        assert (
            dbcatalogs.apply_catalog(
                s, peer_id, 1, [offered("a", a), offered("b", b)], manifest(a, b), now=NOW
            )
            == 2
        )
    with db.write() as s:
        assert (
            dbcatalogs.apply_catalog(
                s, peer_id, 2, [offered("b", b), offered("b2", b)], {}, now=NOW
            )
            == 2
        )
    assert sql(db_path, "SELECT name FROM holdings ORDER BY name") == [("b",), ("b2",)]
    with db.write() as s:
        assert dbcatalogs.apply_catalog(s, peer_id, 3, [], {}, now=NOW) == 0
    assert sql(db_path, "SELECT count(*) FROM holdings") == [(0,)]


def test_apply_catalog_for_a_gone_peer_returns_none(db: Database) -> None:
    with db.write() as s:
        assert dbcatalogs.apply_catalog(s, 999, 1, [], {}, now=NOW) is None


def test_empty_file_needs_no_chunk_hashes(db: Database, db_path: Path) -> None:
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        assert (
            dbcatalogs.apply_catalog(s, peer_id, 1, [offered("empty", b"")], manifest(b""), now=NOW)
            == 1
        )
    assert sql(db_path, "SELECT size, chunk_count FROM files") == [(0, 0)]


def test_apply_catalog_never_stores_a_file_whose_chunks_contradict_its_size(
    db: Database, db_path: Path
) -> None:
    small = data_of(7, CS)
    sha, hashes = chunked(small)
    root = root_of(small)
    big_lie = dbcatalogs.Offered("big.bin", sha, CS, root, 6 * CS + 1, None, 7)
    truth = dbcatalogs.Offered("small.bin", sha, CS, root, CS, None, 1)
    # What the listener fetches: manifests validated against the last size seen per key.
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        dbcatalogs.apply_catalog(
            s, peer_id, 1, [big_lie, truth], {(sha, CS, root): hashes}, now=NOW
        )
    for size, cs, count, chunk_bytes, chunk_rows in sql(
        db_path,
        "SELECT f.size, f.chunk_size, f.chunk_count, coalesce(sum(c.size), 0), count(c.size) "
        "FROM files f LEFT JOIN chunks c ON c.file_id = f.id GROUP BY f.id",
    ):
        assert count == protocol.chunk_count(size, cs) == chunk_rows
        assert chunk_bytes == size


# ---------------------------------------------------------------- index queries


def test_remove_local_files_deletes_in_slices_and_orphans_go(
    db: Database, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_of(8, 10)
    sha, hashes = chunked(data)
    hashed = dbindex.HashedFile(len(data), 1, sha, CS, hashes, [len(data)], root_of(data))
    names = [f"f{i:04d}" for i in range(1100)]
    with db.write() as s:
        for name in names:
            dbindex.record_local_file(s, "share", name, hashed, now=NOW)
    with db.write() as s:
        assert dbindex.remove_local_files(s, "share", names[:-1]) == 1099
        assert dbindex.delete_orphan_files(s) == 0
    with db.write() as s:
        assert dbindex.remove_local_files(s, "share", names[-1:]) == 1
        assert dbindex.delete_orphan_files(s) == 1
    # The catalog log's tombstones keep what peers remove the entries by, not the content.
    assert sql(db_path, "SELECT count(*), count(file_id), min(gone_sha256) FROM catalog_log") == [
        (1100, 0, sha)
    ]
    monkeypatch.setattr(catalog_log, "MIN_TOMBSTONES", 0)
    with db.write() as s:
        assert catalog_log.compact(s) == 1100
    assert sql(db_path, "SELECT count(*) FROM files") == [(0,)]
    assert sql(db_path, "SELECT count(*) FROM chunks") == [(0,)]


def test_orphan_cleanup_keeps_content_a_peer_holds(db: Database, db_path: Path) -> None:
    add_peer_holding(db, NODE_A, data_of(9, 300))
    with db.write() as s:
        assert dbindex.delete_orphan_files(s) == 0
    assert sql(db_path, "SELECT count(*) FROM chunks") == [(1,)]


def test_heartbeat_is_upserted(db: Database, db_path: Path) -> None:
    start = time.time()
    with db.write() as s:
        record_heartbeat(s, "server", pid=1, started_at=start, now=start)
    with db.write() as s:
        record_heartbeat(s, "server", pid=2, started_at=start, now=start + 2, detail="tcp 1")
    assert sql(db_path, "SELECT role, pid, beat_at, detail FROM heartbeats") == [
        ("server", 2, start + 2, "tcp 1")
    ]


def test_role_settings_replace_only_that_roles_rows(db: Database, db_path: Path) -> None:
    with db.read() as s:
        assert role_settings(s) == {}
    with db.write() as s:
        record_role_settings(s, "server", {"bind": "0.0.0.0", "tcp_port": "1"}, now=NOW)
        record_role_settings(s, "listener", {"udp_port": "47474"}, now=NOW)
    # A restarted server resolves other values and drops one it no longer records.
    with db.write() as s:
        record_role_settings(s, "server", {"bind": "127.0.0.1"}, now=NOW + 5)
    with db.read() as s:
        assert role_settings(s) == {
            "listener": {"udp_port": "47474"},
            "server": {"bind": "127.0.0.1"},
        }
    rows = sql(db_path, "SELECT role, name, value, recorded_at FROM role_settings ORDER BY role")
    assert rows == [
        ("listener", "udp_port", "47474", NOW),
        ("server", "bind", "127.0.0.1", NOW + 5),
    ]


def test_role_settings_are_not_written_until_the_caller_commits(db: Database) -> None:
    with pytest.raises(RuntimeError), db.write() as s:
        record_role_settings(s, "server", {"bind": "127.0.0.1"}, now=NOW)
        raise RuntimeError("the step failed after recording")
    with db.read() as s:
        assert role_settings(s) == {}


# ---------------------------------------------------------------- migration from schema v1

SCHEMA_V1 = Path(__file__).parent / "data" / "schema_v1.sql"
V1_SHA = hashlib.sha256(b"v1 content").hexdigest()
V1_GONE_SHA = hashlib.sha256(b"v1 content only a peer held").hexdigest()
DONE_ROW = (
    1,  # id
    1,  # file_id
    "movie.mkv",
    V1_SHA,
    3 * CS + 5,  # size
    "done",
    None,  # reason
    NOW - 100,  # requested_at
    NOW - 90,  # started_at
    NOW - 80,  # finished_at
    3 * CS + 5,  # bytes_done
    3 * CS + 5,  # bytes_received
    0,  # bad_chunks
    b"\xf0",  # have
    None,  # temp_path
    "movie.mkv",  # saved_as
)


def v1_database(path: Path) -> None:
    """A p2pshare 0.1 node's database: its schema, a shared file, a peer, two downloads."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA_V1.read_text())
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        conn.executemany(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
            [(1, V1_SHA, 3 * CS + 5, CS, 4, NOW - 200), (2, V1_GONE_SHA, 10, CS, 1, NOW - 200)],
        )
        conn.executemany(
            "INSERT INTO chunks VALUES (?, ?, ?, ?)",
            [(1, i, min(CS, 3 * CS + 5 - i * CS), f"{i:064x}") for i in range(4)]
            + [(2, 0, 10, "e" * 64)],
        )
        conn.execute(
            "INSERT INTO local_files VALUES (1, 'download', 'movie.mkv', 1, ?, 1, 1, 1, ?)",
            (3 * CS + 5, NOW - 80),
        )
        conn.execute(
            "INSERT INTO peers VALUES (1, ?, 'alice', '127.0.0.2', 5001, 3, 7, 3, ?, ?)",
            (NODE_A, NOW - 300, NOW - 1),
        )
        conn.executemany(
            "INSERT INTO holdings VALUES (?, 1, ?, ?, ?, NULL)",
            [(1, 1, "movie.mkv", 4), (2, 2, "other.txt", 1)],
        )
        conn.execute("INSERT INTO bad_peers VALUES (1, '127.0.0.9', 5009, 1, 2, ?)", (NOW - 5,))
        conn.execute(f"INSERT INTO downloads VALUES ({', '.join('?' * len(DONE_ROW))})", DONE_ROW)
        conn.execute(
            "INSERT INTO downloads VALUES (2, 1, 'movie copy.mkv', ?, ?, 'active', NULL, ?, ?,"
            " NULL, ?, ?, 0, X'c0', '/tmp/p2p/movie.part', NULL)",
            (V1_SHA, 3 * CS + 5, NOW - 20, NOW - 19, 2 * CS, 2 * CS),
        )
        conn.execute(
            "INSERT INTO download_sources VALUES (1, '127.0.0.2', 5001, 'alice', 4, ?, 0)",
            (3 * CS + 5,),
        )
        conn.commit()
    finally:
        conn.close()


def columns(path: Path, table: str) -> list[tuple[Any, ...]]:
    """(name, type, notnull, pk) of each column, as SQLite reports them."""
    return [(r[1], r[2], r[3], r[5]) for r in sql(path, f"PRAGMA table_info({table})")]


def schema_shape(path: Path) -> dict[str, set[tuple[Any, ...]]]:
    """Per table, its columns and its indexes, in no order (ALTER TABLE appends columns)."""
    tables = [r[0] for r in sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    shape = {t: set(columns(path, t)) for t in tables}
    for name, table in sql(path, "SELECT name, tbl_name FROM sqlite_master WHERE type='index'"):
        if not name.startswith("sqlite_autoindex"):
            shape[table].add(
                ("index", name, tuple(r[2] for r in sql(path, f"PRAGMA index_info({name})")))
            )
    return shape


def test_v1_database_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    v1_database(path)

    Database.open(path).close()

    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(11,)]
    assert "root" in [c[0] for c in columns(path, "files")]
    # The finished download's history is intact, and its file row stays for it (no root:
    # content known before v2 has no manifest any more); content only a peer held is gone.
    # v3 appended request_id (none: it predates requests), pinned (no) and switched; v8
    # rebuilt the table in the models' column order (file_id may be NULL for a torrent).
    v1_columns = (
        "id, file_id, name, sha256, size, status, reason, requested_at, started_at,"
        " finished_at, bytes_done, bytes_received, bad_chunks, have, temp_path, saved_as"
    )
    # v11 appended offered_by (NULL: no identity proven, it follows no other version).
    assert sql(
        path,
        f"SELECT {v1_columns}, request_id, pinned, switched, offered_by FROM downloads"
        " WHERE id = 1",
    ) == [DONE_ROW + (None, 0, None, None)]
    assert sql(path, "SELECT id, sha256, size, chunk_size, root, chunk_count FROM files") == [
        (1, V1_SHA, 3 * CS + 5, CS, "", 4)
    ]
    assert sql(path, "SELECT download_id, chunks FROM download_sources") == [(1, 4)]
    # The unfinished download failed, saying why; it no longer points at a temp file.
    [(status, reason, temp_path, finished_at)] = sql(
        path, "SELECT status, reason, temp_path, finished_at FROM downloads WHERE id = 2"
    )
    assert status == "failed"
    assert "protocol v2" in reason
    assert temp_path is None and finished_at is not None
    # Everything derived from v1 chunk hashes goes: the indexer and the catalogs refill it.
    for table in ("chunks", "holdings", "local_files", "bad_peers"):
        assert sql(path, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert sql(path, "SELECT node_id, catalog_synced FROM peers") == [(NODE_A, -1)]
    assert sql(path, "PRAGMA foreign_key_check") == []
    assert sql(path, "PRAGMA integrity_check") == [("ok",)]


def test_migrated_database_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    v1_database(old)
    Database.open(old).close()
    Database.open(new).close()
    # Migrations and models describe the same tables, so an upgraded node is a new one.
    assert schema_shape(old) == schema_shape(new)
    # The unique key of an offer, which also serves a lookup by SHA-256 alone (its first
    # column): no index of its own for that since v9.
    assert (
        sql(old, "PRAGMA index_list(files)")
        and sql(old, "SELECT name FROM sqlite_master WHERE type='index' AND name='ix_files_sha256'")
        == []
    )
    plan = sql(old, "EXPLAIN QUERY PLAN SELECT id FROM files WHERE sha256 = 'ab'")
    assert "USING INDEX sqlite_autoindex_files" in plan[0][-1] or "COVERING INDEX" in plan[0][-1]
    unique = [
        [c[2] for c in sql(path, f"PRAGMA index_info('{r[1]}')")]
        for path in (old, new)
        for r in sql(path, "PRAGMA index_list(files)")
        if r[2]
    ]
    assert unique == [["sha256", "chunk_size", "root"]] * 2


def test_migrated_database_takes_v2_content(tmp_path: Path) -> None:
    """After the upgrade the node indexes, hears catalogs and downloads as a new one does."""
    path = tmp_path / "p2p.db"
    v1_database(path)
    database = Database.open(path)
    try:
        data = data_of(20, 3 * CS + 5)
        # Foreign keys still point at the rebuilt `files`: a chunk of no file is refused.
        with pytest.raises(IntegrityError), database.write() as s:
            s.execute(insert(chunks).values(file_id=12345, chunk_index=0, size=1, sha256="0" * 64))
        with database.write() as s:
            peer_id = dbpeers.record_announce(s, heard(seq=8, cv=4), now=NOW).peer_id
            assert peer_id is not None
            kept = dbcatalogs.apply_catalog(
                s, peer_id, 4, [offered("new.bin", data)], manifest(data), now=NOW
            )
            assert kept == 1
        with database.write() as s:
            did, new = dbdl.queue_download(s, dbdl.resolve_name(s, "new.bin"), now=NOW)
            assert new
            spec = dbjobs.job_spec(s, did)
        assert spec is not None
        assert (spec.sha256, spec.root, spec.chunk_hashes) == (
            hashlib.sha256(data).hexdigest(),
            root_of(data),
            chunked(data)[1],
        )
        # A chunk deleted with its file: the cascade reaches the rebuilt table.
        with database.write() as s:
            assert dbpeers.expire_peers(s, now=NOW + 1000, ttl=30)
        assert sql(path, "PRAGMA foreign_key_check") == []
    finally:
        database.close()


# ---------------------------------------------------------------- offers of one SHA-256

NODE_C = "c" * 32
LIAR = ("127.0.0.2", 5001)
HONEST = [("127.0.0.3", 5002), ("127.0.0.4", 5003)]
MOVIE = data_of(30, 4 * CS)
MOVIE_SHA = hashlib.sha256(MOVIE).hexdigest()


def forged_entries(entries: list[str], index: int) -> list[str]:
    """A manifest that lies about one entry (never the last: that must be the SHA-256)."""
    out = list(entries)
    out[index] = hashlib.sha256(b"lie" + out[index].encode()).hexdigest()
    return out


def offer(
    db: Database,
    node: str,
    endpoint: tuple[str, int],
    name: str,
    entries: list[str],
    *,
    cs: int = CS,
    seq: int = 1,
) -> int:
    """A peer offering MOVIE's SHA-256 under the manifest `entries`; returns the file id."""
    root = protocol.manifest_root(entries)
    with db.write() as s:
        peer_id = dbpeers.record_announce(
            s, heard(node, seq, address=endpoint[0], port=endpoint[1], cv=seq), now=NOW
        ).peer_id
        assert peer_id is not None
        entry = dbcatalogs.Offered(name, MOVIE_SHA, cs, root, len(MOVIE), None, len(entries))
        kept = dbcatalogs.apply_catalog(
            s, peer_id, seq, [entry], {(MOVIE_SHA, cs, root): entries}, now=NOW
        )
        assert kept == 1
    [(file_id,)] = sql(
        db.path,
        "SELECT id FROM files WHERE sha256 = ? AND chunk_size = ? AND root = ?",
        MOVIE_SHA,
        cs,
        root,
    )
    return int(file_id)


def mark_bad(db: Database, download_id: int, *peers: tuple[str, int]) -> None:
    """What a job records when a peer's chunk fails verification."""
    with db.write() as s:
        d = row_of(s, downloads, download_id)
        assert d is not None
        dbjobs.record_progress(
            s,
            download_id,
            dbjobs.Progress(
                bytes(d.have), d.bytes_done, 0, len(peers), [], list(peers), "active", None
            ),
            now=NOW,
        )


def queue_on(db: Database, file_id: int, have: set[int]) -> int:
    """A download of MOVIE on one offer, with `have` chunks verified and on disk."""
    with db.write() as s:
        did, new = dbdl.queue_download(
            s, dbdl.Candidate(file_id, "movie.mkv", MOVIE_SHA, len(MOVIE), 1), now=NOW
        )
        assert new
        dbjobs.start_job(s, did, "/tmp/movie.part", now=NOW)
        bits = protocol.bitfield_empty(4)
        for i in have:
            protocol.bitfield_set(bits, i)
        progress = dbjobs.Progress(bytes(bits), len(have) * CS, 0, 0, [], [], "active", None)
        dbjobs.record_progress(s, did, progress, now=NOW)
    return did


def download_row(db: Database, did: int) -> tuple[Any, ...]:
    [row] = sql(
        db.path,
        "SELECT file_id, status, reason, have, bytes_done, size FROM downloads WHERE id = ?",
        did,
    )
    return row


@pytest.mark.parametrize(
    ("forged", "kept"),
    [
        # Chunk i is kept only if both manifests agree on entries i-1 and i.
        pytest.param(0, {2, 3}, id="first-entry-differs"),
        pytest.param(1, {0, 3}, id="middle-entry-differs"),
        pytest.param(2, {0, 1}, id="third-entry-differs"),
    ],
)
def test_switch_offer_moves_a_download_to_the_honest_offer(
    db: Database, forged: int, kept: set[int]
) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, forged))
    honest_file = offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    assert liar_file != honest_file
    did = queue_on(db, liar_file, {0, 1, 2, 3})
    mark_bad(db, did, LIAR)

    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    reason = change.reason if change else None

    assert reason is not None
    file_id, status, row_reason, have, done, size = download_row(db, did)
    assert (file_id, status, size) == (honest_file, "queued", len(MOVIE))
    assert row_reason == reason
    assert "switched" in reason and root_of(MOVIE)[:12] in reason
    assert f"{len(kept)} verified chunks kept" in reason
    assert set(protocol.bitfield_indices(have, 4)) == kept
    assert done == len(kept) * CS
    # The job now starts on the honest manifest, from the chunks that carry over.
    with db.read() as s:
        spec = dbjobs.job_spec(s, did)
    assert spec is not None
    assert (spec.file_id, spec.root, spec.chunk_hashes) == (honest_file, root_of(MOVIE), honest)


def test_switch_offer_keeps_nothing_across_chunk_sizes(db: Database) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 0))
    big = manifest_entries(MOVIE, 2 * CS)
    other_file = offer(db, NODE_B, HONEST[0], "movie.mkv", big, cs=2 * CS)
    did = queue_on(db, liar_file, {2, 3})
    mark_bad(db, did, LIAR)
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    reason = change.reason if change else None
    assert reason is not None and "0 verified chunks kept" in reason
    file_id, status, _, have, done, _ = download_row(db, did)
    assert (file_id, status, done) == (other_file, "queued", 0)
    assert have == bytes(1)  # two chunks of 2 * CS: one byte, nothing set


def test_switch_offer_prefers_the_offer_more_good_peers_make(db: Database) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 1))
    # A second liar under yet another root, against two honest peers.
    other_lie = offer(db, "d" * 32, ("127.0.0.5", 5004), "movie.mkv", forged_entries(honest, 2))
    honest_file = offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    offer(db, NODE_C, HONEST[1], "movie-copy.mkv", honest)
    did = queue_on(db, liar_file, set())
    mark_bad(db, did, LIAR)
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    reason = change.reason if change else None
    assert reason is not None and "2 peers" in reason
    assert download_row(db, did)[0] == honest_file != other_lie


def test_switch_offer_without_a_usable_other_offer_changes_nothing(db: Database) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 0))
    did = queue_on(db, liar_file, {2, 3})
    mark_bad(db, did, LIAR)
    before = download_row(db, did)

    # No other offer at all.
    with db.write() as s:
        assert dbswitch.switch_offer(s, did) is None
    # Another offer whose only peer is bad for it.
    honest_file = offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    with db.write() as s:
        s.execute(
            insert(bad_peers).values(
                address=HONEST[0][0], tcp_port=HONEST[0][1], file_id=honest_file, marked_at=NOW
            )
        )
    with db.write() as s:
        assert dbswitch.switch_offer(s, did) is None
    # Another offer whose peer has gone silent and expired.
    offer(db, NODE_C, HONEST[1], "movie.mkv", honest)
    with db.write() as s:
        assert dbpeers.expire_peers(s, now=NOW + 1000, ttl=30)
        assert dbswitch.switch_offer(s, did) is None

    assert download_row(db, did) == before


def test_switch_offer_leaves_a_finished_download_alone(db: Database) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 0))
    offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    did = queue_on(db, liar_file, set())
    with db.write() as s:
        dbjobs.finish_download(s, did, status="cancelled", reason="cancelled by the user", now=NOW)
    with db.write() as s:
        assert dbswitch.switch_offer(s, did) is None
        assert dbswitch.switch_offer(s, 9999) is None
    assert download_row(db, did)[:2] == (liar_file, "cancelled")


def test_find_candidates_gives_one_candidate_per_sha_the_offer_most_good_peers_make(
    db: Database,
) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 1))
    honest_file = offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    offer(db, NODE_C, HONEST[1], "movie-copy.mkv", honest)
    assert liar_file < honest_file  # the liar was first: its offer is not preferred for that

    with db.read() as s:
        assert dbdl.find_candidates(s, "movie") == [
            dbdl.Candidate(honest_file, "movie-copy.mkv", MOVIE_SHA, len(MOVIE), 2)
        ]
        assert dbdl.find_candidates(s, "movie.mkv") == [
            dbdl.Candidate(honest_file, "movie.mkv", MOVIE_SHA, len(MOVIE), 2)
        ]
        assert [c.file_id for c in dbdl.find_candidates(s, f"movie@{MOVIE_SHA[:8]}")] == [
            honest_file
        ]

    # Both honest peers turn out bad for their offer: the other one is all that is left.
    with db.write() as s:
        for address, port in HONEST:
            s.execute(
                insert(bad_peers).values(
                    address=address, tcp_port=port, file_id=honest_file, marked_at=NOW
                )
            )
    with db.read() as s:
        assert dbdl.find_candidates(s, "movie") == [
            dbdl.Candidate(liar_file, "movie-copy.mkv", MOVIE_SHA, len(MOVIE), 1)
        ]
    # Every offer's peers bad: the content is still a candidate, with no peer to count.
    with db.write() as s:
        s.execute(
            insert(bad_peers).values(
                address=LIAR[0], tcp_port=LIAR[1], file_id=liar_file, marked_at=NOW
            )
        )
    with db.read() as s:
        [candidate] = dbdl.find_candidates(s, "movie")
    assert (candidate.sha256, candidate.peers) == (MOVIE_SHA, 0)


def test_queue_download_goes_by_sha256_across_offers(db: Database) -> None:
    honest = chunked(MOVIE)[1]
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 0))
    honest_file = offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    did = queue_on(db, liar_file, set())
    # Another offer of the same content reuses the unfinished download.
    with db.write() as s:
        candidate = dbdl.Candidate(honest_file, "movie.mkv", MOVIE_SHA, len(MOVIE), 1)
        assert dbdl.queue_download(s, candidate, now=NOW) == (did, False)
    with db.write() as s:
        dbjobs.finish_download(s, did, status="cancelled", reason="cancelled by the user", now=NOW)
    # The content shared here under another chunk size is already here.
    hashed = dbindex.HashedFile(
        len(MOVIE),
        1,
        MOVIE_SHA,
        2 * CS,
        manifest_entries(MOVIE, 2 * CS),
        [2 * CS, 2 * CS],
        protocol.manifest_root(manifest_entries(MOVIE, 2 * CS)),
    )
    with db.write() as s:
        dbindex.record_local_file(s, "share", "mine.mkv", hashed, now=NOW)
    with db.write() as s, pytest.raises(dbdl.AlreadyHere, match="mine.mkv"):
        dbdl.queue_download(s, candidate, now=NOW)


def test_apply_catalog_keeps_two_roots_of_one_sha_apart(db: Database, db_path: Path) -> None:
    honest = chunked(MOVIE)[1]
    lie = forged_entries(honest, 2)
    liar_file = offer(db, NODE_A, LIAR, "movie.mkv", lie)
    honest_file = offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    assert sql(db_path, "SELECT id, root FROM files ORDER BY id") == [
        (liar_file, protocol.manifest_root(lie)),
        (honest_file, root_of(MOVIE)),
    ]
    with db.read() as s:
        assert dbjobs.sources_for(s, honest_file) == [
            dbjobs.Source(HONEST[0][0], HONEST[0][1], "alice", None)
        ]
        assert [src.address for src in dbjobs.sources_for(s, liar_file)] == [LIAR[0]]
        known = dbcatalogs.known_contents(
            s, [(MOVIE_SHA, CS, root_of(MOVIE)), (MOVIE_SHA, CS, "0" * 64)]
        )
    assert list(known) == [(MOVIE_SHA, CS, root_of(MOVIE))]
    assert known[(MOVIE_SHA, CS, root_of(MOVIE))].file_id == honest_file
    # Each manifest stays with its own root.
    for file_id, entries in ((liar_file, lie), (honest_file, honest)):
        assert [
            h
            for (h,) in sql(
                db_path,
                "SELECT sha256 FROM chunks WHERE file_id = ? ORDER BY chunk_index",
                file_id,
            )
        ] == entries


def test_reports_count_a_content_once_whatever_roots_it_is_offered_under(db: Database) -> None:
    honest = chunked(MOVIE)[1]
    offer(db, NODE_A, LIAR, "movie.mkv", forged_entries(honest, 1))
    offer(db, NODE_B, HONEST[0], "movie.mkv", honest)
    with db.read() as s:
        rows = dbreports.list_files(s, "movie")
        network = dbreports.counts(s).network_files
    assert [(r.name, r.sha256, r.peers) for r in rows] == [("movie.mkv", MOVIE_SHA, 2)]
    assert network == 1

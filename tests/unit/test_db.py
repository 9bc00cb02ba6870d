"""The node database: schema, WAL, several processes at once, and the discovery queries."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from p2pshare.db import index as dbindex
from p2pshare.db import peers as dbpeers
from p2pshare.db.engine import SCHEMA_VERSION, Database, SchemaError
from p2pshare.db.models import Chunk
from p2pshare.db.node import node_state, record_heartbeat, set_node_id
from p2pshare.services import protocol

CS = 16384
NOW = 1_700_000_000.0
NODE_A = "a" * 32
NODE_B = "b" * 32
OWN = "0" * 32


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


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database.open(db_path)
    yield database
    database.close()


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


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.write() as s:
        s.add(Chunk(file_id=12345, chunk_index=0, size=1, sha256="0" * 64))
        s.flush()


def test_failed_write_rolls_back(db: Database, db_path: Path) -> None:
    with pytest.raises(RuntimeError), db.write() as s:
        record_heartbeat(s, "server", pid=1, started_at=NOW, now=NOW)
        s.flush()
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
from p2pshare.db.node import bump_catalog_version, node_state, record_heartbeat

path, writes = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # the parent releases every worker at once
db = Database.open(path)
role = "w%d" % os.getpid()
for _ in range(writes):
    with db.write() as s:
        record_heartbeat(s, role, pid=os.getpid(), started_at=0.0, now=time.time())
        bump_catalog_version(s, now=time.time())
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
    assert sql(db_path, "SELECT catalog_version FROM node") == [(800,)]
    assert sql(db_path, "SELECT count(*) FROM heartbeats") == [(4,)]


# ---------------------------------------------------------------- peers


def heard(
    node: str = NODE_A,
    seq: int = 1,
    *,
    address: str = "127.0.0.2",
    port: int = 5001,
    cv: int = 1,
    user: str = "alice",
) -> dbpeers.Heard:
    return dbpeers.Heard(node, user, address, port, cv, seq)


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
    old = add_peer_holding(db, NODE_A, b"old content" * 100)
    with db.write() as s:
        other_port = dbpeers.record_announce(s, heard("c" * 32, port=6000), now=NOW)
        replaced = dbpeers.record_announce(s, heard(NODE_B, seq=1), now=NOW + 1)
    assert replaced.new and replaced.peer_id != old
    assert [r[0] for r in peer_rows(db_path)] == [NODE_B, "c" * 32]
    assert other_port.peer_id is not None
    assert sql(db_path, "SELECT count(*) FROM holdings") == [(0,)]


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
    return hashlib.sha256(data).hexdigest(), [
        hashlib.sha256(data[i : i + cs]).hexdigest() for i in range(0, len(data), cs)
    ]


def offered(name: str, data: bytes, have: bytes | None = None) -> dbpeers.Offered:
    sha, hashes = chunked(data)
    held = len(hashes) if have is None else protocol.bitfield_count(have)
    return dbpeers.Offered(name, sha, CS, len(data), have, held)


def manifest(*datas: bytes) -> dict[tuple[str, int], list[str]]:
    return {(chunked(d)[0], CS): chunked(d)[1] for d in datas}


def add_peer_holding(
    db: Database, node: str, data: bytes, *, now: float = NOW, port: int = 5001
) -> int:
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(node, port=port), now=now).peer_id
        assert peer_id is not None
        kept = dbpeers.apply_catalog(
            s, peer_id, 1, [offered(f"{node[:4]}.bin", data)], manifest(data), now=now
        )
    assert kept == 1
    return peer_id


def local_file(db: Database, name: str, data: bytes) -> None:
    sha, hashes = chunked(data)
    sizes = [len(data[i : i + CS]) for i in range(0, len(data), CS)]
    hashed = dbindex.HashedFile(len(data), 1, sha, CS, hashes, sizes)
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
    liar = dbpeers.Offered(liar.name, liar.sha256, CS, 999, None, 1)
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        kept = dbpeers.apply_catalog(
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
    # The new content arrived with its chunk hashes and sizes.
    movie_sha, movie_hashes = chunked(movie)
    assert sql(
        db_path, "SELECT size, chunk_size, chunk_count FROM files WHERE sha256 = ?", movie_sha
    ) == [(len(movie), CS, 4)]
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
            dbpeers.apply_catalog(
                s, peer_id, 1, [offered("a", a), offered("b", b)], manifest(a, b), now=NOW
            )
            == 2
        )
    with db.write() as s:
        assert (
            dbpeers.apply_catalog(s, peer_id, 2, [offered("b", b), offered("b2", b)], {}, now=NOW)
            == 2
        )
    assert sql(db_path, "SELECT name FROM holdings ORDER BY name") == [("b",), ("b2",)]
    with db.write() as s:
        assert dbpeers.apply_catalog(s, peer_id, 3, [], {}, now=NOW) == 0
    assert sql(db_path, "SELECT count(*) FROM holdings") == [(0,)]


def test_apply_catalog_for_a_gone_peer_returns_none(db: Database) -> None:
    with db.write() as s:
        assert dbpeers.apply_catalog(s, 999, 1, [], {}, now=NOW) is None


def test_empty_file_needs_no_chunk_hashes(db: Database, db_path: Path) -> None:
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        assert (
            dbpeers.apply_catalog(s, peer_id, 1, [offered("empty", b"")], manifest(b""), now=NOW)
            == 1
        )
    assert sql(db_path, "SELECT size, chunk_count FROM files") == [(0, 0)]


def test_apply_catalog_never_stores_a_file_whose_chunks_contradict_its_size(
    db: Database, db_path: Path
) -> None:
    small = data_of(7, CS)
    sha, hashes = chunked(small)
    big_lie = dbpeers.Offered("big.bin", sha, CS, 6 * CS + 1, None, 7)
    truth = dbpeers.Offered("small.bin", sha, CS, CS, None, 1)
    # What the listener fetches: manifests validated against the last size seen per key.
    with db.write() as s:
        peer_id = dbpeers.record_announce(s, heard(), now=NOW).peer_id
        assert peer_id is not None
        dbpeers.apply_catalog(s, peer_id, 1, [big_lie, truth], {(sha, CS): hashes}, now=NOW)
    for size, cs, count, chunk_bytes, chunk_rows in sql(
        db_path,
        "SELECT f.size, f.chunk_size, f.chunk_count, coalesce(sum(c.size), 0), count(c.size) "
        "FROM files f LEFT JOIN chunks c ON c.file_id = f.id GROUP BY f.id",
    ):
        assert count == protocol.chunk_count(size, cs) == chunk_rows
        assert chunk_bytes == size


# ---------------------------------------------------------------- index queries


def test_remove_local_files_deletes_in_slices_and_orphans_go(db: Database, db_path: Path) -> None:
    data = data_of(8, 10)
    sha, hashes = chunked(data)
    hashed = dbindex.HashedFile(len(data), 1, sha, CS, hashes, [len(data)])
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

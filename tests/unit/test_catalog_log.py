"""The catalog log (db/catalog_log.py): kept by triggers, so every change to what this node
offers is one row with a new sequence number, and nothing else moves it."""

from __future__ import annotations

import hashlib
import time

import pytest

from p2pshare.db import catalog_log
from p2pshare.db import index as dbindex
from p2pshare.db.engine import Database
from p2pshare.db.values import HashedFile
from p2pshare.services import protocol

CS = protocol.MIN_CHUNK


def hashed(label: str, chunks: int = 1) -> HashedFile:
    sha = hashlib.sha256(label.encode()).hexdigest()
    size = chunks * CS
    entries = [hashlib.sha256(f"{label}{i}".encode()).hexdigest() for i in range(chunks - 1)]
    entries.append(sha)
    return HashedFile(size, 0, sha, CS, entries, [CS] * chunks, protocol.manifest_root(entries))


def log_rows(db: Database) -> list[tuple[str, bool, bool]]:
    """(name, removed, whole) of every row, oldest change first."""
    with db.read() as conn:
        return [(r.name, r.removed, r.have is None) for r in catalog_log.rows_after(conn, 0, 100)]


def state(db: Database) -> catalog_log.LogState:
    with db.read() as conn:
        return catalog_log.state(conn)


def test_each_change_is_one_row_at_a_new_version(db: Database) -> None:
    start = state(db)
    assert len(start.epoch) == protocol.CATALOG_EPOCH_HEX and start.version == 0
    with db.write() as s:
        dbindex.record_local_files(
            s, "share", [("a.txt", hashed("a")), ("b.txt", hashed("b"))], now=time.time()
        )
    assert log_rows(db) == [("a.txt", False, True), ("b.txt", False, True)]
    assert state(db).version == 2
    # The same file under the same name in the download folder too: offered already.
    with db.write() as s:
        dbindex.record_local_files(s, "download", [("a.txt", hashed("a"))], now=time.time())
    assert state(db).version == 2
    # Removed from one folder, still offered from the other: no change.
    with db.write() as s:
        dbindex.remove_local_files(s, "download", ["a.txt"])
    assert state(db).version == 2
    # Rewritten: the old content gone, the new one offered, two changes in order.
    with db.write() as s:
        dbindex.record_local_files(s, "share", [("a.txt", hashed("a2"))], now=time.time())
        dbindex.delete_orphan_files(s)
    assert log_rows(db) == [("b.txt", False, True), ("a.txt", True, True), ("a.txt", False, True)]
    assert state(db).version == 4
    with db.read() as conn:
        gone = [r for r in catalog_log.rows_after(conn, 0, 100) if r.removed]
    # The tombstone names what went, though its content's files row is gone.
    assert [(g.name, g.sha256) for g in gone] == [("a.txt", hashed("a").sha256)]


def test_tombstones_are_compacted_past_their_bound_and_the_floor_rises(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_log, "MIN_TOMBSTONES", 3)
    names = [f"f{i}" for i in range(8)]
    with db.write() as s:
        dbindex.record_local_files(s, "share", [(n, hashed(n)) for n in names], now=time.time())
    with db.write() as s:
        dbindex.remove_local_files(s, "share", names[:6])
    # 2 offered, 6 tombstones: 3 kept (max(3, 2)), the 3 oldest go.
    with db.write() as s:
        assert catalog_log.compact(s) == 3
    after = state(db)
    assert after.floor == 8 + 3  # the last tombstone compacted
    assert [(n, gone) for n, gone, _ in log_rows(db)] == [
        ("f6", False),
        ("f7", False),
        ("f3", True),
        ("f4", True),
        ("f5", True),
    ]
    with db.write() as s:
        assert catalog_log.compact(s) == 0


def test_a_new_database_is_a_new_log(tmp_path) -> None:
    one, two = Database.open(tmp_path / "1.db"), Database.open(tmp_path / "2.db")
    try:
        assert state(one).epoch != state(two).epoch
    finally:
        one.close()
        two.close()

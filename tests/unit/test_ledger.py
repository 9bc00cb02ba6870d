"""Ledgers with a horizon: uploads rolled up into per-day totals exactly, lifetime totals
kept as rows are recorded, bad peers forgiven, the WAL checkpointed back to nothing."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert
from test_db import sql

from p2pshare.db import catalog_log, ledger, reports
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.db.schema import bad_peers, files
from p2pshare.db.wal import Checkpointer, sizes
from p2pshare.services.server.housekeeping import Housekeeping

DAY = 86400
NOW = 1_750_000_000.0  # a fixed "now", mid-day UTC
PEERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
FILES = [("a" * 64, "a.bin"), ("b" * 64, "dir/b.bin")]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(tmp_path / "p2p.db")
    yield db
    db.close()


def served(rng: random.Random, n: int, oldest_days: float) -> list[dbserving.ServedChunk]:
    out = []
    for _ in range(n):
        sha, name = rng.choice(FILES)
        out.append(
            dbserving.ServedChunk(
                NOW - rng.uniform(0, oldest_days * DAY),
                rng.choice(PEERS),
                sha,
                name,
                rng.randrange(100),
                0,
                rng.randrange(1, 1 << 20),
                rng.uniform(0.001, 0.1),
            )
        )
    return out


def record(database: Database, chunks: list[dbserving.ServedChunk]) -> None:
    for start in range(0, len(chunks), 500):
        with database.write() as s:
            dbserving.record_uploads(s, chunks[start : start + 500])


def per_day(chunks: list[dbserving.ServedChunk]) -> dict[tuple[int, str, str], list[int]]:
    out: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for c in chunks:
        acc = out[(int(c.at // DAY) * DAY, c.peer_address, c.name)]
        acc[0] += 1
        acc[1] += c.bytes
    return dict(out)


def test_rollup_keeps_every_chunk_and_byte(database: Database) -> None:
    chunks = served(random.Random(1), 3000, oldest_days=90)
    record(database, chunks)
    cutoff = ledger.horizon(NOW, 30)
    moved = 0
    batches = 0
    while True:
        with database.write() as s:
            n = ledger.roll_up_batch(s, cutoff, batch=250)
        if n == 0:
            break
        moved += n
        batches += 1
        assert n < 400  # a batch is a short transaction, about the size asked
    old = [c for c in chunks if c.at < cutoff]
    assert moved == len(old) and batches >= len(old) // 400
    path = database.path
    assert sql(path, "SELECT count(*) FROM uploads WHERE at < ?", cutoff) == [(0,)]
    assert sql(path, "SELECT count(*) FROM uploads") == [(len(chunks) - len(old),)]
    days = {
        (day, peer, name): [n, b]
        for day, peer, name, n, b in sql(
            path, "SELECT day, peer_address, name, chunks, bytes FROM upload_days"
        )
    }
    assert days == per_day(old)
    # Lifetime totals are exact whatever was rolled up, and status reads them from one row.
    with database.read() as s:
        totals = ledger.upload_totals(s)
    assert totals == ledger.Totals(len(chunks), sum(c.bytes for c in chunks))
    with database.read() as s:
        counts = reports.status_counts(s)
    assert (counts.uploads, counts.uploaded_bytes) == (totals.chunks, totals.bytes)


def test_rolling_up_twice_adds_into_the_same_days(database: Database) -> None:
    rng = random.Random(2)
    first, second = served(rng, 400, 60), served(rng, 400, 60)
    cutoff = ledger.horizon(NOW, 10)
    for batch in (first, second):
        record(database, batch)
        with database.write() as s:
            while ledger.roll_up_batch(s, cutoff, batch=100):
                pass
    rows = sql(database.path, "SELECT sum(chunks), sum(bytes) FROM upload_days")
    old = [c for c in first + second if c.at < cutoff]
    assert rows == [(len(old), sum(c.bytes for c in old))]


def test_uploads_since_answers_from_both_tables(database: Database) -> None:
    chunks = served(random.Random(3), 2000, oldest_days=60)
    record(database, chunks)
    with database.write() as s:
        while ledger.roll_up_batch(s, ledger.horizon(NOW, 20)):
            pass
    for days in (1, 5, 25, 45, 100):
        since = ledger.day_start(NOW) - (days - 1) * DAY
        with database.read() as s:
            got = {
                (u.peer_address, u.name): (u.chunks, u.bytes)
                for u in ledger.uploads_since(s, since)
            }
        want: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for c in chunks:
            if c.at >= since:
                want[(c.peer_address, c.name)][0] += 1
                want[(c.peer_address, c.name)][1] += c.bytes
        assert got == {k: tuple(v) for k, v in want.items()}, days


def test_bad_peers_are_forgiven_after_the_horizon(database: Database) -> None:
    with database.write() as s:
        fid = s.execute(
            insert(files).values(
                sha256="c" * 64, size=1, chunk_size=16384, root="", chunk_count=1, first_seen=NOW
            )
        ).lastrowid
        for address, days in (("127.0.0.9", 31), ("127.0.0.8", 29)):
            s.execute(
                insert(bad_peers).values(
                    address=address, tcp_port=1, file_id=fid, marked_at=NOW - days * DAY
                )
            )
    with database.write() as s:
        assert ledger.expire_bad_peers(s, ledger.horizon(NOW, 30)) == 1
    assert sql(database.path, "SELECT address FROM bad_peers") == [("127.0.0.8",)]


def test_housekeeping_rolls_up_and_gives_pages_back(database: Database) -> None:
    record(database, served(random.Random(4), 20000, oldest_days=200))
    Checkpointer(database.path).run("TRUNCATE")
    before = sizes(database.path).database
    keeper = Housekeeping(database, 30, threading.Event())
    assert keeper.step(NOW) > 0
    assert keeper.step(NOW) == 0  # nothing left before the horizon
    Checkpointer(database.path).run("TRUNCATE")
    assert sql(database.path, "PRAGMA auto_vacuum") == [(2,)]  # incremental, from the start
    assert sql(database.path, "PRAGMA freelist_count")[0][0] < 10
    assert sizes(database.path).database < before


def test_an_old_database_switches_to_incremental_vacuum_once(tmp_path: Path) -> None:
    path = tmp_path / "p2p.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")  # a table first: auto_vacuum can no longer change
    conn.close()
    database = Database.open(path)
    try:
        assert sql(path, "PRAGMA auto_vacuum") == [(0,)]
        record(database, served(random.Random(5), 3000, oldest_days=200))
        Housekeeping(database, 30, threading.Event()).step(NOW)
        assert sql(path, "PRAGMA auto_vacuum") == [(2,)]
    finally:
        database.close()


def test_checkpoints_truncate_the_wal_once_a_long_reader_leaves(database: Database) -> None:
    path = database.path
    reader = sqlite3.connect(path)
    reader.isolation_level = None
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM uploads").fetchone()  # holds this snapshot
    checkpointer = Checkpointer(path)
    try:
        grown = 0
        for i in range(20):
            record(database, served(random.Random(i), 500, oldest_days=1))
            step = checkpointer.step()
            assert step.copied < step.wal_frames  # the reader pins the frames
            grown = sizes(path).wal
        assert grown > 1 << 20
        reader.execute("COMMIT")
        reader.close()
        # Two quiet steps: the first copies every frame, the next truncates.
        for _ in range(3):
            checkpointer.step()
        assert sizes(path).wal == 0
    finally:
        checkpointer.close()


def test_migration_seeds_lifetime_totals_from_uploads(tmp_path: Path) -> None:
    """A v4 database's uploads are counted into upload_totals by _to_v5."""
    path = tmp_path / "p2p.db"
    database = Database.open(path)
    record(database, served(random.Random(6), 300, oldest_days=5))
    database.close()
    conn = sqlite3.connect(path)
    want = conn.execute("SELECT count(*), sum(bytes) FROM uploads").fetchone()
    conn.executescript(
        "DROP TABLE upload_days; DROP TABLE upload_totals; DROP INDEX ix_bad_peers_marked_at;"
        # and what v6, v7 and v8 added
        " DROP TABLE download_days; DROP TABLE request_days; DROP INDEX ix_holdings_name;"
        " DROP INDEX ix_downloads_file; DROP INDEX ix_downloads_finished_at;"
        " DROP TABLE torrent_pieces; DROP TABLE torrents; DROP TABLE torrent_downloads;"
        # and what v9 added
        + "".join(f" DROP TRIGGER {name};" for name in catalog_log.TRIGGER_NAMES)
        + " DROP TABLE catalog_log; ALTER TABLE node DROP COLUMN catalog_epoch;"
        " ALTER TABLE node DROP COLUMN catalog_floor; ALTER TABLE peers DROP COLUMN catalog_epoch;"
        # and what v10 and v11 added
        " DROP TABLE manifest_sources; ALTER TABLE peers DROP COLUMN catalog_entries;"
        " ALTER TABLE peers DROP COLUMN over_budget; ALTER TABLE downloads DROP COLUMN offered_by;"
        " PRAGMA user_version=4;"
    )
    conn.close()
    Database.open(path).close()
    assert sql(path, "SELECT chunks, bytes FROM upload_totals") == [want]

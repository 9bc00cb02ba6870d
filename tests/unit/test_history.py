"""History with a horizon: 1,000 download rounds through the db/ functions p2pctl and the
downloader use, `now` advancing an hour a round, with the server's housekeeping: the
database's rows and size level off, and every total stays exact."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pshare.db import catalog_log, history, reports
from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import index as dbindex
from p2pshare.db import jobs as dbjobs
from p2pshare.db import peers as dbpeers
from p2pshare.db import requests as dbreq
from p2pshare.db.engine import Database
from p2pshare.services.server.housekeeping import Housekeeping

DAY = 86400
HOUR = 3600
T0 = 1_750_000_000.0
CS = 16384
HISTORY_DAYS = 7
ROUNDS = 1000
# Rounds after which the test looks, each right after a housekeeping step: from the
# horizon's filling (7 days) on.
SAMPLES = (264, 504, 744, 984)
TABLES = ("downloads", "download_sources", "requests", "files", "chunks", "local_files")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(tmp_path / "p2p.db")
    yield db
    db.close()


def hashed(i: int) -> dbindex.HashedFile:
    """Round i's file: 24 to 63 chunks, a made-up manifest (nothing here verifies bytes)."""
    count = 24 + i % 40
    size = count * CS - i % 1000
    entries = [hashlib.sha256(f"{i}/{c}".encode()).hexdigest() for c in range(count)]
    sizes = [min(CS, size - c * CS) for c in range(count)]
    sha = hashlib.sha256(f"file {i}".encode()).hexdigest()
    root = hashlib.sha256(f"root {i}".encode()).hexdigest()
    return dbindex.HashedFile(size, 0, sha, CS, entries, sizes, root)


def one_round(database: Database, peer: dbpeers.Heard, i: int, now: float) -> int:
    """Alice offers round i's file (her catalog now holds only it), the user downloads it
    as `p2pctl download` does, the downloader runs and publishes it, and the user moves
    the previous round's file out of the download folder. Returns its bytes."""
    h = hashed(i)
    name = f"daily/report-{i:04d}.bin"
    offer = dbcatalogs.Offered(name, h.sha256, CS, h.root, h.size, None, len(h.chunk_hashes))
    with database.write() as s:
        heard = dbpeers.Heard(
            peer.node_id, peer.username, peer.address, peer.tcp_port, i + 1, i + 1
        )
        outcome = dbpeers.record_announce(s, heard, now=now)
        assert outcome.peer_id is not None
        dbcatalogs.apply_catalog(
            s, outcome.peer_id, i + 1, [offer], {offer.key: list(h.chunk_hashes)}, now=now
        )
    with database.write() as s:
        [did] = dbreq.queue_request(s, name, every=False, now=now).downloads
    with database.write() as s:
        dbjobs.start_job(s, did, f"/tmp/p2p/{did}.part", now=now + 1)
        tally = dbjobs.SourceTally(
            peer.address, peer.tcp_port, peer.username, len(h.chunk_hashes), h.size, 0
        )
        progress = dbjobs.Progress(b"\xff" * 8, h.size, h.size, 0, [tally], [], "active", None)
        dbjobs.record_progress(s, did, progress, now=now + 30)
    with database.write() as s:
        dbjobs.finish_download(
            s, did, status="done", reason=None, now=now + 60, published=(name, h)
        )
        if i:
            dbindex.remove_local_files(s, "download", [f"daily/report-{i - 1:04d}.bin"])
            dbindex.delete_orphan_files(s)  # as the indexer does; the download row keeps it
    return h.size


def rows(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def file_size(path: Path) -> int:
    """The database file's size with every WAL frame written back into it."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path.stat().st_size


def test_a_thousand_download_rounds_keep_the_database_flat(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The catalog log keeps a tombstone of each file moved away, up to its bound (a
    # tenth of the rounds here, so the samples see the bound reached).
    monkeypatch.setattr(catalog_log, "MIN_TOMBSTONES", ROUNDS // 10)
    peer = dbpeers.Heard("a" * 32, "alice", "127.0.0.2", 5001, 1, 1)
    keeper = Housekeeping(database, HISTORY_DAYS, threading.Event())
    seen: dict[int, tuple[dict[str, int], int]] = {}
    total_bytes = 0
    for i in range(ROUNDS):
        now = T0 + i * HOUR
        total_bytes += one_round(database, peer, i, now)
        if i % 24 == 23:  # the server's housekeeping, seen once a day here
            keeper.step(now + 120)
            if i + 1 in SAMPLES:
                seen[i + 1] = (rows(database.path), file_size(database.path))
    final = rows(database.path)

    # Rows: what the horizon holds (7 days of hourly rounds), the same after 504 rounds
    # as after 984; without the horizon they would have doubled.
    for n in SAMPLES:
        counts = seen[n][0]
        assert counts["downloads"] == HISTORY_DAYS * 24, (n, counts)
        assert counts == seen[SAMPLES[0]][0], (n, counts, seen[SAMPLES[0]][0])
        # A download row keeps its file and manifest; the rolled-up ones' are forgotten.
        assert counts["files"] == counts["downloads"], (n, counts)
        assert counts["local_files"] == 1  # the user moves each file away the next round
    # Size: flat once the horizon filled (freed pages go back to the file system).
    sizes = {n: size for n, (_, size) in seen.items()}
    assert max(sizes.values()) <= sizes[SAMPLES[0]] * 1.02, sizes

    # Totals stay exact: rolled-up days plus rows still listed are every round.
    with database.read() as s:
        older = history.rolled_up(s)
        listed = dbjobs.unfinished_downloads(s)
    assert listed == []
    [done] = older
    assert done.status == "done"
    assert done.downloads + final["downloads"] == ROUNDS
    conn = sqlite3.connect(database.path)
    try:
        kept_bytes = conn.execute("SELECT sum(bytes_done) FROM downloads").fetchone()[0]
        days_bytes, received = conn.execute(
            "SELECT sum(bytes), sum(bytes_received) FROM download_days"
        ).fetchone()
        requests = conn.execute(
            "SELECT (SELECT sum(requests) FROM request_days), (SELECT count(*) FROM requests)"
        ).fetchone()
        assert conn.execute(
            "SELECT count(*) FROM download_days d WHERE d.day > ?",
            (T0 + (ROUNDS * HOUR) - 6 * DAY,),
        ).fetchone() == (0,)  # nothing within the horizon was rolled up
    finally:
        conn.close()
    with database.read() as s:
        status_counts = reports.status_counts(s)
    assert days_bytes + kept_bytes == total_bytes
    assert received == days_bytes
    assert sum(requests) == ROUNDS
    assert status_counts.downloads_done == ROUNDS


def test_unfinished_and_recent_downloads_stay(database: Database) -> None:
    peer = dbpeers.Heard("b" * 32, "bob", "127.0.0.3", 5002, 1, 1)
    for i in range(3):
        one_round(database, peer, i, T0 + i * DAY)
    h = hashed(99)
    offer = dbcatalogs.Offered(
        "queued.bin", h.sha256, CS, h.root, h.size, None, len(h.chunk_hashes)
    )
    with database.write() as s:
        peer_id = dbpeers.record_announce(
            s, dbpeers.Heard("b" * 32, "bob", "127.0.0.3", 5002, 9, 9), now=T0
        ).peer_id
        assert peer_id is not None
        dbcatalogs.apply_catalog(s, peer_id, 9, [offer], {offer.key: list(h.chunk_hashes)}, now=T0)
        [waiting] = dbreq.queue_request(s, "queued.bin", every=False, now=T0).downloads
    with database.write() as s:  # ended 2 and 1 days before "now"; one never ends
        cutoff = T0 + 3 * DAY - 1.5 * DAY
        assert history.roll_up_downloads(s, cutoff) == 2
        assert history.roll_up_downloads(s, cutoff) == 0
        assert history.roll_up_requests(s, cutoff) == 2
    conn = sqlite3.connect(database.path)
    try:
        ids = conn.execute("SELECT id, status FROM downloads ORDER BY id").fetchall()
        assert ids == [(3, "done"), (waiting, "queued")]
        # The rolled-up downloads' sources went with them.
        assert conn.execute("SELECT DISTINCT download_id FROM download_sources").fetchall() == [
            (3,)
        ]
        assert conn.execute("SELECT requests FROM request_days").fetchall() == [(1,), (1,)]
    finally:
        conn.close()

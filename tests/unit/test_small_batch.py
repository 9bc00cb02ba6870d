"""Batches of small downloads: the queries they run in bulk, how files are spread over
sources, the connection pool, how a chunk is verified (tests/integration has the whole
node and its real sockets; here the batch's own decisions)."""

from __future__ import annotations

import threading

import pytest
from test_db import NOW, sql
from test_requests import PEER_A, PEER_B, catalog, hashed, sha

from p2pshare.db import batch as dbbatch
from p2pshare.db import downloads as dbdl
from p2pshare.db import jobs as dbjobs
from p2pshare.db import requests as dbreq
from p2pshare.db.engine import Database
from p2pshare.services.downloader.pool import PeerPool
from p2pshare.services.downloader.port import ChunkCheck
from p2pshare.services.downloader.small_batch import SMALL_MAX, assign_sources, batchable
from p2pshare.services.hashing.chain import manifest_entries


def folder(n: int, prefix: str = "album/") -> dict[str, bytes]:
    return {f"{prefix}f{i:03d}.bin": bytes([i % 251]) * (100 + i) for i in range(n)}


def fetched_from_a(specs: list[dbjobs.JobSpec], files: dict[str, bytes]) -> list[dbbatch.Fetched]:
    """Each of these downloads fetched whole from PEER_A, one chunk each."""
    return [
        dbbatch.Fetched(
            sp.download_id,
            sp.name,
            hashed(files[sp.name]),
            dbjobs.SourceTally(*PEER_A, "node-a", 1, sp.size, 0),
        )
        for sp in specs
    ]


def queue_folder(db: Database, pattern: str = "album/") -> list[int]:
    with db.write() as s:
        return dbreq.queue_request(s, pattern, every=False, now=NOW).downloads


# ---------------------------------------------------------------- which downloads


@pytest.mark.parametrize(
    ("chunks", "size", "expected"),
    [
        (0, 0, True),
        (1, 10, True),
        (4, SMALL_MAX, True),
        (1, SMALL_MAX + 1, False),
        (5, 5 * 16384, False),
    ],
)
def test_batchable_takes_files_of_a_few_chunks_up_to_the_limit(
    chunks: int, size: int, expected: bool
) -> None:
    assert batchable(chunks, size) is expected


def test_a_folder_is_queued_in_order_and_reused_when_asked_again(db: Database) -> None:
    files = folder(30)
    catalog(db, "node-a", PEER_A, files)
    ids = queue_folder(db)
    with db.read() as s:
        specs = dbbatch.job_specs(s, ids)
    # Smallest first, one row each, every manifest known.
    assert [sp.name for sp in specs] == sorted(files, key=lambda n: len(files[n]))
    assert all(sp.chunk_hashes == [sp.sha256] for sp in specs)
    assert [sp.download_id for sp in specs] == sorted(ids)
    again = queue_folder(db)
    assert again == ids  # the unfinished downloads, not new ones
    with db.read() as s:
        runnable = dbbatch.runnable_downloads(s)
    assert [r.download_id for r in runnable] == sorted(ids)
    assert all(r.chunks == 1 and not r.resuming for r in runnable)


def test_the_unfinished_mark_moves_when_the_queue_does_not_when_a_download_runs(
    db: Database,
) -> None:
    """The downloader rereads its queue when this mark moves: a download queued, resumed,
    cancelled or ended moves it; one going active, or any other table changing, does not."""
    catalog(db, "node-a", PEER_A, folder(3))

    def mark() -> tuple[int, int, int]:
        with db.read() as conn:
            return dbbatch.unfinished_mark(conn)

    empty = mark()
    ids = queue_folder(db)
    queued = mark()
    assert empty == (0, 0, 0) and queued == (3, max(ids), sum(ids))

    def set_status(download_id: int, status: str) -> tuple[int, int, int]:
        with db.write() as conn:
            conn.exec_driver_sql(
                "UPDATE downloads SET status = ? WHERE id = ?", (status, download_id)
            )
        return mark()

    assert set_status(ids[0], "active") == queued
    assert set_status(ids[0], "waiting") == queued
    catalog(db, "node-b", PEER_B, folder(5))  # peers and holdings change: no move
    assert mark() == queued
    assert set_status(ids[0], "paused") != queued
    assert set_status(ids[0], "queued") == queued
    assert set_status(ids[1], "done") not in (queued, empty)


def test_sources_leave_out_bad_peers_per_file(db: Database) -> None:
    files = folder(3)
    catalog(db, "node-a", PEER_A, files)
    catalog(db, "node-b", PEER_B, files)
    ids = queue_folder(db)
    with db.read() as s:
        specs = {sp.name: sp for sp in dbbatch.job_specs(s, ids)}
    first = specs["album/f000.bin"]
    bad = dbjobs.SourceTally(*PEER_A, "node-a", 0, 100, 1)
    with db.write() as s:
        dbbatch.record_bad(s, first.download_id, bad, now=NOW)
    with db.read() as s:
        sources = dbbatch.sources_for_files(s, [sp.file_id for sp in specs.values()])
    assert {(x.address, x.tcp_port) for x in sources[first.file_id]} == {PEER_B}
    other = specs["album/f001.bin"].file_id
    assert {(x.address, x.tcp_port) for x in sources[other]} == {PEER_A, PEER_B}
    with db.read() as s:
        row = dbjobs.job_spec(s, first.download_id)
    assert row is not None and row.status in dbdl.UNFINISHED  # full jobs take it from here


def test_start_keeps_a_cancel_and_finish_records_everything_in_one_go(db: Database) -> None:
    files = folder(4)
    catalog(db, "node-a", PEER_A, files)
    ids = queue_folder(db)
    with db.write() as s:
        dbreq.cancel_downloads(s, str(ids[0]), now=NOW)
    with db.write() as s:
        started = dbbatch.start_batch(s, {i: f"/tmp/{i}.part" for i in ids}, now=NOW)
    assert started == ids[1:]
    with db.write() as s:
        dbreq.pause_downloads(s, str(started[0]))
    with db.write() as s:
        recorded = dbbatch.set_saved_as_many(s, {i: f"album/{i}" for i in started})
    assert recorded == set(started[1:])  # paused meanwhile: not published
    with db.write() as s:
        dbreq.resume_downloads(s, str(started[0]))
    with db.read() as s:
        specs = dbbatch.job_specs(s, started)
    done = fetched_from_a(specs, files)
    with db.write() as s:
        dbbatch.finish_batch(s, done, now=NOW + 1)
    with db.read() as s:
        rows = [dbjobs.job_spec(s, i) for i in started]
    assert all(r is not None and r.status == "done" and r.have == b"\x80" for r in rows)
    # Each finished download names its source, its bytes and where it was saved.
    sources = sql(db.path, "SELECT download_id, address, chunks, bytes FROM download_sources")
    assert sorted(sources) == sorted((sp.download_id, PEER_A[0], 1, sp.size) for sp in specs)
    saved = sql(db.path, "SELECT name FROM local_files WHERE root = 'download'")
    assert sorted(n for (n,) in saved) == sorted(sp.name for sp in specs)
    status = sql(db.path, "SELECT status FROM downloads WHERE id = ?", ids[0])
    assert status == [("cancelled",)]


def test_finish_adds_to_the_row_an_earlier_bad_chunk_left(db: Database) -> None:
    files = folder(2)
    catalog(db, "node-a", PEER_A, files)
    ids = queue_folder(db)
    with db.write() as s:
        dbbatch.start_batch(s, {i: f"/tmp/{i}.part" for i in ids}, now=NOW)
    with db.read() as s:
        specs = dbbatch.job_specs(s, ids)
    first = specs[0]
    with db.write() as s:  # a lying copy from the same peer, counted, then a good one
        dbbatch.record_bad(
            s, first.download_id, dbjobs.SourceTally(*PEER_A, "node-a", 0, 7, 1), now=NOW
        )
    done = fetched_from_a(specs, files)
    with db.write() as s:
        dbbatch.finish_batch(s, done, now=NOW + 1)
    rows = sql(
        db.path,
        "SELECT download_id, chunks, bytes, bad_chunks FROM download_sources ORDER BY download_id",
    )
    assert rows == [
        (first.download_id, 1, first.size + 7, 1),
        (specs[1].download_id, 1, specs[1].size, 0),
    ]
    # Published again under a name already indexed (a re-download): one row, updated.
    with db.write() as s:
        dbbatch.finish_batch(s, done[:1], now=NOW + 2)
    again = sql(
        db.path, "SELECT count(*), max(indexed_at) FROM local_files WHERE name = ?", first.name
    )
    assert again == [(1, NOW + 2)]


# ---------------------------------------------------------------- spreading over sources


def spec(i: int, size: int, file_id: int) -> dbjobs.JobSpec:
    return dbjobs.JobSpec(
        i, file_id, f"f{i}", sha(bytes([i])), size, 1 << 18, "", [], b"", None, None, "queued"
    )


def test_files_spread_over_their_holders_by_bytes() -> None:
    a = dbjobs.Source(*PEER_A, "a", None)
    b = dbjobs.Source(*PEER_B, "b", None)
    specs = [spec(i, 1000 * (i + 1), i) for i in range(10)]
    holders = {i: [a, b] for i in range(10)}
    holders[9] = [a]  # only a holds the biggest
    out = assign_sources(specs, holders)
    load = {src: sum(sp.size for sp in assigned) for src, assigned in out.items()}
    assert {sp.download_id for sp in out[a]} >= {9}
    assert abs(load[a] - load[b]) <= 10_000  # within the biggest file
    assert sorted(sp.download_id for src in out for sp in out[src]) == list(range(10))


# ---------------------------------------------------------------- the pool


class Recorded:
    """A stand-in PeerClient: the pool only looks at `sock` and calls close()."""

    def __init__(self) -> None:
        self.sock: object | None = object()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock = None


def test_pool_reuses_an_idle_connection_and_closes_old_ones() -> None:
    pool = PeerPool(idle_seconds=60)
    key = ("127.0.0.1", 1, None, False)
    made: list[Recorded] = []

    def connect() -> Recorded:
        made.append(Recorded())
        return made[-1]

    first, reused = pool.take(key, connect)  # type: ignore[arg-type]
    assert not reused and len(made) == 1
    pool.give(key, first)
    again, reused = pool.take(key, connect)  # type: ignore[arg-type]
    assert reused and again is first and len(made) == 1
    other, reused = pool.take(("127.0.0.1", 2, None, False), connect)  # type: ignore[arg-type]
    assert not reused and other is not first
    pool.give(key, again)
    pool.idle_seconds = 0
    pool.prune()
    assert first.closed
    third, reused = pool.take(key, connect)  # type: ignore[arg-type]
    assert not reused and third is made[-1]


def test_pool_keeps_no_closed_connection() -> None:
    pool = PeerPool()
    key = ("127.0.0.1", 1, None, False)
    gone = Recorded()
    gone.close()
    pool.give(key, gone)  # type: ignore[arg-type]
    fresh = Recorded()
    got, reused = pool.take(key, lambda: fresh)  # type: ignore[arg-type, return-value]
    assert got is fresh and not reused


def test_pool_is_safe_across_threads() -> None:
    pool = PeerPool()
    key = ("127.0.0.1", 1, None, False)
    taken: list[object] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            client, _ = pool.take(key, Recorded)  # type: ignore[arg-type]
            with lock:
                taken.append(client)
            pool.give(key, client)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 800
    # Never more than IDLE_PER_PEER kept: the rest were closed on the way back.
    assert sum(1 for c in {id(c): c for c in taken}.values() if not c.closed) <= 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [1, 64, 1000, 4096, 4097, 3 * 4096 + 5])
def test_a_chunk_verifies_against_its_entry_one_chunk_or_several(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    entries = [bytes.fromhex(e) for e in manifest_entries(data, 4096)]
    check = ChunkCheck(entries, 4096)
    for i in range(len(entries)):
        chunk = memoryview(bytearray(data[i * 4096 : (i + 1) * 4096]))
        assert check.verify(i, chunk)
        chunk[0] ^= 1
        assert not check.verify(i, chunk)

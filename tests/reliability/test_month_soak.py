"""A month in minutes: two nodes, hundreds of downloads, thousands of served chunks whose
rows are pushed back past the horizon, and peers that come and go. Database and WAL
sizes, each role's RSS and how long p2pctl status / uploads / history take must level
off after the warm-up instead of growing with the work done.

Short here (P2P_SOAK_ROUNDS=8: 200 downloads, 3,200 served chunks, 800 forged peers);
P2P_SOAK_ROUNDS=40 for a longer one by hand. Each round is one day: the rows of the
ledgers and the download history are aged by a day in SQL, so with P2P_HISTORY_DAYS=2
they are rolled up as a month-old node's would. Comparisons are end against middle with generous
factors, never a time against an absolute.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import statistics
import time

import pytest
from fakepeer import announce
from node import wait_until
from nodetools import rss_kib, seed

pytestmark = pytest.mark.reliability

ROUNDS = max(4, int(os.environ.get("P2P_SOAK_ROUNDS", "8")))
FILES_PER_ROUND = 25
CHUNK = 16 * 1024
CHUNKS_PER_FILE = 16
FORGED_PEERS = 100
DAY = 86400
ROLES = ("server", "announcer", "listener", "downloader")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(node, *args: str) -> float:
    """Median wall time of three runs of p2pctl (as a user runs it)."""
    times = []
    for _ in range(3):
        began = time.perf_counter()
        done = node.p2pctl(*args, timeout=120)
        times.append(time.perf_counter() - began)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return statistics.median(times)


def age_by_a_day(node) -> None:
    conn = sqlite3.connect(node.db_path, timeout=30)
    try:
        with conn:
            conn.execute("UPDATE uploads SET at = at - ?", (DAY,))
            conn.execute("UPDATE retired_nodes SET retired_at = retired_at - ?", (DAY,))
            conn.execute("UPDATE bad_peers SET marked_at = marked_at - ?", (DAY,))
            # The download history too, so the horizon rolls it up as it would a month on.
            conn.execute(
                "UPDATE downloads SET requested_at = requested_at - ?,"
                " started_at = started_at - ?, finished_at = finished_at - ?"
                " WHERE finished_at IS NOT NULL",
                (DAY, DAY, DAY),
            )
            conn.execute("UPDATE requests SET requested_at = requested_at - ?", (DAY,))
    finally:
        conn.close()


def sizes(node) -> tuple[int, int]:
    """The database's size as a reader sees it (pages in use, the WAL's newer copies
    included), and the WAL file's size. Not the main file's size: that depends on when
    the last checkpoint ran (1.6 MiB of the middle sample once sat in the WAL, and the
    file looked 200 KiB smaller than the data it held)."""
    conn = sqlite3.connect(f"file:{node.db_path}?mode=ro", uri=True, timeout=30)
    try:
        pages, free, size = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
    finally:
        conn.close()
    wal = node.home / "p2p.db-wal"
    return (pages - free) * size, wal.stat().st_size if wal.exists() else 0


def rss(node) -> dict[str, int]:
    return {role: rss_kib(pid) for role, pid in node.sql("SELECT role, pid FROM heartbeats")}


def test_a_month_of_work_levels_off(make_node) -> None:
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK, P2P_HISTORY_DAYS="2")
    leech = make_node("leech", P2P_HISTORY_DAYS="2", P2P_PEER_TTL="3")
    seeder.start()
    leech.start()
    dead_port = closed_port()
    # Start (after the warm-up round), middle and end: the rounds compared.
    start_round, middle_round, end_round = 1, ROUNDS // 2, ROUNDS - 1
    samples: dict[int, dict[str, float]] = {}
    total_chunks = 0
    for rnd in range(ROUNDS):
        folder = f"r{rnd}"
        for i in range(FILES_PER_ROUND):
            seed(seeder, f"{folder}/f{i}.bin", os.urandom(CHUNKS_PER_FILE * CHUNK - i))
        # Peers that come and go: a hundred new ones a round, silent after one datagram.
        for _ in range(FORGED_PEERS):
            announce(
                leech.udp_port,
                node_id=secrets.token_hex(16),
                username=f"ghost-{rnd}",
                tcp_port=dead_port,
            )
        wait_until(
            lambda f=folder: (
                leech.scalar(
                    "SELECT count(DISTINCT name) FROM holdings WHERE name LIKE ?", (f + "/%",)
                )
                == FILES_PER_ROUND
            ),
            120,
            what=f"round {rnd}'s files known",
        )
        done = leech.p2pctl("download", "--all", f"{folder}/*", timeout=600)
        assert done.returncode == 0, done.stderr
        total_chunks += FILES_PER_ROUND * CHUNKS_PER_FILE
        # Content is not what piles up: last round's files leave both nodes.
        if rnd:
            for path in (seeder.share / f"r{rnd - 1}").iterdir():
                path.unlink()
            for path in (leech.home / "downloads" / f"r{rnd - 1}").iterdir():
                path.unlink()
        wait_until(
            lambda n=total_chunks: (seeder.scalar("SELECT chunks FROM upload_totals") or 0) >= n,
            60,
            what="the uploads recorded",
        )
        age_by_a_day(seeder)
        age_by_a_day(leech)
        # Rows older than two days are rolled up by the server within seconds.
        wait_until(
            lambda: (
                not seeder.scalar(
                    "SELECT count(*) FROM uploads WHERE at < ?", (time.time() - 2 * DAY,)
                )
            ),
            60,
            what="old uploads rolled up",
        )
        if rnd not in (start_round, middle_round, end_round):
            continue
        db, wal = sizes(seeder)
        ldb, lwal = sizes(leech)
        sample: dict[str, float] = {
            "round": rnd,
            "seeder db KiB": db / 1024,
            "seeder WAL KiB": wal / 1024,
            "leech db KiB": ldb / 1024,
            "leech WAL KiB": lwal / 1024,
            "status s": timed(seeder, "status"),
            "uploads s": timed(seeder, "uploads", "--days", "30"),
            "history s": timed(leech, "history", "--limit", "50"),
        }
        for who, node in (("seeder", seeder), ("leech", leech)):
            for role, kib in rss(node).items():
                sample[f"{who} {role} RSS MiB"] = kib / 1024
        samples[rnd] = sample

    # Lifetime totals are exact however much was rolled up.
    assert seeder.scalar("SELECT chunks FROM upload_totals") == seeder.scalar(
        "SELECT (SELECT count(*) FROM uploads) + (SELECT coalesce(sum(chunks), 0) FROM upload_days)"
    )
    assert seeder.scalar("SELECT count(*) FROM uploads") < 2 * FILES_PER_ROUND * CHUNKS_PER_FILE
    start, middle, end = samples[start_round], samples[middle_round], samples[end_round]
    print(f"\nsoak: {ROUNDS} rounds, {ROUNDS * FILES_PER_ROUND} downloads, {total_chunks} chunks")
    print(f"{'':28} {'start':>9} {'middle':>9} {'end':>9}")
    for key in start:
        if key != "round":
            print(f"{key:28} {start[key]:9.2f} {middle[key]:9.2f} {end[key]:9.2f}")
    problems = []
    for key in start:
        if key == "round":
            continue
        # Generous: noise on a loaded 2-core machine must not fail it, linear growth must.
        if key.endswith(" s"):
            limit = 3 * middle[key] + 0.2
        elif "WAL" in key:
            limit = max(4 * middle[key], 4096.0 + 1)  # bounded by journal_size_limit
        else:
            limit = 1.5 * middle[key] + 2.0
        if end[key] > limit:
            problems.append(f"{key}: end {end[key]:.2f} > {limit:.2f} (middle {middle[key]:.2f})")
    assert not problems, "\n".join(problems)

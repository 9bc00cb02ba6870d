"""How long p2pctl takes to answer on a node that knows 1,000 peers, as ratios.

    python bench/cli_timing.py [--reps 5] [--json] [--peers 1000] [--files 20]
                               [--ledger-rows 2000000]

Goals (issue 14): `--help` within 2x and `status` within 3x of the reference. Issue 22:
with 1,000 peers x 20 files (20,000 offers) `files --json` within 1.0 s and `status
--json` within 0.5 s (seconds on a 2-core machine; the ratios are what compares across
machines). It prints the query plan of every listing and status count (EXPLAIN QUERY
PLAN on the seeded database): each table read through an index, one sort at most.
`--ledger-rows N` adds N uploads rows older than the horizon: `status` on that
database against the same node without them, the server's rollup, the file's size
after it, and the query plan of every count status shows (no full-table scans).

A node database is seeded under a temporary folder through p2pshare.db (1,000 peers,
each offering 20 files: one they all have and 19 of their own), with fresh heartbeats,
so p2pctl takes it for a running node. Each command is run REPS times as a user runs
it, a new process each time; the figure is the median. The reference, measured in the same run and
the same way, is Python's own start-up with click and tabulate imported
(`python -c 'import click, tabulate'`), so the ratios hold on a busy machine where
the seconds do not. Nothing is sent anywhere: p2pctl opens no sockets, and the
environment says P2P_BROADCAST=127.255.255.255 all the same.

`run(root)` returns the figures (one dict per command); bench/bench.py may call it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import peers as dbpeers
from p2pshare.db.engine import Database
from p2pshare.db.node import ROLES, record_heartbeat, set_node_id, set_tcp_port
from p2pshare.services import protocol

PEERS = 1000
FILES = 20  # per peer: issue 22's 1,000 peers x 20 files, 20,000 offers
CHUNK = protocol.MIN_CHUNK
REPS = 5
BASELINE = ("python -c 'import click, tabulate'", ["-c", "import click, tabulate"])


def commands(peers: int, files: int) -> list[tuple[str, list[str], int | None]]:
    """(label, p2pctl arguments, how many rows the answer must hold: None for no check)."""
    listed = 1 + (files - 1) * peers  # common.bin once, and every peer's own files
    LIMIT_100 = ["files", "--limit", "100"]
    return [
        ("p2pctl --help", ["--help"], None),
        ("p2pctl status", ["status"], None),
        ("p2pctl status --json", ["status", "--json"], None),
        ("p2pctl uploads --days 30", ["uploads", "--days", "30"], None),
        ("p2pctl history", ["history"], None),
        ("p2pctl peers", ["peers"], None),
        ("p2pctl peers --json", ["peers", "--json"], peers),
        ("p2pctl peers --limit 50", ["peers", "--limit", "50"], None),
        ("p2pctl files", ["files"], None),
        ("p2pctl files --json", ["files", "--json"], listed),
        ("p2pctl files --jsonl", ["files", "--jsonl"], listed),
        ("p2pctl files --limit 100", LIMIT_100, None),
        (
            "p2pctl files --limit 100 --offset 10000",
            ["files", "--limit", "100", "--offset", "10000"],
            None,
        ),
        # One peer's files by glob: filtered in SQL, 19 rows of 20,000 offers.
        ("p2pctl files 'peer0500/*' --json", ["files", "peer0500/*", "--json"], files - 1),
        (
            "p2pctl files f07 --json (substring)",
            ["files", "f07", "--json"],
            peers if files > 8 else None,
        ),
    ]


# Issue 22's goals, in seconds on its 2-core machine: (command, at most).
GOALS = {"p2pctl files --json": 1.0, "p2pctl status --json": 0.5}


# ---------------------------------------------------------------- seeding


def _content(label: str, size: int) -> bytes:
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _offer(name: str, data: bytes) -> tuple[dbcatalogs.Offered, Any, list[str]]:
    """A catalog entry for `data`, its manifest key and its manifest (one hash per chunk)."""
    sha = hashlib.sha256(data).hexdigest()
    count = protocol.chunk_count(len(data), CHUNK)
    entries = [hashlib.sha256(data[i * CHUNK : (i + 1) * CHUNK]).hexdigest() for i in range(count)]
    fields: dict[str, Any] = {
        "name": name,
        "sha256": sha,
        "chunk_size": CHUNK,
        "size": len(data),
        "have": None,
        "chunks_held": count,
    }
    # The manifest root, where this version of the database has one.
    offered_fields = getattr(dbcatalogs.Offered, "_fields", None) or [
        f.name for f in dataclasses.fields(dbcatalogs.Offered)
    ]
    if "root" in offered_fields:
        fields["root"] = protocol.manifest_root(entries)  # type: ignore[attr-defined]
    offered = dbcatalogs.Offered(**fields)
    key = getattr(offered, "key", (sha, CHUNK))
    return offered, key, entries


def beat(db_path: Path) -> None:
    """Every role's heartbeat, as a running node writes it (p2pctl checks them)."""
    database = Database.open(db_path)
    try:
        now = time.time()
        with database.write() as s:
            for i, role in enumerate(ROLES):
                record_heartbeat(s, role, pid=40000 + i, started_at=now - 60, now=now)
    finally:
        database.close()


def seed(home: Path, peers: int = PEERS, files: int = FILES) -> None:
    """A node database that has heard `peers` peers, each offering `files` files: one
    they all have and the rest their own (`files` x `peers` offers in all)."""
    home.mkdir(parents=True, exist_ok=True)
    database = Database.open(home / "p2p.db")
    common = _content("common", 3 * CHUNK + 11)
    common_offer = _offer("common.bin", common)
    now = time.time()
    try:
        with database.write() as s:
            set_tcp_port(s, 45678, now=now)
            set_node_id(s, "0" * 32, now=now)
        for index in range(peers):
            offers = [common_offer]
            for k in range(files - 1):
                # Mostly one chunk, every third file two: sizes as varied as a real share's.
                size = 1000 + index + 31 * k if k % 3 else CHUNK + 1 + 7 * index + k
                offers.append(
                    _offer(f"peer{index:04d}/f{k:02d}.bin", _content(f"{index}-{k}", size))
                )
            heard = dbpeers.Heard(
                f"{index + 1:032x}", f"sim-{index:04d}", "127.0.0.1", 20000 + index, 1, 1
            )
            with database.write() as s:
                peer_id = dbpeers.record_announce(s, heard, now=now).peer_id
                assert peer_id is not None
                kept = dbcatalogs.apply_catalog(
                    s,
                    peer_id,
                    1,
                    [o for o, _, _ in offers],
                    {key: entries for _, key, entries in offers},
                    now=now,
                )
                assert kept == files, f"peer {index}: {kept} of {files} catalog entries kept"
    finally:
        database.close()
    beat(home / "p2p.db")


# ---------------------------------------------------------------- timing


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env.pop("XDG_DATA_HOME", None)
    env.update(P2P_HOME=str(home), P2P_BROADCAST="127.255.255.255", P2P_USERNAME="bench")
    return env


def _time_one(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - started
    if done.returncode != 0 or "Traceback" in done.stderr:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return took, done.stdout


def run(
    root: Path, reps: int = REPS, peers: int = PEERS, files: int = FILES
) -> list[dict[str, Any]]:
    """Seed a node that knows `peers` peers with `files` files each under `root` and time
    each command `reps` times (medians).

    Returns one dict per command: command, median_s, runs_s, baseline_s, ratio
    (median over the baseline's median), reps. The baseline's own row comes first.
    """
    home = root / "home"
    seed(home, peers, files)
    env = _env(home)
    p2pctl = [sys.executable, "-m", "p2pshare.cli.main"]
    todo = commands(peers, files)
    runs: dict[str, list[float]] = {BASELINE[0]: []} | {label: [] for label, _, _ in todo}
    # Interleaved, so a burst of load elsewhere costs every command alike. The first
    # round warms the caches and is not counted.
    for rep in range(reps + 1):
        took, _ = _time_one([sys.executable, *BASELINE[1]], env, root)
        if rep:
            runs[BASELINE[0]].append(took)
        for label, args, rows in todo:
            beat(home / "p2p.db")  # fresh heartbeats, outside the timing
            took, out = _time_one([*p2pctl, *args], env, root)
            if rows is not None and count_rows(out) != rows:
                raise RuntimeError(f"{label}: {count_rows(out)} rows, expected {rows}")
            if rep:
                runs[label].append(took)
    baseline = statistics.median(runs[BASELINE[0]])
    return [
        {
            "command": label,
            "median_s": round(statistics.median(times), 4),
            "runs_s": [round(t, 4) for t in times],
            "baseline_s": round(baseline, 4),
            "ratio": round(statistics.median(times) / baseline, 2),
            "reps": reps,
            "peers": peers,
            "files_per_peer": files,
            "goal_s": GOALS.get(label),
        }
        for label, times in runs.items()
    ]


def query_plans(db_path: Path) -> dict[str, str]:
    """EXPLAIN QUERY PLAN of every query the listings and `status` make, on this database:
    each table is read through an index, and only what a page shows is sorted."""
    from sqlalchemy import text

    from p2pshare.db import listing
    from p2pshare.db.reports import COUNT_QUERIES

    page = listing.page_params(None, 100, 0)
    queries: dict[str, tuple[Any, dict[str, Any]]] = {
        "files (offers)": listing.files_queries(None)["held"],
        "files (shared here)": listing.files_queries(None)["here"],
        "files PATTERN": listing.files_queries("peer0500/*")["held"],
        "files count": listing.files_queries(None)["count"],
        "peers (a page)": (listing.PEERS_SQL, page),
        **{f"status: {name}": (q, {}) for name, q in COUNT_QUERIES.items()},
    }
    database = Database.open_existing(db_path)
    try:
        with database.read() as conn:
            return {
                name: " | ".join(
                    r[3]
                    for r in conn.execute(
                        text(f"EXPLAIN QUERY PLAN {getattr(sql, 'text', sql)}"), params
                    )
                )
                for name, (sql, params) in queries.items()
            }
    finally:
        database.close()


def count_rows(out: str) -> int:
    """Rows of a JSON list, or of JSON lines (`--jsonl`)."""
    if out.lstrip().startswith("["):
        return len(json.loads(out))
    return sum(1 for line in out.splitlines() if json.loads(line))


def _status_median(home: Path, reps: int) -> float:
    env = _env(home)
    times = []
    for _ in range(reps):
        beat(home / "p2p.db")
        times.append(_time_one([sys.executable, "-m", "p2pshare.cli.main", "status"], env, home)[0])
    return statistics.median(times)


def run_ledger(root: Path, rows: int, reps: int = REPS) -> dict[str, Any]:
    """Issue 14's case: `rows` uploads rows older than the horizon in a 500-peer node.

    Figures, each against a reference from the same run: `status` on that database over
    `status` on the same node without them (before and after the rollup); the server's
    rollup time over the time it took to insert the rows; the file size after the
    rollup over before; and the query plan of every count `status` shows.
    """
    import sqlite3

    from p2pshare.db.reports import COUNT_QUERIES
    from p2pshare.services.server.housekeeping import Housekeeping

    home = root / "ledger"
    seed(home)
    fresh = _status_median(home, reps)
    db_path = home / "p2p.db"
    conn = sqlite3.connect(db_path)
    old = time.time() - 90 * 86400
    began = time.perf_counter()
    batch = 100_000
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        conn.executemany(
            "INSERT INTO uploads (at, peer_address, sha256, name, chunk_index, chunk_offset,"
            " bytes, seconds) VALUES (?, ?, ?, ?, ?, 0, 262144, 0.002)",
            (
                (old + (start + i) * 2.0, f"127.0.0.{2 + i % 50}", "ab" * 32, f"f{i % 20}.bin", i)
                for i in range(n)
            ),
        )
        conn.commit()
    conn.execute(
        "UPDATE upload_totals SET chunks = chunks + ?, bytes = bytes + ? WHERE id = 1",
        (rows, rows * 262144),
    )
    conn.commit()
    inserted = time.perf_counter() - began
    plans = {
        name: " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {q}"))
        for name, q in COUNT_QUERIES.items()
    }
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size_before = db_path.stat().st_size
    loaded = _status_median(home, reps)
    import threading

    database = Database.open(db_path)
    began = time.perf_counter()
    moved = Housekeeping(database, 30, threading.Event()).step(time.time())
    rolled = time.perf_counter() - began
    database.close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size_after = db_path.stat().st_size
    after = _status_median(home, reps)
    return {
        "rows": rows,
        "moved": moved,
        "status_fresh_s": round(fresh, 4),
        "status_with_rows_ratio": round(loaded / fresh, 2),
        "status_after_rollup_ratio": round(after / fresh, 2),
        "rollup_s": round(rolled, 2),
        "rollup_over_insert_ratio": round(rolled / inserted, 2),
        "db_mb_before": round(size_before / 1e6, 1),
        "size_after_over_before": round(size_after / size_before, 3),
        "plans": plans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=REPS, help="runs per command (median)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--ledger-rows",
        type=int,
        default=0,
        help="also: status and the rollup on a node with this many old uploads rows (2000000)",
    )
    parser.add_argument("--peers", type=int, default=PEERS, help="peers the node knows")
    parser.add_argument("--files", type=int, default=FILES, help="files each peer offers")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="p2pcli"))
    try:
        figures = run(root, args.reps, args.peers, args.files)
        plans = query_plans(root / "home" / "p2p.db")
        ledger = run_ledger(root, args.ledger_rows, args.reps) if args.ledger_rows else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if ledger is not None:
        plans = ledger.pop("plans")
        print(tabulate(sorted(ledger.items()), headers=["ledger", "figure"]))
        print(tabulate(sorted(plans.items()), headers=["status count", "query plan"]))
        print()
    if args.json:
        print(json.dumps({"commands": figures, "ledger": ledger, "plans": plans}, indent=2))
        return
    print(tabulate(sorted(plans.items()), headers=["query", "query plan"]))
    print()
    print(
        tabulate(
            [
                (
                    f["command"],
                    f"{f['median_s']:.3f}",
                    f"{f['ratio']:.2f}",
                    "" if f["goal_s"] is None else goal_words(f["median_s"], f["goal_s"]),
                )
                for f in figures
            ],
            headers=[
                f"{args.peers} peers x {args.files} files",
                "median s",
                "x python+click+tabulate",
                "goal (issue 22)",
            ],
        )
    )


def goal_words(seconds: float, goal: float) -> str:
    return f"<= {goal} s: {'met' if seconds <= goal else 'MISSED'}"


if __name__ == "__main__":
    main()

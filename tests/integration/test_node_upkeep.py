"""A node that runs for months: the WAL shrinks back after a long reader, old uploads are
rolled up by the server, the downloader clears orphan temp files at start, and p2pctl
start / stop / restart run the node under supervisord."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from node import Node, pid_running, wait_until
from test_transfer import seed, wait_known

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
CHUNK = 256 * 1024
DAY = 86400
# 256 MiB is the figure; a smaller file shows the same (P2P_WAL_TEST_MIB=256).
WAL_TEST_MIB = int(os.environ.get("P2P_WAL_TEST_MIB", "32"))


def wal_size(node: Node) -> int:
    try:
        return (node.home / "p2p.db-wal").stat().st_size
    except FileNotFoundError:
        return 0


def test_wal_grows_under_a_long_reader_and_shrinks_back(make_node: Callable[..., Node]) -> None:
    seeder, leech = make_node("seed", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    seeder.start()
    leech.start()
    data = os.urandom(WAL_TEST_MIB * MIB)
    seed(seeder, "big.bin", data)
    wait_known(leech, "big.bin")
    # A quiet node keeps its WAL near nothing (TRUNCATE checkpoints).
    wait_until(lambda: wal_size(leech) < 256 * 1024, 60, what="the quiet leecher's WAL small")

    reader = sqlite3.connect(leech.db_path)  # a sqlite3 shell left open in a terminal
    reader.isolation_level = None
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM downloads").fetchone()
    try:
        before = wal_size(leech)
        done = leech.p2pctl("download", "big.bin", timeout=600)
        assert done.returncode == 0, done.stderr
        assert (leech.home / "downloads" / "big.bin").read_bytes() == data
        # The finished file is indexed and shared: more writes the reader pins.
        wait_until(
            lambda: leech.scalar("SELECT count(*) FROM local_files WHERE name = 'big.bin'"),
            120,
            what="the download indexed",
        )
        grown = wait_until(
            lambda: (w := wal_size(leech)) > before + 32 * 1024 and w,
            60,
            what="the WAL to grow while the reader holds its snapshot",
        )
    finally:
        reader.execute("COMMIT")
        reader.close()
    shrunk = wait_until(
        lambda: (w := wal_size(leech)) < min(grown // 2, 256 * 1024) and (w or -1),
        60,
        what="the WAL to shrink back once the reader left",
    )
    print(f"WAL before {before} B, with the reader {grown} B, after {max(shrunk, 0)} B")
    status = leech.p2pctl_json("status")
    assert status["wal_bytes"] < grown and status["database_bytes"] > 0


def test_server_rolls_up_uploads_older_than_the_horizon(make_node: Callable[..., Node]) -> None:
    seeder, leech = make_node("seed", P2P_CHUNK_SIZE=CHUNK, P2P_HISTORY_DAYS="3"), make_node("l")
    seeder.start()
    leech.start()
    data = os.urandom(20 * CHUNK)
    seed(seeder, "f.bin", data)
    wait_known(leech, "f.bin")
    assert leech.p2pctl("download", "f.bin", timeout=120).returncode == 0
    chunks = wait_until(
        lambda: (
            seeder.scalar("SELECT count(*) FROM uploads") >= 20
            and seeder.scalar("SELECT count(*) FROM uploads")
        ),
        30,
        what="uploads recorded",
    )
    served = seeder.scalar("SELECT sum(bytes) FROM uploads")
    seeder.stop(("server",))
    conn = sqlite3.connect(seeder.db_path)
    conn.execute("UPDATE uploads SET at = at - 10 * ?", (DAY,))  # ten days ago
    conn.commit()
    conn.close()
    seeder.start(("server",))
    wait_until(
        lambda: seeder.scalar("SELECT count(*) FROM uploads") == 0,
        60,
        what="the old uploads rolled up",
    )
    assert seeder.sql("SELECT sum(chunks), sum(bytes) FROM upload_days") == [(chunks, served)]
    counts = seeder.p2pctl_json("status")["counts"]
    assert (counts["uploads"], counts["uploaded_bytes"]) == (chunks, served)
    totals = seeder.p2pctl_json("uploads", "--days", "30")
    assert sum(r["chunks"] for r in totals) == chunks
    assert "rolled up" in seeder.log("server")


def test_downloader_removes_orphan_temp_files_at_start_in_one_line(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("tmp")
    temp = node.home / "temp"
    temp.mkdir()
    orphans = [temp / f"{n}-x.part" for n in (7, 8, 9)]
    for path in orphans:
        path.write_bytes(b"left by a crash")
    keep = temp / "notes.txt"  # not a temp file of ours
    keep.write_text("mine")
    node.start(("downloader",))
    wait_until(lambda: not any(p.exists() for p in orphans), 30, what="orphans removed")
    lines = [x for x in node.log("downloader").splitlines() if "temp file" in x]
    assert len(lines) == 1 and "removed 3 temp files" in lines[0], lines
    assert keep.exists()


def supervisord_pid(home: Path) -> int | None:
    try:
        return int((home / "supervisord.pid").read_text())
    except (OSError, ValueError):
        return None


def test_p2pctl_start_stop_restart(make_node: Callable[..., Node]) -> None:
    node = make_node("ctl")
    # No P2P_HOME: the home is resolved as every role resolves it, under XDG_DATA_HOME.
    home = node.home / "xdg" / "p2pshare"
    node.env.pop("P2P_HOME")
    node.env["XDG_DATA_HOME"] = str(node.home / "xdg")
    try:
        started = node.p2pctl("start", timeout=120)
        assert started.returncode == 0, started.stderr + started.stdout
        assert "started" in started.stdout and "Traceback" not in started.stderr
        for folder in ("logs", "shared", "downloads", "temp"):
            assert (home / folder).is_dir(), folder
        pid = supervisord_pid(home)
        assert pid is not None and pid_running(pid)
        status = node.p2pctl("status", "--json")
        assert status.returncode == 0, status.stderr
        again = node.p2pctl("start", timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout
        roles_before = {
            r: p
            for r, p in sqlite3.connect(home / "p2p.db").execute("SELECT role, pid FROM heartbeats")
        }
        # Every program of supervisord.conf: the four roles, p2p-web and p2p-torrent.
        assert set(roles_before) == {
            "server", "announcer", "listener", "downloader", "web", "torrent"
        }  # fmt: skip

        restarted = node.p2pctl("restart", timeout=180)
        assert restarted.returncode == 0, restarted.stderr
        new_pid = supervisord_pid(home)
        assert new_pid is not None and new_pid != pid and not pid_running(pid)
        assert all(not pid_running(p) for p in roles_before.values())
        assert (home / "logs" / "server.log").stat().st_size > 0

        stopped = node.p2pctl("stop", timeout=60)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not pid_running(new_pid)
        assert sqlite3.connect(home / "p2p.db").execute(
            "SELECT count(*) FROM heartbeats"
        ).fetchone() == (0,)  # every role exited cleanly
        twice = node.p2pctl("stop", timeout=60)
        assert twice.returncode == 3 and twice.stderr.startswith("error: ")
        assert "not running" in twice.stderr and "Traceback" not in twice.stderr
    finally:
        left = supervisord_pid(home)
        if left is not None and pid_running(left):  # only the supervisord this test started
            os.kill(left, signal.SIGTERM)
            wait_until(lambda: not pid_running(left), 30, what="supervisord stopped")

"""One node under supervisord, as a user runs it; and a server that cannot get its port."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROLES = ("server", "announcer", "listener", "downloader")
# supervisord runs the web program and p2p-torrent beside the four roles.
PROGRAMS = (*ROLES, "web", "torrent")
TABLES = ("peers", "files", "chunks", "holdings", "downloads", "uploads")


def shared_files(node):
    return {f["name"]: f for f in node.p2pctl_json("files") if f["here"]}


def test_supervised_node_runs_indexes_and_stops_cleanly(make_node, wait_until):
    node = make_node("sup")
    node.start_supervised()

    # supervisorctl sees the four programs running.
    def all_running():
        done = node.supervisorctl("status")
        states = dict(re.findall(r"^p2p:(\w+)\s+(\w+)", done.stdout, re.M))
        return states if states == {r: "RUNNING" for r in PROGRAMS} else None

    wait_until(all_running, 60, interval=0.3, what="supervisorctl to show 6 programs RUNNING")

    # p2pctl status --json: every role alive, the real TCP port and our UDP port.
    wait_until(
        lambda: (
            node.scalar("SELECT count(*) FROM heartbeats WHERE role IN ('web', 'torrent')") == 2
        ),
        30,
        what="p2p-web and p2p-torrent to beat",
    )
    status = node.p2pctl_json("status")
    # The four roles, and p2p-web and p2p-torrent, which status lists when they run.
    assert {r: v["alive"] for r, v in status["roles"].items()} == dict.fromkeys(
        (*ROLES, "web", "torrent"), True
    )
    assert status["udp_port"] == node.udp_port
    assert status["broadcast"] == ["127.255.255.255"]
    assert status["bind"] == "127.0.0.1"
    assert isinstance(status["tcp_port"], int) and status["tcp_port"] > 0
    pids = {r: v["pid"] for r, v in status["roles"].items()}

    # Files dropped in the share folder appear with the right SHA-256, sub-folders included.
    contents = {
        "hello.txt": b"hello, world\n",
        "empty.bin": b"",
        "sub/dir/big.bin": os.urandom(700 * 1024),  # several chunks
    }
    for name, data in contents.items():
        path = node.share / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    files = wait_until(
        lambda: (f := shared_files(node)) and set(f) == set(expected) and f,
        60,
        interval=0.2,
        what="the shared files to be indexed",
    )
    assert {name: f["sha256"] for name, f in files.items()} == expected
    assert {name: f["size"] for name, f in files.items()} == {
        name: len(data) for name, data in contents.items()
    }

    # A removed file disappears.
    (node.share / "hello.txt").unlink()
    wait_until(
        lambda: "hello.txt" not in shared_files(node),
        60,
        interval=0.2,
        what="hello.txt to leave the catalog",
    )
    assert set(shared_files(node)) == set(expected) - {"hello.txt"}

    # The documented tables are there for sqlite3 users.
    if shutil.which("sqlite3"):
        done = subprocess.run(
            ["sqlite3", "-readonly", str(node.db_path), ".tables"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        tables = set(done.stdout.split())
    else:
        tables = {r[0] for r in node.sql("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(TABLES) <= tables

    # SIGTERM to supervisord: every role stops with exit 0, supervisord exits 0.
    node.stop()
    assert node.supervisord_exit == 0
    for role, pid in pids.items():
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"{role} ({pid}) survived"
    supervisord_log = (node.home / "logs" / "supervisord.log").read_text()
    stopped = dict(re.findall(r"stopped: (\w+) \((.*?)\)", supervisord_log))
    assert stopped == {r: "exit status 0" for r in PROGRAMS}, supervisord_log[-3000:]
    # Each role cleared its own heartbeat on the way out; the server its port.
    assert node.sql("SELECT role FROM heartbeats") == []
    assert node.tcp_port() is None
    # A command needing the roles says so in one sentence, with a non-zero exit and no
    # traceback; a report of what happened shows the database, with a one-line note.
    done = node.p2pctl("download", "hello.txt")
    assert done.returncode == 3
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "not running" in done.stderr and "Traceback" not in done.stderr
    report = node.p2pctl("files")
    assert report.returncode == 0 and "big.bin" in report.stdout
    assert report.stderr.startswith("note: ") and len(report.stderr.strip().splitlines()) == 1


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_server_with_taken_tcp_port_says_so_in_one_line(make_node):
    node = make_node("busy")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        node.env["P2P_TCP_PORT"] = str(port)
        done = subprocess.run(
            [sys.executable, "-m", "p2pshare.services.server"],
            env=node.env,
            cwd=node.home,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "P2P_TCP_PORT" in lines[0] and str(port) in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    # It left no heartbeat behind that would make p2pctl think it runs.
    assert node.sql("SELECT role FROM heartbeats") == []

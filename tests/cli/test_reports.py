"""p2pctl's reports on a seeded temp database, run as the user runs them: a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import downloads as dbdownloads
from p2pshare.db import index as dbindex
from p2pshare.db import jobs as dbjobs
from p2pshare.db import peers as dbpeers
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.db.node import ROLES, record_heartbeat, set_node_id, set_tcp_port
from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries

CS = 16384
OWN = "0" * 32
NODE_A = "a" * 32
REPORTS = ["status", "peers", "files", "history", "uploads"]
PIDS = {role: 4000 + i for i, role in enumerate(ROLES)}

REPORT = random.Random(1).randbytes(5000)
MOVIE = random.Random(2).randbytes(3 * CS + 5)
TODO = random.Random(3).randbytes(CS + 1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashed(data: bytes) -> dbindex.HashedFile:
    """What the indexer records: the chained manifest and its root."""
    entries = manifest_entries(data, CS)
    sizes = [len(data[i : i + CS]) for i in range(0, len(data), CS)]
    return dbindex.HashedFile(
        len(data), 1, sha(data), CS, entries, sizes, protocol.manifest_root(entries)
    )


def offered(name: str, data: bytes, have: bytes | None = None) -> dbcatalogs.Offered:
    count = protocol.chunk_count(len(data), CS)
    held = count if have is None else protocol.bitfield_count(have)
    return dbcatalogs.Offered(name, sha(data), CS, hashed(data).root, len(data), have, held)


# ---------------------------------------------------------------- seeding


def beat(home: Path, at: float) -> None:
    """Every role's heartbeat, as a running node writes it."""
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            for role, pid in PIDS.items():
                record_heartbeat(s, role, pid=pid, started_at=at - 60, now=at, detail=f"{role} ok")
    finally:
        database.close()


def seed(home: Path) -> None:
    """A node that shares report.pdf, heard alice, downloaded her movie and served a chunk."""
    now = time.time()
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            set_tcp_port(s, 45678, now=now)
            set_node_id(s, OWN, now=now)
            dbindex.record_local_file(s, "share", "report.pdf", hashed(REPORT), now=now)
            peer_id = dbpeers.record_announce(
                s, dbpeers.Heard(NODE_A, "alice", "127.0.0.2", 5001, 1, 1), now=now
            ).peer_id
            assert peer_id is not None
            partial = protocol.bitfield_empty(2)
            protocol.bitfield_set(partial, 0)
            kept = dbcatalogs.apply_catalog(
                s,
                peer_id,
                1,
                [
                    offered("holiday/movie.mkv", MOVIE),
                    offered("notes/todo.txt", TODO, bytes(partial)),
                ],
                {
                    hashed(MOVIE).key: list(hashed(MOVIE).chunk_hashes),
                    hashed(TODO).key: list(hashed(TODO).chunk_hashes),
                },
                now=now,
            )
            assert kept == 2
        with database.write() as s:
            movie = dbdownloads.resolve_name(s, "movie.mkv")
            did, _ = dbdownloads.queue_download(s, movie, now=now - 100)
            dbjobs.start_job(s, did, str(home / "temp" / "movie.part"), now=now - 90)
            dbjobs.record_progress(
                s,
                did,
                dbjobs.Progress(
                    have=b"\xf0",
                    bytes_done=len(MOVIE),
                    new_bytes_received=len(MOVIE),
                    new_bad_chunks=0,
                    tallies=[dbjobs.SourceTally("127.0.0.2", 5001, "alice", 4, len(MOVIE), 0)],
                    new_bad_peers=[],
                    status="active",
                    reason=None,
                ),
                now=now - 80,
            )
            dbjobs.finish_download(
                s,
                did,
                status="done",
                reason=None,
                now=now - 80,
                published=("holiday/movie.mkv", hashed(MOVIE)),
            )
            todo = dbdownloads.resolve_name(s, "todo")
            tid, _ = dbdownloads.queue_download(s, todo, now=now - 50)
            dbjobs.finish_download(
                s, tid, status="failed", reason="no peer holds chunk 1", now=now - 40
            )
            dbserving.record_uploads(
                s,
                [
                    dbserving.ServedChunk(
                        now - 30, "127.0.0.3", sha(REPORT), "report.pdf", 0, 0, len(REPORT), 0.01
                    )
                ],
            )
    finally:
        database.close()
    beat(home, now)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("seeded")
    seed(home)
    return home


@pytest.fixture
def empty_node(tmp_path: Path) -> Path:
    """A running node that has heard, shared and done nothing yet."""
    home = tmp_path / "home"
    beat(home, time.time())
    return home


# ---------------------------------------------------------------- running p2pctl


def ctl_env(home: Path, **extra: str | None) -> dict[str, str]:
    """The shell p2pctl runs in; a variable given as None is left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env.pop("XDG_DATA_HOME", None)
    env.update(P2P_HOME=str(home), P2P_BROADCAST="127.255.255.255", P2P_USERNAME="tester")
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def p2pctl(
    home: Path, *args: str, alive: bool = True, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """Run p2pctl from an unrelated folder; with `alive`, the node's roles beat just before."""
    if alive:
        beat(home, time.time())
    return subprocess.run(
        [sys.executable, "-m", "p2pshare.cli.main", *args],
        env=ctl_env(home, **env),
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def row_of(output: str, name: str) -> str:
    rows = [line for line in output.splitlines() if line.startswith(name + " ")]
    assert len(rows) == 1, output
    return rows[0]


# ---------------------------------------------------------------- the reports


def test_status(seeded: Path) -> None:
    out = ok(p2pctl(seeded, "status"))
    lines = out.splitlines()
    assert lines[0].split() == ["node", "tester", f"({seeded})"]
    assert "tcp 45678" in lines[1] and "udp 47474" in lines[1]
    assert "127.255.255.255" in lines[2]
    # No role recorded its settings (a node from before schema v3): the shell's, said once.
    [fallback] = [line for line in lines if line.startswith("settings ")]
    assert "this shell's own" in fallback
    assert not [line for line in lines if line.startswith("note ")]
    assert "shared    2 files" in out  # report.pdf and the finished download
    assert "network   1 peer, 2 files" in out
    assert "downloads 0 running, 1 done" in out
    assert "uploads   1 chunk," in out
    for role, pid in PIDS.items():
        assert row_of(out, role).split()[:3] == [role, "alive", str(pid)]


def test_status_json(seeded: Path) -> None:
    info = as_json(p2pctl(seeded, "status", "--json"))
    assert (info["settings_from"], info["recorded"], info["shell_differs"]) == ("shell", {}, [])
    assert info["username"] == "tester"
    assert info["home"] == str(seeded)
    assert info["tcp_port"] == 45678
    assert info["udp_port"] == 47474
    assert info["broadcast"] == ["127.255.255.255"]
    assert info["node_id"] == OWN
    assert isinstance(info["catalog_version"], int)
    assert {role: (r["alive"], r["pid"]) for role, r in info["roles"].items()} == {
        role: (True, pid) for role, pid in PIDS.items()
    }
    counts = info["counts"]
    assert counts["shared_files"] == 2
    assert counts["shared_bytes"] == len(REPORT) + len(MOVIE)
    assert (counts["peers"], counts["network_files"]) == (1, 2)
    assert (counts["downloads_running"], counts["downloads_done"]) == (0, 1)
    assert (counts["uploads"], counts["uploaded_bytes"]) == (1, len(REPORT))


def test_peers(seeded: Path) -> None:
    out = ok(p2pctl(seeded, "peers"))
    # A peer that announced no certificate (a 0.1 node) has no fingerprint to show.
    assert row_of(out, "alice").split()[:6] == ["alice", "127.0.0.2", "5001", "-", "clear", "2"]
    [peer] = as_json(p2pctl(seeded, "peers", "--json"))
    assert peer["username"] == "alice"
    assert (peer["address"], peer["tcp_port"]) == ("127.0.0.2", 5001)
    assert (peer["files"], peer["bad_files"]) == (2, 0)
    assert peer["node_id"] == NODE_A
    assert (peer["fingerprint"], peer["tls"], peer["link"]) == (None, False, "clear")
    assert isinstance(peer["last_seen"], float)


def test_files(seeded: Path) -> None:
    out = ok(p2pctl(seeded, "files"))
    movie = row_of(out, "holiday/movie.mkv")
    assert sha(MOVIE)[:12] in movie and "yes" in movie and "1 (1 whole)" in movie
    todo = row_of(out, "notes/todo.txt")
    assert sha(TODO)[:12] in todo and "yes" not in todo and "1 (0 whole)" in todo
    report = row_of(out, "report.pdf")
    assert sha(REPORT)[:12] in report and "yes" in report and report.rstrip().endswith("0")


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("movie", ["holiday/movie.mkv"]),
        ("MOVIE", ["holiday/movie.mkv"]),
        ("*.pdf", ["report.pdf"]),
        ("*/*", ["holiday/movie.mkv", "notes/todo.txt"]),
    ],
)
def test_files_pattern(seeded: Path, pattern: str, names: list[str]) -> None:
    rows = as_json(p2pctl(seeded, "files", pattern, "--json"))
    assert [r["name"] for r in rows] == names


def test_files_pattern_without_match_says_so(seeded: Path) -> None:
    assert ok(p2pctl(seeded, "files", "zzz")).strip() == "No files match 'zzz'."


def test_files_json(seeded: Path) -> None:
    rows = {r["name"]: r for r in as_json(p2pctl(seeded, "files", "--json"))}
    assert set(rows) == {"holiday/movie.mkv", "notes/todo.txt", "report.pdf"}
    movie = rows["holiday/movie.mkv"]
    assert movie == {
        "name": "holiday/movie.mkv",
        "size": len(MOVIE),
        "chunks": 4,
        "sha256": sha(MOVIE),
        "here": True,
        "peers": 1,
        "complete_peers": 1,
    }
    assert (rows["notes/todo.txt"]["here"], rows["notes/todo.txt"]["complete_peers"]) == (False, 0)
    assert (rows["report.pdf"]["here"], rows["report.pdf"]["peers"]) == (True, 0)


def test_history(seeded: Path) -> None:
    out = ok(p2pctl(seeded, "history"))
    movie = [line for line in out.splitlines() if "holiday/movie.mkv" in line]
    assert len(movie) == 1
    assert " done " in movie[0] and " alice " in movie[0]
    assert "failed: no peer holds chunk 1" in out
    rows = as_json(p2pctl(seeded, "history", "--json"))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("notes/todo.txt", "failed"),
        ("holiday/movie.mkv", "done"),
    ]
    done = rows[1]
    assert (done["peers"], done["peer_names"]) == (["127.0.0.2:5001"], ["alice"])
    assert (done["sha256"], done["size"], done["bytes_done"]) == (
        sha(MOVIE),
        len(MOVIE),
        len(MOVIE),
    )
    assert done["saved_as"] == "holiday/movie.mkv"
    assert rows[0]["reason"] == "no peer holds chunk 1"
    assert [r["name"] for r in as_json(p2pctl(seeded, "history", "--limit", "1", "--json"))] == [
        "notes/todo.txt"
    ]


def test_uploads(seeded: Path) -> None:
    out = ok(p2pctl(seeded, "uploads"))
    assert "127.0.0.3" in out and "report.pdf" in out
    [up] = as_json(p2pctl(seeded, "uploads", "--json"))
    assert (up["peer_address"], up["name"], up["chunk_index"]) == ("127.0.0.3", "report.pdf", 0)
    assert (up["bytes"], up["sha256"]) == (len(REPORT), sha(REPORT))


# ---------------------------------------------------------------- empty tables


@pytest.mark.parametrize(
    ("report", "sentence"),
    [
        ("peers", "No peers heard yet"),
        ("files", "No files yet"),
        ("history", "No downloads yet"),
        ("uploads", "Nothing uploaded yet."),
    ],
)
def test_empty_table_prints_a_sentence(empty_node: Path, report: str, sentence: str) -> None:
    out = ok(p2pctl(empty_node, report))
    assert len(out.strip().splitlines()) == 1
    assert out.startswith(sentence)


def test_empty_tables_as_json_are_empty_lists(empty_node: Path) -> None:
    for report in ("peers", "files", "history", "uploads"):
        assert as_json(p2pctl(empty_node, report, "--json")) == []


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize("report", REPORTS)
def test_no_database_is_one_error_line(tmp_path: Path, report: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = p2pctl(home, report, alive=False)
    line = one_error_line(result)
    assert "no node database" in line
    assert result.stdout == ""
    assert list(home.iterdir()) == []  # a report never creates the database


def test_status_of_a_stopped_node_is_one_error_line(tmp_path: Path) -> None:
    home = tmp_path / "stale"
    seed(home)
    beat(home, time.time() - 3600)
    result = p2pctl(home, "status", alive=False)
    assert "running" in one_error_line(result)
    # status still shows the node, with every role down
    assert [row_of(result.stdout, role).split()[1] for role in ROLES] == ["DOWN"] * 4


@pytest.mark.parametrize(
    ("report", "shows"),
    [
        ("peers", "alice"),
        ("files", "report.pdf"),
        ("history", "movie.mkv"),
        ("uploads", "127.0.0.3"),
    ],
)
def test_reports_of_a_stopped_node_show_its_database_with_one_note(
    tmp_path: Path, report: str, shows: str
) -> None:
    """What happened is all in the database: a stopped node's reports show it, and say
    in one line on stderr that the node is not running."""
    home = tmp_path / "stale"
    seed(home)
    beat(home, time.time() - 3600)
    result = p2pctl(home, report, alive=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "not running" in result.stderr
    assert "Traceback" not in result.stderr
    assert shows in result.stdout
    as_json_result = p2pctl(home, report, "--json", alive=False)
    assert as_json_result.returncode == 0 and json.loads(as_json_result.stdout)


@pytest.mark.parametrize("report", REPORTS)
def test_bad_setting_is_one_error_line_naming_it(seeded: Path, report: str) -> None:
    line = one_error_line(p2pctl(seeded, report, P2P_TCP_PORT="70000"))
    assert "P2P_TCP_PORT" in line

"""p2pctl imports what a command uses: no SQLAlchemy for --help, and no ORM for status (a
command that reads the database imports SQLAlchemy Core, the one way to it); the command
list of --help matches each command's own help; uploads --days; status shows sizes."""

from __future__ import annotations

import importlib
import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import click
import pytest
from test_reports import beat, ctl_env, ok, p2pctl, seed

from p2pshare.cli.main import COMMANDS, cli
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database

DAY = 86400
# Prints which heavy modules a p2pctl run imported, after running it in-process.
PROBE = """
import sys
from p2pshare.cli import main
sys.argv = ["p2pctl", *sys.argv[1:]]
try:
    main.main()
except SystemExit:
    pass
print("IMPORTED", sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy")[:3])
print("ORM", sorted(m for m in sys.modules if m.startswith("sqlalchemy.orm"))[:3])
"""


def imported(home: Path, *args: str, what: str = "IMPORTED") -> str:
    beat(home, time.time())
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=ctl_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout.rsplit(what, 1)[1].splitlines()[0].strip()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("lazy") / "home"
    seed(home)
    return home


def test_help_imports_no_sqlalchemy(node: Path) -> None:
    assert imported(node, "--help") == "[]"


@pytest.mark.parametrize("args", [["status"], ["status", "--json"]])
def test_status_imports_no_orm(node: Path, args: list[str]) -> None:
    assert imported(node, *args, what="ORM") == "[]"


def test_a_report_does_import_what_it_uses(node: Path) -> None:
    assert imported(node, "history") != "[]"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_list_is_each_commands_own_help(name: str) -> None:
    module, attr, line = COMMANDS[name]
    command = getattr(importlib.import_module(module), attr)
    assert isinstance(command, click.Command)
    assert command.name == name
    assert (command.help or "").strip().splitlines()[0] == line
    assert cli.get_command(click.Context(cli), name) is command


def test_status_shows_database_and_wal_sizes(node: Path) -> None:
    out = ok(p2pctl(node, "status"))
    line = next(x for x in out.splitlines() if x.startswith("database "))
    assert "WAL" in line and str(node / "p2p.db") in line
    data = json.loads(ok(p2pctl(node, "status", "--json")))
    assert data["database_bytes"] == (node / "p2p.db").stat().st_size
    assert data["wal_bytes"] >= 0


def test_uploads_days_sums_recent_and_rolled_up_rows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)  # one chunk of report.pdf to 127.0.0.3, 30 s ago
    now = time.time()
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            dbserving.record_uploads(
                s,
                [
                    dbserving.ServedChunk(
                        now - d * DAY, "127.0.0.3", "e" * 64, "old.bin", 0, 0, 100, 1
                    )
                    for d in (3, 40, 41)
                ],
            )
        with database.write() as s:
            from p2pshare.db import ledger

            while ledger.roll_up_batch(s, ledger.horizon(now, 30)):
                pass
    finally:
        database.close()
    rows = json.loads(ok(p2pctl(home, "uploads", "--days", "60", "--json")))
    by_name = {r["name"]: r for r in rows}
    assert by_name["old.bin"]["chunks"] == 3 and by_name["old.bin"]["bytes"] == 300
    assert by_name["report.pdf"]["chunks"] == 1
    rows = json.loads(ok(p2pctl(home, "uploads", "--days", "10", "--json")))
    assert {r["name"]: r["chunks"] for r in rows} == {"old.bin": 1, "report.pdf": 1}
    table = ok(p2pctl(home, "uploads", "--days", "10"))
    assert "old.bin" in table and "127.0.0.3" in table
    assert ok(p2pctl(home, "uploads", "--days", "1")).count("old.bin") == 0
    status = ok(p2pctl(home, "status"))
    assert "uploads   4 chunks" in status  # lifetime, whatever was rolled up


# ---------------------------------------------------------------- download without the ORM


def test_download_no_wait_imports_no_orm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)  # todo.txt's last download failed: asking again queues a new one
    assert imported(home, "download", "todo.txt", "--no-wait", what="ORM") == "[]"
    queued = rows(home, "SELECT id, name, status, pinned, request_id FROM downloads")[-1]
    assert queued[1:] == ("notes/todo.txt", "queued", 0, 1)


def test_download_follows_to_done_without_the_orm(tmp_path: Path) -> None:
    """p2pctl follows the row another process changes (as the downloader does), and exits
    once it says done; all of it without importing SQLAlchemy's ORM."""
    home = tmp_path / "home"
    seed(home)
    beat(home, time.time())
    run = subprocess.Popen(
        [sys.executable, "-c", PROBE, "download", "todo.txt"],
        env=ctl_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        did = wait_for_row(home, "SELECT id FROM downloads WHERE status = 'queued'")
        beat(home, time.time())  # the downloader is alive for the whole follow
        write(home, "UPDATE downloads SET status = 'active', bytes_done = 3 WHERE id = ?", did)
        write(
            home,
            "UPDATE downloads SET status = 'done', bytes_done = size, saved_as = 'notes/todo.txt',"
            " finished_at = unixepoch() WHERE id = ?",
            did,
        )
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 0, err
    assert "Traceback" not in err
    assert f"saved as {home / 'downloads' / 'notes' / 'todo.txt'}\n" in out
    assert out.rsplit("ORM", 1)[1].strip() == "[]"


def rows(home: Path, query: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(home / "p2p.db")) as conn:
        return conn.execute(query).fetchall()


def write(home: Path, query: str, *params: object) -> None:
    with closing(sqlite3.connect(home / "p2p.db", timeout=30)) as conn, conn:
        conn.execute(query, params)


def wait_for_row(home: Path, query: str) -> int:
    """The first column of the query's first row, once it has one (bounded wait)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = rows(home, query)
        if found:
            return int(str(found[0][0]))
        time.sleep(0.02)
    raise AssertionError(f"no row for {query!r} within 60 s")

"""p2pctl files and peers page and stream (--limit, --offset, --jsonl) without the ORM;
history and status stay honest once old downloads are rolled up past the horizon."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from test_lazy_cli import imported
from test_reports import MOVIE, as_json, ok, one_error_line, p2pctl, seed

from p2pshare.cli.listings import TABLE_ROWS
from p2pshare.db.engine import Database
from p2pshare.services.server.housekeeping import Housekeeping

DAY = 86400


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("listings") / "home"
    seed(home)
    return home


@pytest.mark.parametrize("args", [["files"], ["files", "--json"], ["peers", "--jsonl"]])
def test_listings_import_no_orm(node: Path, args: list[str]) -> None:
    assert imported(node, *args, what="ORM") == "[]"


def test_files_page_by_page(node: Path) -> None:
    names = [r["name"] for r in as_json(p2pctl(node, "files", "--json"))]
    assert len(names) == 3
    first = ok(p2pctl(node, "files", "--limit", "2"))
    assert [n for n in names if n in first] == names[:2]
    assert first.rstrip().endswith("files 1-2 of 3; --offset 2 for the next ones")
    last = ok(p2pctl(node, "files", "--limit", "2", "--offset", "2"))
    assert [n for n in names if n in last] == names[2:]
    assert last.rstrip().endswith("files 3-3 of 3")
    assert ok(p2pctl(node, "files", "--offset", "5")).strip() == (
        "No files from offset 5: there are 3."
    )
    page = as_json(p2pctl(node, "files", "--json", "--limit", "1", "--offset", "1"))
    assert [r["name"] for r in page] == names[1:2]
    # Unpaged, the table is as it was: no note under it.
    assert ok(p2pctl(node, "files")).rstrip().splitlines()[-1].startswith(names[-1])


def test_a_long_table_shows_its_first_rows_and_says_how_to_see_the_rest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)
    conn = sqlite3.connect(home / "p2p.db")
    (peer,) = conn.execute("SELECT min(id) FROM peers").fetchone()
    for i in range(TABLE_ROWS):
        (fid,) = conn.execute(
            "INSERT INTO files (sha256, size, chunk_size, root, chunk_count, first_seen)"
            " VALUES (?, 1, 16384, ?, 1, 0) RETURNING id",
            (f"{i:064x}", f"{i:064x}"),
        ).fetchone()
        conn.execute(
            "INSERT INTO holdings (peer_id, file_id, name, chunks_held, bitfield)"
            " VALUES (?, ?, ?, 1, NULL)",
            (peer, fid, f"many/{i:04d}.bin"),
        )
    conn.commit()
    conn.close()
    total = len(as_json(p2pctl(home, "files", "--json")))
    assert total == TABLE_ROWS + 3
    table = ok(p2pctl(home, "files")).rstrip().splitlines()
    assert table[-1] == (
        f"files 1-{TABLE_ROWS} of {total}; --offset {TABLE_ROWS} for the next ones,"
        " --jsonl for all of them"
    )
    assert len([line for line in table if ".bin" in line or "MOVIE" in line]) <= TABLE_ROWS
    assert "many/0999.bin" not in "\n".join(table)  # the last rows are past the page
    assert len(ok(p2pctl(home, "files", "--jsonl")).splitlines()) == total


def test_files_and_peers_stream_json_lines(node: Path) -> None:
    whole = as_json(p2pctl(node, "files", "--json"))
    lines = ok(p2pctl(node, "files", "--jsonl")).splitlines()
    assert [json.loads(line) for line in lines] == whole
    movie = ok(p2pctl(node, "files", "MOVIE", "--jsonl")).splitlines()
    assert [json.loads(line)["size"] for line in movie] == [len(MOVIE)]
    [peer] = ok(p2pctl(node, "peers", "--jsonl")).splitlines()
    assert json.loads(peer) == as_json(p2pctl(node, "peers", "--json"))[0]
    assert as_json(p2pctl(node, "peers", "--json", "--offset", "1")) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["files", "--json", "--jsonl"], "choose one of --json and --jsonl"),
        (["peers", "--limit", "0"], "--limit"),
        (["files", "--offset", "-1"], "--offset"),
    ],
)
def test_bad_paging_is_one_error_line(node: Path, args: list[str], words: str) -> None:
    result = p2pctl(node, *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    if words.startswith("choose"):
        assert one_error_line(result) == f"error: {words}"
    else:
        assert words in result.stderr


def test_history_says_what_was_rolled_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seed(home)  # one download done, one failed
    database = Database.open(home / "p2p.db")
    try:
        # The server's housekeeping, ten days on, with a one-day horizon.
        moved = Housekeeping(database, 1, threading.Event()).step(time.time() + 10 * DAY)
    finally:
        database.close()
    assert moved >= 2
    out = ok(p2pctl(home, "history"))
    assert out.splitlines()[0] == "No downloads listed; start one with: p2pctl download NAME"
    note = out.splitlines()[1]
    assert note.startswith("Not listed: 2 older downloads that ended ")
    assert "rolled up per day into download_days (P2P_HISTORY_DAYS)" in note
    assert note.endswith(": done 1 (48.0 KiB), failed 1.")  # MOVIE: 3 chunks of 16 KiB + 5 B
    result = p2pctl(home, "history", "--json")
    assert json.loads(ok(result)) == []
    assert "note: Not listed: 2 older downloads" in result.stderr
    # status still counts the finished one.
    assert "downloads 0 running, 1 done" in ok(p2pctl(home, "status"))
    counts = as_json(p2pctl(home, "status", "--json"))["counts"]
    assert counts["downloads_done"] == 1

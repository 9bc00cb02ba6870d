"""History with a horizon on a real node: the leecher's server rolls downloads that ended
before P2P_HISTORY_DAYS into download_days, their requests into request_days, forgets the
file the user moved away, and p2pctl history and status still tell the totals."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable

import pytest
from node import Node, wait_until
from test_transfer import seed, wait_known

pytestmark = pytest.mark.integration

CHUNK = 16 * 1024
DAY = 86400


def test_old_downloads_roll_up_and_their_forgotten_files_go(
    make_node: Callable[..., Node],
) -> None:
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK)
    leech = make_node("leech", P2P_HISTORY_DAYS="3", P2P_PEER_TTL="6")
    seeder.start()
    leech.start()
    data = {name: os.urandom(20 * CHUNK + n) for n, name in enumerate(["a.bin", "b.bin"])}
    for name, content in data.items():
        seed(seeder, name, content)
    for name in data:
        wait_known(leech, name)
        assert leech.p2pctl("download", name, timeout=120).returncode == 0
    # The user moves a.bin out of the download folder; the indexer forgets it, but its
    # download row keeps its `files` row (and manifest) while it is listed.
    (leech.home / "downloads" / "a.bin").unlink()
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM local_files WHERE name = 'a.bin'") == 0,
        30,
        what="a.bin gone from the index",
    )
    # The seeder leaves, so no peer offers a.bin either.
    seeder.stop()
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM holdings") == 0,
        60,
        what="the seeder's offers expired",
    )
    sha_a = leech.scalar("SELECT sha256 FROM downloads WHERE name = 'a.bin'")
    assert leech.scalar("SELECT count(*) FROM files WHERE sha256 = ?", (sha_a,)) == 1
    done_bytes = leech.scalar("SELECT sum(bytes_done) FROM downloads")

    # Ten days pass (in SQL: every time in the history moves back).
    leech.stop(("server",))
    conn = sqlite3.connect(leech.db_path)
    conn.execute(
        "UPDATE downloads SET requested_at = requested_at - 10 * ?,"
        " started_at = started_at - 10 * ?, finished_at = finished_at - 10 * ?",
        (DAY, DAY, DAY),
    )
    conn.execute("UPDATE requests SET requested_at = requested_at - 10 * ?", (DAY,))
    conn.execute("UPDATE files SET first_seen = first_seen - 10 * ?", (DAY,))
    conn.commit()
    conn.close()
    leech.start(("server",))
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM downloads") == 0,
        60,
        what="the old downloads rolled up",
    )
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM requests") == 0,
        30,
        what="their requests rolled up",
    )
    assert leech.sql("SELECT status, downloads, bytes FROM download_days") == [
        ("done", 2, done_bytes)
    ]
    assert leech.sql("SELECT sum(requests), sum(files) FROM request_days") == [(2, 2)]
    assert leech.scalar("SELECT count(*) FROM download_sources") == 0
    # a.bin: no offer, no local file, no download row: forgotten with its manifest.
    # b.bin is still in the download folder, so it stays.
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM files WHERE sha256 = ?", (sha_a,)) == 0,
        30,
        what="a.bin's files row forgotten",
    )
    assert leech.scalar("SELECT count(*) FROM local_files WHERE name = 'b.bin'") == 1
    assert leech.scalar("SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id") == 21
    # The server logs the rollup once its last transaction committed: a moment after the
    # rows above are gone (it was not yet there once, beside a CPU hog).
    wait_until(lambda: "download_days" in leech.log("server"), 30, what="the rollup's log line")

    history = leech.p2pctl("history")
    assert history.returncode == 0, history.stderr
    assert "Not listed: 2 older downloads that ended" in history.stdout
    assert "done 2 (" in history.stdout
    assert leech.p2pctl_json("status")["counts"]["downloads_done"] == 2

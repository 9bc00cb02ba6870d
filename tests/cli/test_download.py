"""p2pctl download, pause, resume and cancel with --no-wait on a seeded temp database: what
they print, their exit codes and the rows they leave. No downloader runs."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_reports import (
    NODE_A,
    OWN,
    PIDS,
    beat,
    ctl_env,
    hashed,
    offered,
    one_error_line,
    p2pctl,
    sha,
)

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import index as dbindex
from p2pshare.db import peers as dbpeers
from p2pshare.db.engine import Database
from p2pshare.db.node import record_heartbeat, set_node_id
from p2pshare.services.units import human_bytes

NODE_B = "b" * 32


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


TALK = data(10, 40_000)
TALK_TXT = data(11, 900)
REPORT = data(12, 5000)
TRACK1, TRACK2, TRACK3 = data(13, 3000), data(14, 20_000), data(15, 700)
README = data(16, 50)
PHOTO_A, PHOTO_B = data(17, 60), data(18, 61)

# What alice offers; bob offers another version of photos/a.jpg.
ALICE = {
    "talk.mp4": TALK,
    "talk.txt": TALK_TXT,
    "report-copy.pdf": REPORT,  # the content of report.pdf shared here
    "album/01.flac": TRACK1,  # shared here under the same name
    "album/02.flac": TRACK2,
    "album/sub/03 – Ünïcødé.flac": TRACK3,
    "album2/x.flac": data(19, 10),
    "docs/readme.txt": README,
    "photos/a.jpg": PHOTO_A,
}
BOB = {"photos/a.jpg": PHOTO_B}


def heard_peer(node: str, address: str, port: int) -> dbpeers.Heard:
    return dbpeers.Heard(node, node[:1] + "-user", address, port, 1, 1)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A running node that shares report.pdf, album/01.flac and docs/readme.txt and has
    heard alice's and bob's catalogs."""
    home = tmp_path / "home"
    now = time.time()
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            set_node_id(s, OWN, now=now)
            for name, content in (
                ("report.pdf", REPORT),
                ("album/01.flac", TRACK1),
                ("docs/readme.txt", README),
            ):
                dbindex.record_local_file(s, "share", name, hashed(content), now=now)
            for node, (address, port), files in (
                (NODE_A, ("127.0.0.2", 5001), ALICE),
                (NODE_B, ("127.0.0.3", 5002), BOB),
            ):
                peer_id = dbpeers.record_announce(
                    s, heard_peer(node, address, port), now=now
                ).peer_id
                assert peer_id is not None
                kept = dbcatalogs.apply_catalog(
                    s,
                    peer_id,
                    1,
                    [offered(name, content) for name, content in files.items()],
                    {hashed(c).key: list(hashed(c).chunk_hashes) for c in files.values()},
                    now=now,
                )
                assert kept == len(files)
    finally:
        database.close()
    return home


def rows(home: Path, query: str) -> list[tuple[Any, ...]]:
    """What `sqlite3 p2p.db` shows: an independent connection, no SQLAlchemy."""
    conn = sqlite3.connect(home / "p2p.db")
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def downloads(home: Path) -> list[tuple[Any, ...]]:
    return rows(home, "SELECT id, name, status FROM downloads ORDER BY id")


def succeeds(home: Path, *args: str) -> str:
    result = p2pctl(home, *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout


# ---------------------------------------------------------------- download --no-wait


def test_one_file_is_queued(home: Path) -> None:
    out = succeeds(home, "download", "talk.mp4", "--no-wait")
    assert out == (
        f"queued #1: talk.mp4 ({human_bytes(len(TALK))}, sha256 {sha(TALK)[:12]}, 1 peer)\n"
    )
    assert rows(
        home, "SELECT id, request_id, name, sha256, size, status, pinned FROM downloads"
    ) == [(1, 1, "talk.mp4", sha(TALK), len(TALK), "queued", 0)]
    assert rows(home, "SELECT id, pattern, kind, files FROM requests") == [
        (1, "talk.mp4", "file", 1)
    ]
    # Asked again: the same download, not a second one.
    again = succeeds(home, "download", "talk.mp4", "--no-wait")
    assert again.startswith("already downloading #1: talk.mp4 (")
    assert downloads(home) == [(1, "talk.mp4", "queued")]


def test_name_at_sha_is_pinned(home: Path) -> None:
    out = succeeds(home, "download", f"photos/a.jpg@{sha(PHOTO_B)[:8]}", "--no-wait")
    assert out.startswith(f"queued #1: photos/a.jpg ({len(PHOTO_B)} B, sha256 {sha(PHOTO_B)[:12]}")
    assert rows(home, "SELECT sha256, pinned FROM downloads") == [(sha(PHOTO_B), 1)]


def test_folder_is_one_request_of_many_downloads(home: Path) -> None:
    out = succeeds(home, "download", "album/", "--no-wait")
    size = human_bytes(len(TRACK2) + len(TRACK3))
    assert out == f"request 1: 2 files, {size}, 1 already here\n"
    assert rows(home, "SELECT id, pattern, kind, files, already_here FROM requests") == [
        (1, "album/", "folder", 2, 1)
    ]
    # Smallest first; album/01.flac is here already, album2/ is another folder.
    assert rows(
        home, "SELECT id, request_id, name, sha256, status, pinned FROM downloads ORDER BY id"
    ) == [
        (1, 1, "album/sub/03 – Ünïcødé.flac", sha(TRACK3), "queued", 0),
        (2, 1, "album/02.flac", sha(TRACK2), "queued", 0),
    ]
    # The same folder again: nothing new, both already downloading.
    again = succeeds(home, "download", "album/", "--no-wait")
    assert again == f"request 2: 2 files, {size} (2 already downloading), 1 already here\n"
    assert len(downloads(home)) == 2


def test_folder_all_here_is_nothing_to_fetch(home: Path) -> None:
    out = succeeds(home, "download", "docs/", "--no-wait")
    assert out == "nothing to fetch: all 1 file is already here\n"
    assert downloads(home) == []


def test_file_held_here_is_already_here_with_exit_0(home: Path) -> None:
    out = succeeds(home, "download", "report-copy.pdf", "--no-wait")
    assert out == f"already here: {home / 'shared' / 'report.pdf'}\n"
    assert downloads(home) == []


def test_the_nodes_recorded_folders_win_over_this_shells(home: Path) -> None:
    # What `p2pctl start` records: the node's folders are its home's, whatever a shell says.
    (home / "p2p.toml").write_text(
        f'P2P_SHARE_DIR = "{home / "shared"}"\nP2P_USERNAME = "tester"\n'
        'P2P_BROADCAST = "127.255.255.255"\n'  # as this test's shell says (ctl_env)
    )
    result = p2pctl(home, "download", "report-copy.pdf", "--no-wait", P2P_SHARE_DIR="/elsewhere")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"already here: {home / 'shared' / 'report.pdf'}\n"
    assert result.stderr.startswith("note: this shell's P2P_SHARE_DIR differs from the node's")


def test_already_here_leaves_no_request_that_says_otherwise(home: Path) -> None:
    succeeds(home, "download", "report-copy.pdf", "--no-wait")
    # Like an unknown or ambiguous name, it queued nothing: no request row, or one that
    # counts the file as already here (as a folder request all here does).
    assert rows(home, "SELECT pattern, kind, files, already_here FROM requests") in (
        [],
        [("report-copy.pdf", "file", 0, 1)],
    )


def test_ctrl_c_while_following_is_no_error(home: Path) -> None:
    beat(home, time.time())  # the downloader "runs": nothing will move, so it follows
    follow = subprocess.Popen(
        [sys.executable, "-m", "p2pshare.cli.main", "download", "talk.mp4"],
        env=ctl_env(home),
        cwd=home.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follow.stderr is not None
        shown = b""
        deadline = time.monotonic() + 30
        while b"talk.mp4" not in shown and time.monotonic() < deadline:  # the bar is up
            ready, _, _ = select.select([follow.stderr], [], [], 0.5)
            if ready:
                shown += os.read(follow.stderr.fileno(), 4096)
        assert b"talk.mp4" in shown, shown
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 130
    last = err.decode().splitlines()[-1]
    assert last.startswith("stopped following; the download continues"), last
    assert b"error" not in err and b"Traceback" not in err


def test_ambiguous_name_lists_the_files_and_hints_at_all(home: Path) -> None:
    result = p2pctl(home, "download", "talk", "--no-wait")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    *table, error = result.stderr.strip().splitlines()
    assert (
        error
        == "error: 'talk' matches 2 files; add @SHA to pick one, or --all for every one of them"
    )
    listed = "\n".join(table)
    for name, content in (("talk.mp4", TALK), ("talk.txt", TALK_TXT)):
        assert f"{name}@{sha(content)[:12]}" in listed
    assert downloads(home) == []
    # --all takes both, as one request.
    out = succeeds(home, "download", "talk", "--all", "--no-wait")
    assert out == f"request 1: 2 files, {human_bytes(len(TALK) + len(TALK_TXT))}\n"
    assert downloads(home) == [(1, "talk.txt", "queued"), (2, "talk.mp4", "queued")]


def test_a_name_in_two_versions_hints_only_at_what_works(home: Path) -> None:
    result = p2pctl(home, "download", "photos/a.jpg", "--no-wait")
    assert result.returncode == 1
    # --all would refuse a name offered in several versions: it is not suggested.
    *table, error = result.stderr.strip().splitlines()
    assert error == "error: 'photos/a.jpg' matches 2 files; add @SHA to pick one"
    assert len(table) == 4  # header, rule, the two versions
    assert downloads(home) == []


def test_a_version_held_here_is_no_choice(home: Path) -> None:
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            dbindex.record_local_file(s, "share", "photos/a.jpg", hashed(PHOTO_A), now=1.0)
    finally:
        database.close()
    out = succeeds(home, "download", "photos/a.jpg", "--no-wait")
    assert out.startswith(f"queued #1: photos/a.jpg ({len(PHOTO_B)} B, sha256 {sha(PHOTO_B)[:12]}")


def test_folder_with_a_name_in_two_versions_is_one_sentence(home: Path) -> None:
    result = p2pctl(home, "download", "photos/", "--no-wait")
    assert result.returncode == 1
    assert one_error_line(result) == (
        "error: 1 of the files 'photos/' covers are offered in several versions "
        "(photos/a.jpg); download those one by one as NAME@SHA"
    )
    assert result.stdout == ""
    assert downloads(home) == [] and rows(home, "SELECT * FROM requests") == []


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        pytest.param(
            ["nothing/"],
            "error: no file on the network under 'nothing/'; see p2pctl files",
            id="folder",
        ),
        pytest.param(
            ["alb/"], "error: no file on the network under 'alb/'; see p2pctl files", id="prefix"
        ),
        pytest.param(
            ["nope*", "--all"],
            "error: no file on the network matches 'nope*'; see p2pctl files",
            id="glob",
        ),
        pytest.param(
            ["nope.bin"],
            "error: no file on the network matches 'nope.bin'; see p2pctl files",
            id="file",
        ),
    ],
)
def test_unknown_name_is_one_sentence(home: Path, args: list[str], sentence: str) -> None:
    result = p2pctl(home, "download", *args, "--no-wait")
    assert result.returncode == 1
    assert one_error_line(result) == sentence
    assert result.stdout == ""
    assert downloads(home) == []


# ---------------------------------------------------------------- pause, resume, cancel


def test_history_shows_how_far_and_not_the_status_twice(home: Path) -> None:
    succeeds(home, "download", "talk.mp4", "--no-wait")
    conn = sqlite3.connect(home / "p2p.db")
    with conn:
        conn.execute("UPDATE downloads SET bytes_done = size / 2")
    conn.close()
    succeeds(home, "pause", "talk.mp4")
    [line] = [row for row in succeeds(home, "history").splitlines() if "talk.mp4" in row]
    assert " paused 50% " in line and "by the user" not in line


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("tlak.mp4", "talk.mp4"), ("02.flca", "album/02.flac")],
)
def test_a_typo_gets_a_did_you_mean(home: Path, typed: str, meant: str) -> None:
    result = p2pctl(home, "download", typed, "--no-wait")
    assert result.returncode == 1
    assert one_error_line(result) == (
        f"error: no file on the network matches {typed!r}; did you mean {meant}? see p2pctl files"
    )


def test_peers_notes_two_machines_under_one_name(home: Path) -> None:
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            dbpeers.record_announce(s, heard_peer("c" * 32, "127.0.0.9", 5009), now=time.time())
    finally:
        database.close()
    # heard_peer names a peer by its node id's first letter: "c-user" is not "a-user".
    assert p2pctl(home, "peers").stderr == ""
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            twin = dbpeers.Heard("d" * 32, "a-user", "127.0.0.8", 5008, 1, 1)
            dbpeers.record_announce(s, twin, now=time.time())
    finally:
        database.close()
    result = p2pctl(home, "peers")
    assert result.returncode == 0
    assert result.stderr.startswith(
        "note: 2 machines announce the name a-user (127.0.0.2, 127.0.0.8); "
        "give each its own P2P_USERNAME"
    )


def test_pause_resume_cancel_a_folder(home: Path) -> None:
    succeeds(home, "download", "album/", "--no-wait")
    succeeds(home, "download", "talk.mp4", "--no-wait")
    folder = ["album/sub/03 – Ünïcødé.flac", "album/02.flac"]

    assert succeeds(home, "pause", "album/") == "".join(f"paused {n}\n" for n in folder)
    assert downloads(home) == [
        (1, folder[0], "paused"),
        (2, folder[1], "paused"),
        (3, "talk.mp4", "queued"),
    ]
    result = p2pctl(home, "pause", "album/")
    assert result.returncode == 1
    assert one_error_line(result) == (
        "error: no unfinished download matches 'album/'; see p2pctl history"
    )

    assert succeeds(home, "resume", "2") == "resumed album/02.flac\n"
    result = p2pctl(home, "resume", "talk.mp4")  # queued, not paused
    assert result.returncode == 1
    assert (
        one_error_line(result) == "error: no paused download matches 'talk.mp4'; see p2pctl history"
    )
    assert downloads(home) == [
        (1, folder[0], "paused"),
        (2, folder[1], "queued"),
        (3, "talk.mp4", "queued"),
    ]

    assert succeeds(home, "cancel", "*.flac") == "".join(f"cancelled {n}\n" for n in folder)
    assert (
        rows(home, "SELECT status, reason, temp_path FROM downloads WHERE id < 3")
        == [("cancelled", "cancelled by the user", None)] * 2
    )
    result = p2pctl(home, "cancel", "album/")
    assert result.returncode == 1
    assert one_error_line(result) == (
        "error: no unfinished download matches 'album/'; see p2pctl history"
    )
    assert succeeds(home, "cancel", "3") == "cancelled talk.mp4\n"


@pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
@pytest.mark.parametrize("name", ["99999999999999999999", "²", "0", "nothing-like-it"])
def test_changing_no_download_is_one_error_line(home: Path, command: str, name: str) -> None:
    succeeds(home, "download", "talk.mp4", "--no-wait")
    result = p2pctl(home, command, name)
    assert result.returncode == 1
    assert f"download matches {name!r}" in one_error_line(result)
    assert result.stdout == ""
    assert downloads(home) == [(1, "talk.mp4", "queued")]


# ---------------------------------------------------------------- a node not running


def beat_roles(home: Path, ages: dict[str, float]) -> None:
    """Each role's last heartbeat, `ages[role]` seconds ago."""
    now = time.time()
    database = Database.open(home / "p2p.db")
    try:
        with database.write() as s:
            for role, pid in PIDS.items():
                at = now - ages[role]
                record_heartbeat(s, role, pid=pid, started_at=at - 60, now=at)
    finally:
        database.close()


def test_download_refuses_when_the_downloader_is_stale(home: Path) -> None:
    beat_roles(home, {"server": 0, "announcer": 0, "listener": 0, "downloader": 3600})
    result = p2pctl(home, "download", "talk.mp4", "--no-wait", alive=False)
    assert result.returncode == 3
    line = one_error_line(result)
    assert "the downloader role of this node is not running" in line
    assert result.stdout == ""
    assert downloads(home) == []


@pytest.mark.parametrize("command", ["download", "pause", "resume", "cancel"])
def test_commands_refuse_when_the_node_is_down(home: Path, command: str) -> None:
    beat_roles(home, dict.fromkeys(PIDS, 3600))
    result = p2pctl(home, command, "talk.mp4", alive=False)
    assert result.returncode == 3
    assert "is not running" in one_error_line(result)
    assert result.stdout == ""
    assert downloads(home) == []

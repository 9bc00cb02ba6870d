"""Case 2: kill -9 every role of a supervised leecher, and the seeder's server, mid-download.

Both nodes run as a user runs them: `supervisord -c supervisord.conf -n`. The
seeder is rate-limited so one download lasts through all the kills. Each
SIGKILL goes to the role's PID as supervisorctl reports it; supervisord must
bring the role back (a new PID, RUNNING, beating), the download must finish
byte-identical without refetching what was already verified, and both
databases must pass `PRAGMA integrity_check`.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable

import pytest
from conftest import Node, wait_until
from nodetools import (
    UNFINISHED,
    download,
    forbidden_log_text,
    integrity,
    queue,
    seed,
    sha256_file,
    wait_ended,
    wait_known,
)

pytestmark = pytest.mark.reliability

CHUNK = 64 * 1024
# 1 MB/s and 12 MiB: at least 12.5 s of transfer, longer than the five kills
# below take (each about 1.5 s: supervisord's startsecs=1 plus the role's start).
UPLOAD_LIMIT = 1_000_000
SIZE = 12 * 1024 * 1024
# Seeder's server first killed while the leecher's roles are all fresh, then each
# leecher role; the downloader in the middle so later kills hit a resumed download.
KILLS = (
    ("leech", "server"),
    ("leech", "downloader"),
    ("seed", "server"),
    ("leech", "listener"),
    ("leech", "announcer"),
)
RESTART_TIMEOUT = 20.0


def program_states(node: Node) -> dict[str, tuple[str, int | None]]:
    """role -> (supervisor state, pid) from `supervisorctl status`."""
    done = node.supervisorctl("status")
    out: dict[str, tuple[str, int | None]] = {}
    for role, state, pid in re.findall(r"^p2p:(\w+)\s+(\w+)(?:\s+pid (\d+))?", done.stdout, re.M):
        out[role] = (state, int(pid) if pid else None)
    return out


def running_pid(node: Node, role: str) -> int:
    state, pid = program_states(node).get(role, ("MISSING", None))
    assert state == "RUNNING" and pid, f"{node}: {role} is {state}"
    return pid


def wait_restarted(node: Node, role: str, old_pid: int) -> int:
    """Wait for supervisord to run `role` again under a new PID that beats; returns it."""

    def restarted() -> int | None:
        state, pid = program_states(node).get(role, ("MISSING", None))
        if state != "RUNNING" or pid in (None, old_pid):
            return None
        beats = node.heartbeats()
        return pid if role in beats and beats[role][0] == pid else None

    return int(
        wait_until(
            restarted,
            RESTART_TIMEOUT,
            interval=0.2,
            what=f"{node}: supervisord to restart {role} (was pid {old_pid})",
        )
    )


def test_kill_9_each_role_mid_download(make_node: Callable[..., Node]) -> None:
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK, P2P_UPLOAD_LIMIT=UPLOAD_LIMIT)
    leech = make_node("leech", P2P_WAIT_TIMEOUT=60)
    nodes = {"seed": seeder, "leech": leech}
    seeder.start_supervised(wait=False)
    leech.start_supervised(wait=False)
    seeder.wait_alive()
    leech.wait_alive()
    data = os.urandom(SIZE)
    seed(seeder, "movie.bin", data)
    wait_known(leech, "movie.bin")

    download_id = queue(leech, "movie.bin")
    wait_until(lambda: download(leech, download_id)["bytes_done"] > 0, 30, what="the first chunks")

    restarts: list[str] = []
    for label, role in KILLS:
        node = nodes[label]
        before = download(leech, download_id)
        assert before["status"] in UNFINISHED and before["bytes_done"] < SIZE, (
            f"the download ended before {label} {role} was killed: {before}"
        )
        old_pid = running_pid(node, role)
        os.kill(old_pid, signal.SIGKILL)
        new_pid = wait_restarted(node, role, old_pid)
        restarts.append(f"{label}:{role} {old_pid}->{new_pid}")
        # Verified, fsynced chunks survive every kill: progress never goes back.
        after = download(leech, download_id)
        assert after["bytes_done"] >= before["bytes_done"], (label, role, before, after)
    kills_done = time.monotonic()

    d = wait_ended(leech, download_id, timeout=90)
    print(f"restarts: {restarts}; download ended {time.monotonic() - kills_done:.1f} s later")

    assert d["status"] == "done", d
    got = leech.home / "downloads" / "movie.bin"
    assert got.read_bytes() == data
    assert sha256_file(got) == d["sha256"]
    lost = d["bytes_received"] - SIZE
    print(f"bytes received {d['bytes_received']}, refetched {lost}")
    # Chunks verified and fsynced before a kill are never fetched again; what may be
    # lost is what was in flight or not yet fsynced at each kill (a few MiB at most).
    assert d["bytes_received"] < SIZE * 1.5, d
    # Every role of both nodes is up under supervisord, the killed ones with new PIDs.
    for node in nodes.values():
        states = program_states(node)
        assert {r: s for r, (s, _) in states.items()} == dict.fromkeys(
            ("server", "announcer", "listener", "downloader"), "RUNNING"
        ), states
    assert not list((leech.home / "temp").iterdir())

    for node in nodes.values():
        node.stop()
        assert node.supervisord_exit == 0
    for node in nodes.values():
        assert integrity(node) == "ok", node
        assert forbidden_log_text(node) == []

"""Case 2: kill -9 every role of a supervised leecher, and the seeder's server, mid-download.

Both nodes run as a user runs them: `supervisord -c supervisord.conf -n`. The
leecher reaches the seeder through a gate the test holds
(tests/reliability/chunkgate.py), which lets a few more chunks through after each
kill and holds the rest until the kills are over: so the download goes on between
the kills, and cannot have finished before the last one, however fast or slow the
machine. Each SIGKILL goes to the role's PID as supervisorctl reports it;
supervisord must bring the role back (a new PID, RUNNING, beating), the download
must make progress again after each restart and finish byte-identical without
refetching what was already verified, and both databases must pass
`PRAGMA integrity_check`.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable

import pytest
from chunkgate import ChunkGate
from node import Node, pick_udp_port, wait_until
from nodetools import (
    UNFINISHED,
    download,
    forbidden_log_text,
    integrity,
    queue,
    seed,
    sha256_bytes,
    sha256_file,
    wait_ended,
    wait_known,
)

pytestmark = pytest.mark.reliability

CHUNK = 64 * 1024
UPLOAD_LIMIT = 2_000_000  # so a kill may meet a chunk half sent
SIZE = 12 * 1024 * 1024  # 192 chunks
# Chunks the gate lets through before the first kill, and after each restart: 16 + 5 * 8
# of 192, so the download is still unfinished at every kill.
FIRST_CHUNKS = 16
CHUNKS_PER_KILL = 8
# Seeder's server first killed while the leecher's roles are all fresh, then each
# leecher role; the downloader in the middle so later kills hit a resumed download.
KILLS = (
    ("leech", "server"),
    ("leech", "downloader"),
    ("seed", "server"),
    ("leech", "listener"),
    ("leech", "announcer"),
)
RESTART_TIMEOUT = 60.0
PROGRESS_TIMEOUT = 60.0


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


def test_kill_9_each_role_mid_download(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = make_node(
        "seed", udp_port=pick_udp_port(), P2P_CHUNK_SIZE=CHUNK, P2P_UPLOAD_LIMIT=UPLOAD_LIMIT
    )
    leech = make_node("leech", P2P_WAIT_TIMEOUT=60)
    nodes = {"seed": seeder, "leech": leech}
    seeder.start_supervised(wait=False)
    leech.start_supervised(wait=False)
    seeder.wait_alive()
    leech.wait_alive()
    gate = chunk_gate(seeder, leech.udp_port, budget=FIRST_CHUNKS)
    try:
        data = os.urandom(SIZE)
        seed(seeder, "movie.bin", data)
        wait_known(leech, "movie.bin")
        download_id = queue(leech, "movie.bin")
        restarts = kill_each_role(nodes, download_id, gate, sha256_bytes(data))
    finally:
        gate_state = repr(gate)
        gate.open()  # the rest of the file may come
    kills_done = time.monotonic()

    d = wait_ended(leech, download_id, timeout=120)
    print(f"restarts: {restarts}; download ended {time.monotonic() - kills_done:.1f} s later")
    print(f"gate at the end of the kills: {gate_state}")

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
            ("server", "announcer", "listener", "downloader", "web", "torrent"), "RUNNING"
        ), states
    assert not list((leech.home / "temp").iterdir())

    for node in nodes.values():
        node.stop()
        assert node.supervisord_exit == 0
    for node in nodes.values():
        assert integrity(node) == "ok", node
        assert forbidden_log_text(node) == []


def kill_each_role(
    nodes: dict[str, Node], download_id: int, gate: ChunkGate, sha256: str
) -> list[str]:
    """SIGKILL each role of KILLS mid-download; after each restart, let a few more chunks
    through the gate and wait for the download to take them."""
    leech = nodes["leech"]

    def progressed_past(done: int) -> bool:
        return download(leech, download_id)["bytes_done"] > done and gate.holding(sha256)

    wait_until(lambda: progressed_past(0), PROGRESS_TIMEOUT, what=f"the first chunks ({gate})")
    restarts: list[str] = []
    for label, role in KILLS:
        node = nodes[label]
        before = download(leech, download_id)
        # The gate has let through fewer chunks than the file has: this cannot fail.
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
        # ...and the download goes on after the restart.
        gate.allow(CHUNKS_PER_KILL)
        wait_until(
            lambda done=after["bytes_done"]: progressed_past(done),
            PROGRESS_TIMEOUT,
            what=f"the download to go on after {label} {role} was restarted ({gate})",
        )
    return restarts

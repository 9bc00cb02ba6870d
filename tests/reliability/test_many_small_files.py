"""A folder of 1,000 small files, the leecher's downloader killed -9 mid-way.

Small files go through the downloader in batches (services/downloader/small_batch.py): fetched
over one pipelined connection, made durable, published and recorded in groups. The
seeder sits behind a gate the test holds (chunkgate.py, counting every file's chunk
requests together), which lets part of the folder through and holds the rest, so the
kill lands mid-folder however fast or slow the machine is. Then:
- nothing half-written is in the download folder: every file there is whole, with
  its name and its bytes, published or not yet recorded;
- after supervisord restarts the downloader, the folder completes byte-identical,
  no name doubled (" (1)"), and what was published before the kill is not fetched
  again (the gate counts the requests);
- the database passes its integrity check, and no log has a traceback.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from collections.abc import Callable

import pytest
from chunkgate import ChunkGate
from node import Node, pick_udp_port, seed, wait_until
from nodetools import forbidden_log_text, integrity, tree
from test_supervised_recovery import program_states, running_pid, wait_restarted

pytestmark = pytest.mark.reliability

FILES = 1000
FIRST_REQUESTS = 400  # chunk requests (one a file) let through before the kill
TIMEOUT = 120.0


def make_tree(rng: random.Random) -> dict[str, bytes]:
    """FILES files of 1-16 KiB in a nested tree (a few empty ones too)."""
    out = {}
    for i in range(FILES):
        size = 0 if i % 250 == 0 else rng.randint(1024, 16 * 1024)
        out[f"many/d{i % 10}/e{i % 7}/f{i:04d}.bin"] = rng.randbytes(size)
    return out


def done_names(node: Node) -> set[str]:
    rows = node.sql("SELECT name FROM downloads WHERE status = 'done'")
    return {name for (name,) in rows}


def test_kill_9_downloader_mid_folder(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = make_node("seed", udp_port=pick_udp_port())
    leech = make_node("leech", P2P_WAIT_TIMEOUT=60)
    files = make_tree(random.Random(25))
    for name, data in files.items():
        seed(seeder, name, data)
    seeder.start_supervised(wait=False)
    leech.start_supervised(wait=False)
    seeder.wait_alive()
    leech.wait_alive()
    gate = chunk_gate(seeder, leech.udp_port, budget=FIRST_REQUESTS, per_file=False)
    wait_until(
        lambda: (
            leech.sql("SELECT count(DISTINCT name) FROM holdings WHERE name LIKE 'many/%'")[0][0]
            == FILES
        ),
        TIMEOUT,
        what="the leecher to know the whole folder",
    )
    done = leech.p2pctl("download", "many/", "--no-wait")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr

    # Mid-folder: the gate holds requests, and some files are published and recorded.
    wait_until(
        lambda: gate.holding() and len(done_names(leech)) >= 100,
        TIMEOUT,
        what=f"part of the folder to arrive ({gate})",
    )
    old_pid = running_pid(leech, "downloader")
    os.kill(old_pid, signal.SIGKILL)
    recorded = done_names(leech)
    assert len(recorded) < FILES - 100, "the gate held too little back"

    # Nothing half-written: every file in the download folder is whole and its own.
    for rel, path in tree(leech.home / "downloads").items():
        assert rel in files, f"unexpected {rel} in the download folder"
        assert path.read_bytes() == files[rel], f"{rel} is not whole"
    for name in recorded:
        assert (leech.home / "downloads" / name).read_bytes() == files[name]

    passed_before = gate.passed_total()
    wait_restarted(leech, "downloader", old_pid)
    gate.open()
    wait_until(
        lambda: len(done_names(leech)) == FILES,
        TIMEOUT,
        what="the whole folder after the restart",
    )

    got = tree(leech.home / "downloads")
    assert sorted(got) == sorted(files), "names missing or doubled"
    for rel, path in got.items():
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(files[rel]).digest()
    # What was published and recorded before the kill was not fetched again; empty
    # files need no request at all.
    non_empty = {n for n, data in files.items() if data}
    refetched = gate.passed_total() - passed_before
    print(
        f"recorded before the kill {len(recorded)}, requests before {passed_before}, "
        f"after {refetched}"
    )
    assert refetched <= len(non_empty - recorded), (refetched, len(non_empty - recorded))
    states = program_states(leech)
    assert states["downloader"][0] == "RUNNING", states
    wait_until(
        lambda: not list((leech.home / "temp").iterdir()), TIMEOUT, what="the temp folder to empty"
    )
    for node in (seeder, leech):
        node.stop()
        assert node.supervisord_exit == 0
        assert integrity(node) == "ok", node
        assert forbidden_log_text(node) == []

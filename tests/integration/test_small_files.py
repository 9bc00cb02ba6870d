"""Folders of small files, through the downloader's batches (services/downloader/small_batch.py).

- Lying and hanging-up peers among the sources, files of one to four chunks: every file
  still arrives whole from the honest seeder (the batch hands what it cannot finish to
  full jobs), the liars are marked bad, and nothing they sent is published.
- Connections are reused: two folders one after the other from one seeder take one
  connection between them (counted by a gate in front of the seeder).
"""

from __future__ import annotations

import hashlib
import random
import stat
from collections.abc import Callable

import pytest
from chunkgate import ChunkGate
from fakepeer import FakeFile, FakePeer
from node import Node, pick_udp_port, seed, umask, wait_until

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024
TIMEOUT = 90.0


def small_tree(prefix: str, n: int, seed_: int, largest: int = 20_000) -> dict[str, bytes]:
    rng = random.Random(seed_)
    return {f"{prefix}/f{i:03d}.bin": rng.randbytes(rng.randint(1000, largest)) for i in range(n)}


def statuses(node: Node, prefix: str) -> dict[str, str]:
    rows = node.sql("SELECT name, status FROM downloads WHERE name LIKE ?", (prefix + "/%",))
    return dict(rows)


def known_by(node: Node, name: str) -> int:
    return int(
        node.scalar("SELECT count(DISTINCT peer_id) FROM holdings WHERE name = ?", (name,)) or 0
    )


def test_liars_and_quitters_cannot_spoil_a_folder(
    make_node: Callable[..., Node], udp_port: int
) -> None:
    files = small_tree("album", 40, 1, largest=4 * CHUNK)  # one to four chunks
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK)
    for name, data in files.items():
        seed(seeder, name, data)
    leech = make_node("leech", P2P_WAIT_TIMEOUT=60)
    fakes = [FakeFile(name, data, CHUNK) for name, data in files.items()]
    liar = FakePeer(files=fakes, udp_port=udp_port, username="liar", lie_all=True).start()
    quitter = FakePeer(files=fakes, udp_port=udp_port, username="quitter", hangup={0}).start()
    # Honest about every first chunk, lying about every second: caught mid-file.
    half = FakePeer(files=fakes, udp_port=udp_port, username="half", lie={1}).start()
    try:
        seeder.start()
        leech.start()
        wait_until(
            lambda: all(known_by(leech, n) == 4 for n in files),
            TIMEOUT,
            what="the leecher to know all four sources of every file",
        )
        done = leech.p2pctl("download", "album/")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    finally:
        liar.close()
        quitter.close()
        half.close()

    assert set(statuses(leech, "album").values()) == {"done"}
    for name, data in files.items():
        got = (leech.home / "downloads" / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name
    # The liar is marked bad for the files it sent (the batch spread files over all
    # four, so it lied about some); the half-liar only if it was asked for a file of two
    # chunks or more; nobody else.
    bad = {port for (port,) in leech.sql("SELECT DISTINCT tcp_port FROM bad_peers")}
    assert liar.port in bad and bad <= {liar.port, half.port}, bad
    assert liar.chunks_served >= 1
    # No verified chunk came from the liar (the half-liar's first chunks and the
    # quitter's later ones are honest, and a full job may take them).
    sources = {p for (p,) in leech.sql("SELECT tcp_port FROM download_sources WHERE chunks > 0")}
    assert seeder.tcp_port() in sources and liar.port not in sources, sources
    assert "left to full jobs" in leech.log("downloader")


def test_two_folders_share_one_connection(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    first, second = small_tree("one", 60, 2), small_tree("two", 60, 3)
    seeder = make_node("seed", udp_port=pick_udp_port())
    for name, data in {**first, **second}.items():
        seed(seeder, name, data)
    leech = make_node("leech")
    seeder.start()
    leech.start()
    gate = chunk_gate(seeder, leech.udp_port, budget=10_000)
    wait_until(
        lambda: all(known_by(leech, n) == 1 for n in (*first, *second)),
        TIMEOUT,
        what="the leecher to know both folders",
    )
    for folder, files in (("one", first), ("two", second)):
        done = leech.p2pctl("download", f"{folder}/")
        assert done.returncode == 0, done.stdout + done.stderr
        for name, data in files.items():
            assert (leech.home / "downloads" / name).read_bytes() == data
            mode = (leech.home / "downloads" / name).stat().st_mode
            assert stat.S_IMODE(mode) == 0o666 & ~umask()  # as cp would make it
    # 120 files, two requests, one connection: opened for the first, kept for the second.
    assert gate.chunk_connections == 1, gate
    assert gate.passed_total() == len(first) + len(second)

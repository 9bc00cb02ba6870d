"""Issue 22 item 7: a boot storm of simulated peers while a real download runs under supervisord.

1,000 simulated peers (tests/integration/simlan.py: one process, the node's own wire format
on loopback, 10 files each) all announce within 2 s, and again a moment later, at a
leecher run by supervisord with the node's settings while it downloads a file from a
real seeder, also under supervisord. The seeder sits behind a chunk gate
(tests/integration/chunkgate.py) that lets the download move on by counts the test
chooses, so the download is under way for the whole storm however fast the machine
is: a first part before the storm, more as it begins, the rest once the leecher has
recorded every peer and offer. Then: the file is byte-identical, `p2pctl status` never
reported a role dead, every catalog was fetched once, and no role's log has a traceback
or "database is locked" (the harness checks the logs at teardown).

How fast all that goes is bench/biglan.py's business (`bench/bench.py --only biglan`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from chunkgate import ChunkGate
from node import ROLES, Node, pick_udp_port, seed, wait_until
from simlan import SimLan

pytestmark = pytest.mark.reliability

PEERS = 1000
FILES = 10
CHUNK = 256 * 1024
SIZE = 128 * CHUNK  # 32 MiB
BEFORE_STORM = 16  # chunks the gate passes before the storm
AS_IT_BEGINS = 48  # more, as the storm begins
# Bounds on waits for what must happen; a slow machine only takes longer.
RECORD_TIMEOUT = 180.0
DOWNLOAD_TIMEOUT = 180.0
# The storm's peers announce every 60 s (the default); they must not expire meanwhile.
PEER_TTL = 600


class StatusWatch:
    """`p2pctl status --json` taken again and again while waiting: every role alive, each time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.taken = 0
        self.dead: list[str] = []

    def look(self) -> None:
        done = self.node.p2pctl("status", "--json")
        assert done.returncode == 0, done.stderr
        roles: dict[str, Any] = json.loads(done.stdout)["roles"]
        self.taken += 1
        self.dead += [f"{r} (look {self.taken})" for r in ROLES if not roles[r]["alive"]]


def recorded(node: Node, lan: SimLan) -> bool:
    peers = node.scalar("SELECT count(*) FROM peers WHERE username LIKE 'sim-%'")
    offers = node.scalar(
        "SELECT count(*) FROM holdings h JOIN peers p ON p.id = h.peer_id "
        "WHERE p.username LIKE 'sim-%'"
    )
    return bool(peers == len(lan.peers) and offers == lan.offers)


def download_row(node: Node, name: str) -> tuple[str, int] | None:
    rows = node.sql("SELECT status, bytes_received FROM downloads WHERE name = ?", (name,))
    return (str(rows[0][0]), int(rows[0][1] or 0)) if rows else None


def test_boot_storm_during_a_supervised_download(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = make_node("seed", udp_port=pick_udp_port(), P2P_CHUNK_SIZE=CHUNK)
    leech = make_node("leech", P2P_PEER_TTL=PEER_TTL)
    seeder.start_supervised(wait=False)
    leech.start_supervised(wait=False)
    seeder.wait_alive()
    leech.wait_alive()
    gate = chunk_gate(seeder, leech.udp_port, budget=BEFORE_STORM)
    data = os.urandom(SIZE)
    seed(seeder, "big.bin", data)
    wait_until(
        lambda: leech.scalar("SELECT count(*) FROM holdings WHERE name = 'big.bin'") == 1,
        RECORD_TIMEOUT,
        what="the leecher to know big.bin",
    )
    lan = SimLan(PEERS, FILES, leech.udp_port)
    try:
        queued = leech.p2pctl("download", "big.bin", "--no-wait")
        assert queued.returncode == 0, queued.stderr
        wait_until(
            lambda: gate.holding(hashlib.sha256(data).hexdigest()),
            DOWNLOAD_TIMEOUT,
            what="the download to take its first chunks and wait at the gate",
        )
        wait_until(
            lambda: (download_row(leech, "big.bin") or ("", 0))[1] >= BEFORE_STORM * CHUNK,
            DOWNLOAD_TIMEOUT,
            what="the first chunks to be recorded",
        )
        status = StatusWatch(leech)
        lan.start()  # the storm begins
        gate.allow(AS_IT_BEGINS)

        def storm_recorded() -> bool:
            status.look()
            return recorded(leech, lan)

        wait_until(
            storm_recorded,
            RECORD_TIMEOUT,
            interval=0.2,
            what=f"the leecher to record {PEERS} peers and {lan.offers} offers",
        )
        during = download_row(leech, "big.bin")
        gate.open()
        wait_until(
            lambda: (download_row(leech, "big.bin") or ("", 0))[0] == "done",
            DOWNLOAD_TIMEOUT,
            what="the download to finish",
        )
        status.look()
        stats = lan.stats.as_dict(len(lan.peers))
    finally:
        lan.close()
    # The download was under way, not finished, while the storm was recorded.
    assert during is not None and during[0] != "done" and 0 < during[1] < SIZE, during
    assert (leech.home / "downloads" / "big.bin").read_bytes() == data
    assert not status.dead, f"p2pctl status reported roles dead: {status.dead}"
    assert stats["peers_fetched"] == PEERS and stats["max_fetches_per_peer"] == 1, stats
    for node in (seeder, leech):
        for role, text in node.logs().items():
            for bad in ("Traceback", "database is locked"):
                assert bad not in text, f"{node}: {role}.log has {bad!r}"
    print(
        f"\nlan storm: {PEERS} peers x {FILES} files recorded during a gated download "
        f"({status.taken} status looks, all alive); {stats['catalog_fetches']} catalog "
        f"fetches; download byte-identical"
    )

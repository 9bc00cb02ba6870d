"""Budgets per peer (issue 37, item 1): a hostile peer's made-up contents cost a node a
bounded share of its database and memory, and nothing of what other peers give it.

The scripted peer (fakepeer.FakePeer with fakepeer.hostile_fields) offers contents that
claim 2^20 chunks of 16 KiB, each with a manifest that proves itself (zero entries ending
in the claimed SHA-256, offered under their hash): 40 KiB on the wire, 2^20 chunk rows
stored, served onward as this node's own. Downloads of those names are how such manifests
get asked for.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.request
from typing import Any

import pytest
from fakepeer import hostile_fields, make_bomb
from node import wait_until
from nodetools import queue, seed, sha256_bytes, sha256_file, status_kib, wait_ended

from p2pshare.services import protocol
from p2pshare.services.net.client import PeerClient

pytestmark = pytest.mark.reliability

MB = 1_000_000
HONEST_SIZE = 6 * 1024 * 1024
BOMBS_ASKED = 4
GROWTH_BOUND = 64 * MB
RSS_BOUND_KIB = 150 * 1024
MANIFEST_ROWS = 1 << 17  # P2P_PEER_MANIFEST_ROWS's default


def db_bytes(node: Any) -> int:
    return sum(
        p.stat().st_size for p in (node.db_path, node.db_path.with_name("p2p.db-wal")) if p.exists()
    )


def over_budget(node: Any, username: str) -> str | None:
    try:
        return node.scalar("SELECT over_budget FROM peers WHERE username = ?", (username,))
    except sqlite3.OperationalError:  # a node without budgets has no such column
        return None


def wait_over_budget(node: Any, username: str, budget: str, timeout: float = 60) -> str:
    """Wait until the node records the peer over `budget`; returns what it recorded."""
    record: str = wait_until(
        lambda: (found := over_budget(node, username)) and budget in found and found,
        timeout,
        what=f"{node} to record {username} over {budget}",
    )
    return record


def web_peers(node: Any) -> str:
    """The peers section of the web page, as the dashboard fetches it."""
    port = wait_until(
        lambda: node.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'"),
        60,
        what="the web program's port",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=30) as reply:
        return str(json.load(reply)["sections"]["peers"])


def victim_and_honest_seeder(make_node):
    """A victim under supervisord, and a seeder sharing honest.bin (its bytes returned)."""
    victim = make_node("victim", P2P_WAIT_TIMEOUT=600)
    victim.start_supervised()
    seeder = make_node("seeder")
    honest = os.urandom(HONEST_SIZE)
    seed(seeder, "honest.bin", honest)
    seeder.start()
    return victim, seeder, honest


def test_a_manifest_bomb_is_refused_and_an_honest_download_goes_on(make_node, udp_port, fake_peer):
    victim, seeder, honest = victim_and_honest_seeder(make_node)
    bombs = [make_bomb(f"bomb-{i:02d}.bin") for i in range(20)]
    mallory = fake_peer(**hostile_fields(bombs, udp_port))

    wait_until(
        lambda: victim.holdings_of(mallory.username) == 20 and victim.holdings_of(seeder.username),
        60,
        what="the victim to record both peers' catalogs",
    )
    before = db_bytes(victim)
    bomb_downloads = [queue(victim, f"bomb-{i:02d}.bin") for i in range(BOMBS_ASKED)]
    honest_id = queue(victim, "honest.bin")

    done = wait_ended(victim, honest_id, timeout=120)
    assert done["status"] == "done", done
    assert sha256_file(victim.home / "downloads" / "honest.bin") == sha256_bytes(honest)
    record = wait_over_budget(victim, mallory.username, "P2P_PEER_MANIFEST_ROWS")
    assert over_budget(victim, seeder.username) is None
    shown = {p["username"]: p["over_budget"] for p in victim.p2pctl_json("peers")}
    assert shown == {mallory.username: record, seeder.username: None}
    assert f"over budget: {record}" in web_peers(victim)

    rows = victim.scalar("SELECT count(*) FROM chunks")
    assert rows <= MANIFEST_ROWS + protocol.chunk_count(HONEST_SIZE, 256 * 1024)
    assert db_bytes(victim) - before <= GROWTH_BOUND, (before, db_bytes(victim))
    # The bombs' downloads wait, saying why, rather than storing what the peer claims.
    reasons = victim.sql(
        f"SELECT reason FROM downloads WHERE id IN ({','.join('?' * len(bomb_downloads))})",
        tuple(bomb_downloads),
    )
    assert all(r and "budget" in r for (r,) in reasons), reasons
    for role, (pid, _) in victim.heartbeats().items():
        assert status_kib(pid, "VmHWM") <= RSS_BOUND_KIB, role
    # Nothing learned from a peer and not proven by bytes is served as this node's own.
    bomb = bombs[0]
    with PeerClient("127.0.0.1", victim.tcp_port() or 0, key=None) as client:
        assert client.manifests({bomb.key: bomb.size}).good == {}


def test_a_catalog_past_its_budget_is_not_stored(make_node, udp_port, fake_peer):
    budget = 2_000
    victim = make_node("victim", P2P_PEER_CATALOG_ENTRIES=budget)
    victim.start_supervised()
    seeder = make_node("seeder")
    seed(seeder, "honest.bin", os.urandom(1000))
    seeder.start()
    mallory = fake_peer(**hostile_fields([], udp_port, filler=3 * protocol.PAGE_ENTRIES))

    wait_over_budget(victim, mallory.username, "P2P_PEER_CATALOG_ENTRIES")
    assert victim.holdings_of(mallory.username) <= budget
    assert victim.scalar("SELECT count(*) FROM files") <= budget + 1
    wait_until(lambda: victim.holdings_of(seeder.username) == 1, 30, what="the honest catalog")
    assert over_budget(victim, seeder.username) is None


def test_an_offer_switch_does_not_fetch_a_bomb_offered_for_the_same_file(
    make_node, udp_port, fake_peer
):
    """A download whose seeder left looks at other offers of its SHA-256: a made-up one
    (the real SHA-256, another root, 2^20 chunks claimed) is not fetched, and the download
    keeps to the file asked for rather than moving to a 16 GiB claim."""
    victim, seeder, honest = victim_and_honest_seeder(make_node)
    wait_until(lambda: victim.holdings_of(seeder.username) == 1, 60, what="the honest catalog")
    seeder.stop()
    download_id = queue(victim, "honest.bin")  # its peer is still listed, until its TTL
    mallory = fake_peer(
        **hostile_fields([make_bomb("decoy.bin", sha=sha256_bytes(honest))], udp_port)
    )

    wait_over_budget(victim, mallory.username, "P2P_PEER_MANIFEST_ROWS", timeout=90)
    assert victim.scalar("SELECT count(*) FROM chunks") == 0
    assert mallory.count("manifest") == 0
    row = victim.sql("SELECT sha256, size, status FROM downloads WHERE id = ?", (download_id,))
    assert row == [(sha256_bytes(honest), HONEST_SIZE, "queued")]

"""A lying manifest cannot poison a download (protocol v2: manifests prove their root).

A peer that offers an honest file's SHA-256 with a manifest it made up is a different
offer (another root), or it is refused outright (a manifest that does not hash to the
root it claims). Either way the honest seeders' chunks are never judged against the
lie, none of them is marked bad, and the download completes from them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time

import pytest
from fakepeer import FakeFile
from node import wait_until
from nodetools import download, queue, seed, sha256_file, wait_ended

from p2pshare.services import protocol

pytestmark = pytest.mark.reliability

CHUNK = 64 * 1024
CHUNKS = 24


def bogus_manifest(sha: str, count: int) -> list[str]:
    """Made-up chaining states that end, as a manifest must, in the file's real SHA-256."""
    return [secrets.token_hex(32) for _ in range(count - 1)] + [sha]


def test_a_bogus_manifest_announced_first_cannot_poison_the_download(
    make_node, udp_port, fake_peer, announce
):
    data = os.urandom(CHUNKS * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    leech = make_node("leech", P2P_WAIT_TIMEOUT=120)
    leech.start()

    # The liar serves the real bytes, but under a manifest it made up (self-consistent:
    # the root it offers is what its entries hash to), so every chunk it sends fails.
    lie = FakeFile("popular.bin", data, CHUNK, manifest=bogus_manifest(sha, CHUNKS))
    liar = fake_peer(files=[lie], udp_port=udp_port, username="liar")
    # A thief offers the honest root (which it can copy from any catalog) with a made-up
    # manifest: the manifest does not hash to that root, so it is refused alone.
    honest_root = protocol.manifest_root(FakeFile("x", data, CHUNK).hashes())
    stolen = protocol.FileKey(sha, CHUNK, honest_root)
    thief = fake_peer(
        catalog=protocol.encode_catalog(
            [protocol.CatalogEntry("popular.bin", stolen, len(data), None)], 1
        ),
        manifests=lambda req: protocol.encode_manifests({stolen: lie.hashes()}),
        username="thief",
    )
    # The thief announces until it is marked bad, as a live node would: heard once, it
    # would expire after P2P_PEER_TTL, and its offer (with its mark) with it.
    thief_seq = iter(range(1, 10_000))
    last_heard = [0.0]

    def thief_heard() -> None:
        if time.monotonic() - last_heard[0] < 1.0:  # once a second, as a node would
            return
        last_heard[0] = time.monotonic()
        announce(
            leech.udp_port,
            node_id=thief.node_id,
            username="thief",
            tcp_port=thief.port,
            seq=next(thief_seq),
        )

    thief_heard()

    # Manifests come when a download needs one: both offers are recorded, neither proven.
    def offers() -> int:
        thief_heard()
        return leech.scalar("SELECT count(*) FROM holdings WHERE name = 'popular.bin'")

    wait_until(
        lambda: offers() == 2,
        20,
        what="the leech to record the liar's and the thief's offers",
    )
    download_id = queue(leech, "popular.bin")

    # Whichever lying offer the download takes first: the liar's chunks fail (its own
    # manifest proves its root), the thief's manifest does not prove the honest root. Each
    # is refused and marked bad for the file, and the download looks for another offer.
    def bad() -> set[tuple[str, int]]:
        return set(leech.sql("SELECT address, tcp_port FROM bad_peers"))

    def both_marked() -> bool:
        thief_heard()
        return bad() == liars

    liars = {("127.0.0.1", liar.port), ("127.0.0.1", thief.port)}
    wait_until(both_marked, 30, what="the liar and the thief to be marked bad")
    assert "refused the manifest of" in leech.log("downloader")
    assert download(leech, download_id)["status"] in ("active", "waiting", "queued")

    # Now the honest seeders come: the download moves to their offer and completes.
    seeders = [make_node(f"seed{i}", P2P_CHUNK_SIZE=CHUNK) for i in range(2)]
    for node in seeders:
        seed(node, "popular.bin", data)
        node.start()
    ended = wait_ended(leech, download_id, timeout=120)

    assert ended["status"] == "done", ended
    assert sha256_file(leech.home / "downloads" / "popular.bin") == sha
    # No honest seeder among them. (A liar's mark may be gone by now: a mark goes with its
    # offer's files row once the liar's announcement expired and nothing refers to it.)
    assert bad() <= liars
    honest_ports = {node.tcp_port() for node in seeders}
    contributed = leech.sql(
        "SELECT tcp_port, chunks FROM download_sources WHERE download_id = ? AND chunks > 0",
        (download_id,),
    )
    assert contributed and {port for port, _ in contributed} <= honest_ports
    assert sum(chunks for _, chunks in contributed) == CHUNKS
    assert "switched to the manifest" in leech.log("downloader")
    # The thief's lie never became a manifest the leech trusts.
    assert thief.count("manifest") >= 1
    for role in ("listener", "downloader"):
        assert "Traceback" not in leech.log(role)

"""Downloads between real role processes on loopback, with honest and lying peers."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable

import pytest
from chunkgate import ChunkGate
from fakepeer import FakeFile, FakePeer
from node import Node, pick_udp_port, seed, umask, wait_until

pytestmark = pytest.mark.integration

CHUNK = 16384


def holders(node: Node, name: str, *, whole: bool = False) -> int:
    query = "SELECT count(DISTINCT peer_id) FROM holdings WHERE name = ?"
    if whole:
        query += " AND bitfield IS NULL"
    return int(node.scalar(query, (name,)) or 0)


def wait_known(node: Node, name: str, peers: int = 1, timeout: float = 60) -> None:
    wait_until(lambda: holders(node, name) >= peers, timeout, what=f"{peers} peers with {name}")


def last_download(node: Node) -> dict[str, object]:
    rows = node.p2pctl_json("history")
    assert rows, "no download in history"
    return dict(rows[0])


def wait_download(node: Node, timeout: float = 60) -> dict[str, object]:
    def ended() -> dict[str, object] | None:
        d = last_download(node)
        return d if d["status"] in ("done", "failed", "cancelled") else None

    return dict(wait_until(ended, timeout, what="the download to end", interval=0.2))


def gated_seeder(make_node: Callable[..., Node], label: str, **settings: object) -> Node:
    """A seeder announcing on a UDP port of its own, so others reach it only through a
    ChunkGate (tests/integration/chunkgate.py)."""
    return make_node(label, udp_port=pick_udp_port(), P2P_CHUNK_SIZE=CHUNK, **settings)


def sources(node: Node) -> dict[int, int]:
    """tcp_port -> verified chunks, of the node's download sources."""
    return dict(node.sql("SELECT tcp_port, chunks FROM download_sources"))


def test_one_peer_byte_identical_then_reshared(make_node: Callable[..., Node]) -> None:
    seeder, leech = make_node("seed", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    seeder.start()
    leech.start()
    data = os.urandom(40 * CHUNK + 123)
    seed(seeder, "videos/talk.bin", data)
    wait_known(leech, "videos/talk.bin")

    done = leech.p2pctl("download", "talk.bin", timeout=120)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    got = leech.home / "downloads" / "videos" / "talk.bin"
    assert got.read_bytes() == data
    assert stat.S_IMODE(got.stat().st_mode) == 0o666 & ~umask()  # as cp would make it
    d = last_download(leech)
    assert d["status"] == "done" and d["saved_as"] == "videos/talk.bin"
    assert d["bytes_done"] == len(data) and d["bad_chunks"] == 0
    # The server records uploads in one transaction every half second, not at each chunk.
    wait_until(
        lambda: seeder.scalar("SELECT count(*) FROM uploads") >= 41, 30, what="the uploads rows"
    )
    assert not list((leech.home / "temp").iterdir())
    # The finished download is shared onward, without hashing it again.
    assert (
        leech.scalar(
            "SELECT count(*) FROM local_files WHERE root = 'download' AND name = 'videos/talk.bin'"
        )
        == 1
    )
    wait_until(lambda: holders(seeder, "videos/talk.bin") == 1, 60, what="the seeder to see it")


def test_chunk_boundary_sizes(make_node: Callable[..., Node]) -> None:
    seeder, leech = make_node("seed", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    seeder.start()
    leech.start()
    sizes = {"empty": 0, "one": 1, "short": CHUNK - 1, "exact": CHUNK, "over": CHUNK + 1}
    contents = {name: os.urandom(size) for name, size in sizes.items()}
    for name, data in contents.items():
        seed(seeder, f"{name}.bin", data)
    for name in contents:
        wait_known(leech, f"{name}.bin")
    for name, data in contents.items():
        done = leech.p2pctl("download", f"{name}.bin", timeout=60)
        assert done.returncode == 0, (name, done.stderr)
        assert (leech.home / "downloads" / f"{name}.bin").read_bytes() == data, name


def test_three_seeders_share_the_work(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    # Each seeder is reached through a gate that lets at most 80 of the 256 chunks through
    # until all three have delivered some: no seeder can take every chunk before the
    # others connect, however the machine times the connections.
    seeders = [gated_seeder(make_node, f"s{i}", P2P_UPLOAD_LIMIT=2_000_000) for i in range(3)]
    leech = make_node("leech")
    for n in (*seeders, leech):
        n.start(wait=False)
    for n in (*seeders, leech):
        n.wait_alive()
    gates = [chunk_gate(s, leech.udp_port, budget=80) for s in seeders]
    data = os.urandom(256 * CHUNK)
    for s in seeders:
        seed(s, "shared.bin", data)
    wait_known(leech, "shared.bin", peers=3)

    assert leech.p2pctl("download", "shared.bin", "--no-wait").returncode == 0
    wait_until(
        lambda: all(sources(leech).get(g.port) for g in gates),
        60,
        what=f"chunks from all three seeders ({gates})",
    )
    for g in gates:
        g.open()
    d = wait_download(leech, timeout=120)

    assert d["status"] == "done", d
    assert (leech.home / "downloads" / "shared.bin").read_bytes() == data
    # Each server records its uploads every half second: wait for the last flush.
    wait_until(
        lambda: all(int(s.scalar("SELECT count(*) FROM uploads") or 0) > 0 for s in seeders),
        30,
        what="every seeder's uploads rows",
    )
    delivered = leech.sql("SELECT tcp_port, chunks FROM download_sources WHERE chunks > 0")
    assert len(delivered) == 3, delivered


def test_a_lone_seeder_gets_two_connections_that_both_carry_chunks(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    """With one source, two connections each receive, hash and write their own chunks
    (downloader.job's _connections): both ask for chunks before any passes the gate, and
    the file still arrives whole."""
    seeder = gated_seeder(make_node, "seed")
    leech = make_node("leech")
    for n in (seeder, leech):
        n.start(wait=False)
    for n in (seeder, leech):
        n.wait_alive()
    gate = chunk_gate(seeder, leech.udp_port, budget=0)
    data = os.urandom(64 * CHUNK + 123)
    seed(seeder, "pair.bin", data)
    wait_known(leech, "pair.bin")

    assert leech.p2pctl("download", "pair.bin", "--no-wait").returncode == 0
    wait_until(lambda: gate.chunk_connections == 2, 60, what=f"two connections asking ({gate})")
    gate.open()
    d = wait_download(leech)

    assert d["status"] == "done", d
    assert (leech.home / "downloads" / "pair.bin").read_bytes() == data
    assert gate.chunk_connections == 2, gate


def test_file_no_single_peer_holds_whole(
    make_node: Callable[..., Node], udp_port: int, fake_peer: Callable[..., FakePeer]
) -> None:
    leech = make_node("leech")
    leech.start()
    data = os.urandom(20 * CHUNK + 7)
    count = 21
    evens = FakeFile("split.bin", data, CHUNK, have={i for i in range(count) if i % 2 == 0})
    odds = FakeFile("split.bin", data, CHUNK, have={i for i in range(count) if i % 2 == 1})
    a = fake_peer(files=[evens], udp_port=udp_port, username="evens")
    b = fake_peer(files=[odds], udp_port=udp_port, username="odds")
    wait_known(leech, "split.bin", peers=2)
    assert holders(leech, "split.bin", whole=True) == 0

    done = leech.p2pctl("download", "split.bin", timeout=60)

    assert done.returncode == 0, done.stderr
    assert (leech.home / "downloads" / "split.bin").read_bytes() == data
    assert a.chunks_served > 0 and b.chunks_served > 0
    assert a.chunks_served + b.chunks_served >= count


def test_lying_peer_is_marked_bad_and_the_file_still_arrives(
    make_node: Callable[..., Node], udp_port: int, fake_peer: Callable[..., FakePeer]
) -> None:
    honest = make_node("honest", P2P_CHUNK_SIZE=CHUNK, P2P_UPLOAD_LIMIT=1_000_000)
    leech = make_node("leech")
    honest.start()
    leech.start()
    data = os.urandom(64 * CHUNK)
    seed(honest, "doc.bin", data)
    liar = fake_peer(
        files=[FakeFile("doc.bin", data, CHUNK)], udp_port=udp_port, username="liar", lie_all=True
    )
    wait_known(leech, "doc.bin", peers=2)

    done = leech.p2pctl("download", "doc.bin", timeout=120)

    assert done.returncode == 0, done.stderr
    got = (leech.home / "downloads" / "doc.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    bad = leech.sql("SELECT address, tcp_port, bad_chunks FROM bad_peers")
    assert [(a, p) for a, p, _ in bad] == [("127.0.0.1", liar.port)]
    peers = {p["username"]: p for p in leech.p2pctl_json("peers")}
    assert peers["liar"]["bad_files"] == 1
    assert peers[honest.username]["bad_files"] == 0
    assert last_download(leech)["bad_chunks"] >= 1
    assert "failed verification" in leech.log("downloader")


def test_sigkill_of_the_downloader_resumes_without_refetching(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = gated_seeder(make_node, "seed", P2P_UPLOAD_LIMIT=1_500_000)
    leech = make_node("leech")
    seeder.start()
    leech.start()
    # A third of the chunks, then the gate holds the rest until the downloader was killed
    # and restarted: the kill lands mid-download on any machine.
    gate = chunk_gate(seeder, leech.udp_port, budget=100)
    data = os.urandom(300 * CHUNK)
    seed(seeder, "big.bin", data)
    wait_known(leech, "big.bin")
    assert leech.p2pctl("download", "big.bin", "--no-wait").returncode == 0
    wait_until(
        lambda: (
            last_download(leech)["bytes_done"] >= len(data) // 4
            and gate.holding(hashlib.sha256(data).hexdigest())
        ),
        60,
        what=f"a quarter of the file, and more asked for ({gate})",
        interval=0.1,
    )

    leech.procs["downloader"].kill()
    leech.procs["downloader"].wait(timeout=10)
    before = last_download(leech)["bytes_done"]
    assert 0 < before < len(data)  # at most the third the gate let through
    leech.start(("downloader",))
    gate.open()
    d = wait_download(leech, timeout=120)

    assert d["status"] == "done", d
    assert (leech.home / "downloads" / "big.bin").read_bytes() == data
    received = int(leech.scalar("SELECT bytes_received FROM downloads"))
    assert received < 2 * len(data), (received, len(data))


def test_a_peer_killed_mid_transfer_costs_only_its_chunks(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    first = gated_seeder(make_node, "first", P2P_UPLOAD_LIMIT=1_500_000)
    second = gated_seeder(make_node, "second", P2P_UPLOAD_LIMIT=1_500_000)
    leech = make_node("leech", P2P_PEER_TTL=60)
    for n in (first, second, leech):
        n.start()
    # Each gate lets 60 of the 300 chunks through: the kill lands mid-download.
    gate_first = chunk_gate(first, leech.udp_port, budget=60)
    gate_second = chunk_gate(second, leech.udp_port, budget=60)
    data = os.urandom(300 * CHUNK)
    seed(first, "movie.bin", data)
    seed(second, "movie.bin", data)
    wait_known(leech, "movie.bin", peers=2)
    assert leech.p2pctl("download", "movie.bin", "--no-wait").returncode == 0
    wait_until(
        lambda: (
            last_download(leech)["bytes_done"] >= len(data) // 5
            and sources(leech).get(gate_first.port)
        ),
        60,
        what=f"a fifth of the file, some of it from the first seeder ({gate_first})",
        interval=0.1,
    )

    first.procs["server"].kill()
    first.procs["server"].wait(timeout=10)
    assert last_download(leech)["status"] in ("active", "waiting")  # 120 of 300 at most
    gate_second.open()
    d = wait_download(leech, timeout=120)

    assert d["status"] == "done", d
    assert (leech.home / "downloads" / "movie.bin").read_bytes() == data
    first.start(("server",))  # so teardown can stop it cleanly


def test_an_existing_file_is_never_overwritten(make_node: Callable[..., Node]) -> None:
    seeder, leech = make_node("seed", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    seeder.start()
    leech.start()
    data = os.urandom(5 * CHUNK)
    seed(seeder, "report.pdf", data)
    mine = leech.home / "downloads" / "report.pdf"
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(b"my own report")
    wait_known(leech, "report.pdf")

    done = leech.p2pctl("download", "report.pdf", timeout=60)

    assert done.returncode == 0, done.stderr
    assert mine.read_bytes() == b"my own report"
    assert (leech.home / "downloads" / "report (1).pdf").read_bytes() == data
    assert last_download(leech)["saved_as"] == "report (1).pdf"
    assert "report (1).pdf" in done.stdout


def test_missing_chunks_make_the_download_wait_then_fail_with_the_reason(
    make_node: Callable[..., Node], udp_port: int, fake_peer: Callable[..., FakePeer]
) -> None:
    leech = make_node("leech", P2P_WAIT_TIMEOUT=3)
    leech.start()
    data = os.urandom(8 * CHUNK)
    fake_peer(
        files=[FakeFile("half.bin", data, CHUNK, have={0, 1, 2, 3})],
        udp_port=udp_port,
        username="half",
    )
    wait_known(leech, "half.bin")

    done = leech.p2pctl("download", "half.bin", timeout=60)

    assert done.returncode != 0
    assert "no online peer holds chunks 4, 5, 6, 7" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (leech.home / "downloads" / "half.bin").exists()
    assert not list((leech.home / "temp").iterdir())
    d = last_download(leech)
    assert d["status"] == "failed" and "chunks 4, 5, 6, 7" in str(d["reason"])


def test_cancel_stops_the_download_and_cleans_up(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = gated_seeder(make_node, "seed")
    leech = make_node("leech")
    seeder.start()
    leech.start()
    gate = chunk_gate(seeder, leech.udp_port, budget=20)  # of 200: still running at the cancel
    data = os.urandom(200 * CHUNK)
    seed(seeder, "slow.bin", data)
    wait_known(leech, "slow.bin")
    assert leech.p2pctl("download", "slow.bin", "--no-wait").returncode == 0
    wait_until(
        lambda: (
            last_download(leech)["bytes_done"] > 0
            and gate.holding(hashlib.sha256(data).hexdigest())
        ),
        60,
        what=f"some progress, and more asked for ({gate})",
    )

    cancelled = leech.p2pctl("cancel", "slow.bin")

    assert cancelled.returncode == 0, cancelled.stderr
    wait_until(lambda: not list((leech.home / "temp").iterdir()), 30, what="temp cleaned")
    assert last_download(leech)["status"] == "cancelled"
    assert not (leech.home / "downloads" / "slow.bin").exists()
    again = leech.p2pctl("cancel", "slow.bin")
    assert again.returncode != 0 and again.stderr.startswith("error:")


def test_user_mistakes_get_one_sentence(make_node: Callable[..., Node]) -> None:
    seeder, leech = make_node("seed"), make_node("leech")
    seeder.start()
    leech.start()
    seed(seeder, "notes-a.txt", b"a" * 100)
    seed(seeder, "notes-b.txt", b"b" * 100)
    seed(seeder, "mine.txt", b"mine")
    seed(leech, "mine.txt", b"mine")
    wait_known(leech, "notes-b.txt")
    wait_known(leech, "mine.txt")
    # ...and the leecher has indexed its own copy (its scan and the seeder's announcement
    # race: a p2pctl run between them would rightly queue the download).
    wait_until(
        lambda: leech.sql("SELECT 1 FROM local_files WHERE name = 'mine.txt'"),
        30,
        what="the leecher to index its own mine.txt",
    )

    unknown = leech.p2pctl("download", "nothing-like-this")
    ambiguous = leech.p2pctl("download", "notes")
    here = leech.p2pctl("download", "mine.txt")
    sha_b = hashlib.sha256(b"b" * 100).hexdigest()
    picked = leech.p2pctl("download", f"notes@{sha_b[:10]}")

    for result in (unknown, ambiguous):
        assert result.returncode != 0
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error:")
    # A file this node has already is what the user wanted: where it is, and exit 0.
    assert here.returncode == 0, here.stderr
    assert here.stdout == f"already here: {leech.share / 'mine.txt'}\n"
    assert "notes-a.txt" in ambiguous.stderr and "notes-b.txt" in ambiguous.stderr
    assert picked.returncode == 0, picked.stderr
    assert (leech.home / "downloads" / "notes-b.txt").read_bytes() == b"b" * 100

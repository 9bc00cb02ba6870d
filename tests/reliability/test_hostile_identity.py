"""Issue 37, items 2, 3 and 5: a hostile peer on the LAN cannot take another node's identity,
and a download keeps to what the user picked.

Real nodes under supervisord; the attacker is a scripted peer (fakepeer.py), forged
datagrams built with the protocol package, or a real node of its own.

- A spoofed announcement (a fresh node id from the seeder's address and TCP port, naming
  no certificate, the seeder's, or the seeder's with its signature copied) retires nobody:
  the seeder's offers stay and its next announcements are heard.
- So a bare-name download queued from the seeder publishes the seeder's bytes, though a
  scripted peer offers another version under the name; and when the seeder's version
  leaves, it follows no other identity's version but ends naming it. Over TLS it follows
  the seeder's own new version (its certificate proven), never the other's.
- On a keyed network an announcement replayed from another address first does not lock
  the real node out; a server that does not prove the key gets no request from a client
  (P2P_ENCRYPT=off too); a weak key is refused at start in one sentence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from fakepeer import DatagramCapture, FakeFile, FakePeer, send_datagram
from node import LOOPBACK, LOOPBACK_BROADCAST, Node, wait_until
from nodetools import (
    download,
    forbidden_log_text,
    holders,
    queue,
    seed,
    sha256_bytes,
    tree,
    wait_ended,
    wait_known,
)

from p2pshare.services import protocol
from p2pshare.services.protocol.announce import _canonical as canonical

pytestmark = pytest.mark.reliability

CHUNK = 64 * 1024
SIZE = 12 * CHUNK + 17
KEY = "correct horse battery staple"
TIMEOUT = 90.0  # a bound for a busy machine, not an expectation
# Where a replay comes from: another loopback address than the nodes' 127.0.0.1.
ELSEWHERE = "127.0.0.9"


def start(*nodes: Node) -> None:
    for node in nodes:
        node.start_supervised(wait=False)
    for node in nodes:
        node.wait_alive()


def stop_role(node: Node, role: str) -> None:
    done = node.supervisorctl("stop", f"p2p:{role}")
    assert done.returncode == 0, done.stdout + done.stderr


def start_role(node: Node, role: str) -> None:
    done = node.supervisorctl("start", f"p2p:{role}")
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def held(node: Node, role: str) -> Iterator[None]:
    """The role paused (SIGSTOP) inside the block: a download queued then waits, untouched,
    until the attack has happened (p2pctl refuses to queue with the downloader stopped)."""
    pid = node.heartbeats()[role][0]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def peer_row(node: Node, node_id: str) -> tuple[str, int, int] | None:
    """(address, tcp_port, announce_seq) of the peer `node_id` as `node` records it."""
    rows = node.sql(
        "SELECT address, tcp_port, announce_seq FROM peers WHERE node_id = ?", (node_id,)
    )
    return rows[0] if rows else None


def retired(node: Node) -> set[str]:
    return {r[0] for r in node.sql("SELECT node_id FROM retired_nodes")}


def spoofs_of(seeder: Node, leech: Node, capture: DatagramCapture) -> dict[str, bytes]:
    """Announcements of fresh node ids from the seeder's address and TCP port: naming no
    certificate, naming the seeder's, and carrying the seeder's certificate and signature
    copied from its own last announcement. Keyed by node id."""
    seeder_id = seeder.node_id()
    assert seeder_id is not None
    [(fingerprint,)] = leech.sql("SELECT fingerprint FROM peers WHERE node_id = ?", (seeder_id,))
    port = seeder.tcp_port()
    assert fingerprint and port
    out = {}
    for claims in (None, fingerprint):
        node_id = secrets.token_hex(16)
        ann = protocol.Announce(node_id, "mallory", port, 1, 1, time.time(), claims)
        out[node_id] = protocol.encode_announce(ann, key=None)
    own = wait_until(lambda: capture.from_node(seeder_id), TIMEOUT, what="a seeder announcement")
    raw = json.loads(own[-1])
    if "sig" in raw:  # a node that signs: its certificate and signature, copied
        node_id = secrets.token_hex(16)
        raw.update(node=node_id, seq=1, ts=round(time.time(), 3))
        out[node_id] = canonical(raw)
    return out


def send_spoofs(leech: Node, spoofs: dict[str, bytes]) -> None:
    """Send each spoof and wait until the leech's listener has handled all of them."""
    for data in spoofs.values():
        send_datagram(data, leech.udp_port)

    def handled() -> bool:
        known = {r[0] for r in leech.sql("SELECT node_id FROM peers")} | retired(leech)
        return set(spoofs) <= known

    wait_until(handled, TIMEOUT, what="the leech to handle the spoofed announcements")


# ---------------------------------------------------------------- spoofed announcements


def test_a_spoofed_announcement_from_the_seeders_endpoint_retires_nobody(
    make_node: Callable[..., Node], capture: DatagramCapture
) -> None:
    seeder, leech = make_node("seeder", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    seed(seeder, "report.pdf", os.urandom(SIZE))
    start(seeder, leech)
    wait_known(leech, "report.pdf")
    seeder_id = seeder.node_id()
    assert seeder_id is not None

    send_spoofs(leech, spoofs_of(seeder, leech, capture))
    after = peer_row(leech, seeder_id)
    spoofed_at = after[2] if after else 0
    # The seeder's next announcement: heard (it is still the seeder), or refused as a
    # node id "a restart replaced" (the spoof took its place).
    wait_until(
        lambda: (
            ((row := peer_row(leech, seeder_id)) is not None and row[2] > spoofed_at)
            or f"restart replaced from node {seeder_id[:8]}" in leech.log("listener")
        ),
        TIMEOUT,
        what="the leech to handle the seeder's next announcement",
    )

    assert seeder_id not in retired(leech), "a spoofed announcement retired the seeder"
    assert peer_row(leech, seeder_id) is not None
    assert "restart replaced" not in leech.log("listener")
    [(seeder_peer,)] = leech.sql("SELECT id FROM peers WHERE node_id = ?", (seeder_id,))
    assert leech.sql("SELECT count(*) FROM holdings WHERE peer_id = ?", (seeder_peer,)) == [(1,)]
    assert forbidden_log_text(leech) == []


def test_a_download_publishes_the_seeders_content_whatever_is_announced(
    make_node: Callable[..., Node], capture: DatagramCapture, udp_port: int
) -> None:
    """The attack of issue 37 item 2: another peer offers its own bytes under the name, and
    a spoofed announcement tries to retire the seeder so the download moves to them."""
    honest, evil = os.urandom(SIZE), os.urandom(SIZE)
    seeder, leech = make_node("seeder", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    seed(seeder, "movie.bin", honest)
    start(seeder, leech)
    wait_known(leech, "movie.bin")
    attacker = FakePeer([FakeFile("movie.bin", evil, CHUNK)], udp_port, username="mallory")
    try:
        with held(leech, "downloader"):  # queued now, fetched once the attack has happened
            download_id = queue(leech, "movie.bin")
            attacker.start()
            wait_known(leech, "movie.bin", sha256=sha256_bytes(evil))
            send_spoofs(leech, spoofs_of(seeder, leech, capture))
        d = wait_ended(leech, download_id, timeout=TIMEOUT)
    finally:
        attacker.close()

    assert d["status"] == "done", d
    assert d["sha256"] == sha256_bytes(honest) and d["switched"] is None, d
    assert (leech.home / "downloads" / "movie.bin").read_bytes() == honest
    assert attacker.chunks_served == 0
    assert forbidden_log_text(leech) == []


def test_in_clear_a_download_follows_no_other_identity_when_its_version_leaves(
    make_node: Callable[..., Node], udp_port: int
) -> None:
    """Without TLS nothing proves who offers a version: when the seeder's version leaves,
    a bare-name download ends naming the version another peer offers, and takes none of it."""
    honest, evil = os.urandom(SIZE), os.urandom(SIZE)
    seeder, leech = make_node("seeder", P2P_CHUNK_SIZE=CHUNK), make_node("leech")
    path = seed(seeder, "movie.bin", honest)
    start(seeder, leech)
    wait_known(leech, "movie.bin")
    attacker = FakePeer([FakeFile("movie.bin", evil, CHUNK)], udp_port, username="mallory")
    try:
        with held(leech, "downloader"):
            download_id = queue(leech, "movie.bin")
            attacker.start()
            wait_known(leech, "movie.bin", sha256=sha256_bytes(evil))
            path.unlink()  # the seeder's version leaves the network
            wait_until(
                lambda: holders(leech, "movie.bin", sha256_bytes(honest)) == 0,
                TIMEOUT,
                what="the leech to see the seeder's version gone",
            )
        d = wait_ended(leech, download_id, timeout=TIMEOUT)
    finally:
        attacker.close()

    assert d["status"] == "failed", d
    assert f"movie.bin@{sha256_bytes(evil)[:8]}" in d["reason"], d
    assert d["sha256"] == sha256_bytes(honest) and d["switched"] is None, d
    assert tree(leech.home / "downloads") == {}
    assert attacker.chunks_served == 0
    print(f"reason: {d['reason']}")


def test_over_tls_a_download_follows_its_seeders_new_version_and_no_other(
    make_node: Callable[..., Node],
) -> None:
    """Over TLS the seeder's certificate is proven: its rewritten file is followed; another
    node offering its own version under the name (one that sorts first) is not."""
    v1, v2 = os.urandom(SIZE), os.urandom(SIZE)
    evil = os.urandom(SIZE)
    while sha256_bytes(evil) < sha256_bytes(v2):  # the version a tie would pick
        evil = os.urandom(SIZE)
    tls = {"P2P_ENCRYPT": "on", "P2P_CHUNK_SIZE": CHUNK}
    seeder, leech = make_node("seeder", **tls), make_node("leech", P2P_ENCRYPT="on")
    other = make_node("other", **tls)
    path = seed(seeder, "movie.bin", v1)
    start(seeder, leech, other)
    wait_known(leech, "movie.bin")
    with held(leech, "downloader"):
        download_id = queue(leech, "movie.bin")
        seed(other, "movie.bin", evil)
        path.write_bytes(v2)  # the seeder rewrites its file
        wait_known(leech, "movie.bin", sha256=sha256_bytes(evil))
        wait_known(leech, "movie.bin", sha256=sha256_bytes(v2))
        wait_until(
            lambda: holders(leech, "movie.bin", sha256_bytes(v1)) == 0,
            TIMEOUT,
            what="the leech to see v1 gone",
        )
    d = wait_ended(leech, download_id, timeout=TIMEOUT)

    assert d["status"] == "done", d
    assert d["sha256"] == sha256_bytes(v2), d
    assert "with the certificate that offered" in str(d["switched"]), d
    assert (leech.home / "downloads" / "movie.bin").read_bytes() == v2
    assert forbidden_log_text(leech) == []


# ---------------------------------------------------------------- keyed networks


def send_from(address: str, data: bytes, port: int) -> None:
    """One datagram to the loopback broadcast from another loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((address, 0))
        sock.sendto(data, (LOOPBACK_BROADCAST, port))


def test_an_announcement_replayed_from_another_address_takes_nothing(
    make_node: Callable[..., Node], capture: DatagramCapture
) -> None:
    """The victim hears a's announcement first as a replay from another address (within
    its max age): a's own later announcements still reach it, and it gets a's catalog."""
    a = make_node("keyed-a", P2P_NETWORK_KEY=KEY, P2P_ENCRYPT="off", P2P_CHUNK_SIZE=CHUNK)
    victim = make_node("victim", P2P_NETWORK_KEY=KEY, P2P_ENCRYPT="off")
    seed(a, "plans.bin", os.urandom(SIZE))
    start(victim)
    stop_role(victim, "listener")  # it has heard nothing of a when the replay comes
    start(a)
    a_id = a.node_id()
    assert a_id is not None
    wait_until(lambda: capture.from_node(a_id), TIMEOUT, what="an announcement of a")
    announcer = a.heartbeats()["announcer"][0]
    os.kill(announcer, signal.SIGSTOP)  # a falls silent, keeping its node id and seq
    try:
        captured = capture.from_node(a_id)[-1]  # inside its max age from here on
        start_role(victim, "listener")

        def replayed() -> bool:
            # Again until heard: the listener binds its port some time after it starts.
            send_from(ELSEWHERE, captured, victim.udp_port)
            return peer_row(victim, a_id) is not None

        wait_until(
            replayed, TIMEOUT, interval=0.5, what="the victim to record a's node id from the replay"
        )
        assert peer_row(victim, a_id)[0] == ELSEWHERE  # type: ignore[index]
    finally:
        os.kill(announcer, signal.SIGCONT)
    own = re.compile(rf"dropped datagram from {re.escape(LOOPBACK)}: .* from node {a_id[:8]}")
    wait_until(
        lambda: (
            ((row := peer_row(victim, a_id)) is not None and row[0] == LOOPBACK)
            or own.search(victim.log("listener"))
        ),
        TIMEOUT,
        what="the victim to handle a's own next announcement",
    )

    assert peer_row(victim, a_id)[0] == LOOPBACK, victim.log("listener")  # type: ignore[index]
    wait_known(victim, "plans.bin")
    assert forbidden_log_text(victim) == []


def test_a_client_refuses_a_server_that_does_not_prove_the_key(
    make_node: Callable[..., Node], udp_port: int
) -> None:
    """P2P_ENCRYPT=off: a server without the key takes a's port (a stopped) and answers
    the client's proof with a bare ok; the client asks it for nothing."""
    clear = {"P2P_NETWORK_KEY": KEY, "P2P_ENCRYPT": "off"}
    data = os.urandom(SIZE)
    a = make_node("keyed-a", P2P_CHUNK_SIZE=CHUNK, **clear)
    victim = make_node("victim", P2P_WAIT_TIMEOUT=TIMEOUT, **clear)
    seed(a, "plans.bin", data)
    start(a, victim)
    wait_known(victim, "plans.bin")
    port = a.tcp_port()
    assert port
    stop_role(a, "server")  # its announcer goes on announcing the port
    impostor = FakePeer(
        [FakeFile("plans.bin", data, CHUNK)], pretend_key=True, tcp_port=port
    )  # no UDP port: it never announces
    try:
        impostor.start()
        download_id = queue(victim, "plans.bin")
        wait_until(
            lambda: (
                impostor.requests_after_auth > 0
                or "did not prove the network key" in victim.log("downloader")
            ),
            TIMEOUT,
            what="the victim's downloader to talk to the impostor",
        )
        served = impostor.requests_after_auth
    finally:
        impostor.close()

    assert served == 0, f"a server without the key was asked {served} requests"
    assert download(victim, download_id)["status"] != "done"
    assert tree(victim.home / "downloads") == {}
    start_role(a, "server")  # so the teardown stops it cleanly


def test_a_weak_network_key_is_refused_at_start_in_one_sentence(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("weak", P2P_NETWORK_KEY="secret")
    node.start_supervised(wait=False)
    sentence = "P2P_NETWORK_KEY must be at least 16 characters"

    def refused(role: str) -> bool:
        path = node.home / "logs" / f"{role}.log"
        return path.exists() and sentence in path.read_text(errors="replace")

    roles = ("server", "announcer", "listener", "downloader")
    wait_until(lambda: all(refused(r) for r in roles), TIMEOUT, what="every role to refuse")
    for role in roles:
        lines = {line for line in node.log(role).splitlines() if line.strip()}
        assert len(lines) == 1 and sentence in lines.pop(), node.log(role)
    status = node.p2pctl("status")
    assert status.returncode != 0
    said = status.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("error: ") and sentence in said[0], status
    assert "Traceback" not in status.stdout + status.stderr

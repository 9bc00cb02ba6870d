"""Case: a keyed group is private in both senses. What crosses the wire of a keyed download
is ciphertext (and plaintext with P2P_ENCRYPT=off, so the capture can fail); a man in the
middle with a certificate of its own is refused; clear and encrypting nodes say why they
cannot talk; a restarted peer keeps its fingerprint, and replays cannot change it.

The wire is seen through a relay the test puts between the nodes (tests/integration/
taprelay.py): the seeder announces on a UDP port of its own, and the relay re-announces
it (signed again with the key the test holds) with its own TCP port.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakepeer import DatagramCapture, send_datagram
from node import Node, pick_udp_port, wait_until
from nodetools import raw_exchange, seed, split_frames, wait_known
from taprelay import TapRelay

from p2pshare.services import protocol
from p2pshare.services.net import identity
from p2pshare.services.net.client import PeerClient
from p2pshare.services.net.tls import NodeTls

pytestmark = pytest.mark.reliability

KEY = "correct horse battery staple"
WRONG_KEY = "another key entirely"
# What the wire uses (P2P_NETWORK_KEY through scrypt), for raw clients and relays.
WIRE_KEY = protocol.derive_network_key(KEY)
LOOPBACK = "127.0.0.1"
TIMEOUT = 90.0  # a bound for a busy machine, not an expectation


@pytest.fixture
def relays() -> Iterator[Callable[..., TapRelay]]:
    made: list[TapRelay] = []

    def factory(seeder: Node, to_udp_port: int, **kwargs: object) -> TapRelay:
        relay = TapRelay(seeder.udp_port, seeder.tcp_port(), to_udp_port, **kwargs)  # type: ignore[arg-type]
        made.append(relay)
        return relay

    yield factory
    for relay in made:
        relay.close()


def secret_file(marker: bytes) -> bytes:
    """Random bytes with the marker written in at several places, chunk boundaries too."""
    data = bytearray(os.urandom(3 * 1024 * 1024))
    for at in (0, 1000, 256 * 1024 - 5, 2 * 1024 * 1024, len(data) - len(marker)):
        data[at : at + len(marker)] = marker
    return bytes(data)


@pytest.mark.parametrize("encrypt", ["auto", "off"])
def test_a_keyed_download_shows_no_plaintext_on_the_wire(
    make_node: Callable[..., Node], relays: Callable[..., TapRelay], encrypt: str
) -> None:
    marker = b"P2P-PLAINTEXT-" + secrets.token_hex(8).encode()
    name = f"secret-{secrets.token_hex(4)}.bin"
    settings = {"P2P_NETWORK_KEY": KEY, "P2P_ENCRYPT": encrypt}
    seeder = make_node("seed", udp_port=pick_udp_port(), **settings)
    leech = make_node("leech", **settings)
    data = secret_file(marker)
    seed(seeder, name, data)
    seeder.start()
    leech.start()
    relay = relays(seeder, leech.udp_port, key=WIRE_KEY)
    wait_known(leech, name, timeout=TIMEOUT)

    done = leech.p2pctl("download", name, timeout=TIMEOUT)

    assert done.returncode == 0, done.stderr
    assert (leech.home / "downloads" / name).read_bytes() == data
    wire = relay.captured()
    assert len(wire) > len(data), relay  # the whole file crossed the relay
    [(tls,)] = leech.sql("SELECT tls FROM peers")
    # Only the welcome is in clear under TLS; the key proof and the requests are not.
    requests = (b'"op":"auth"', b'"op":"changes"', b'"op":"get"')
    if encrypt == "auto":  # a network key: TLS on every connection
        assert tls == 1
        assert marker not in wire, "the file's bytes crossed the wire in clear"
        assert not [r for r in requests if r in wire], "requests crossed the wire in clear"
        assert b'"tls":true' in wire
    else:  # the same capture sees everything in clear: it would have caught a leak
        assert tls == 0
        assert marker in wire and all(r in wire for r in requests)


def impostor_context(folder: Path) -> ssl.SSLContext:
    """A TLS server with a certificate of its own, as a relay in the middle would have."""
    own = identity.load_or_create(folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(own.path)
    return ctx


def test_a_relay_with_its_own_certificate_is_refused(
    make_node: Callable[..., Node], relays: Callable[..., TapRelay], tmp_path: Path
) -> None:
    # Encrypting without a key: announcements are not signed, so the man in the middle
    # can announce himself under the seeder's fingerprint; the certificate gives him away.
    seeder = make_node("seed", udp_port=pick_udp_port(), P2P_ENCRYPT="on")
    leech = make_node("leech", P2P_ENCRYPT="on")
    seed(seeder, "private.bin", os.urandom(64 * 1024))
    seeder.start()
    leech.start()
    relay = relays(seeder, leech.udp_port, impostor=impostor_context(tmp_path / "mitm"))
    seeder_fp = seeder.scalar("SELECT value FROM role_settings WHERE name = 'fingerprint'")

    wait_until(
        lambda: "is not the one it announced" in leech.log("listener"),
        TIMEOUT,
        what="the leech to refuse the impostor's certificate",
    )

    # It knew the peer by the seeder's fingerprint, talked to the impostor, learned nothing.
    assert leech.sql("SELECT fingerprint, tls FROM peers") == [(seeder_fp, 1)]
    assert leech.sql("SELECT count(*) FROM holdings") == [(0,)]
    assert relay.handshakes_refused >= 1
    assert b"(the client spoke to the impostor)" not in relay.captured()
    assert not any((leech.home / "downloads").iterdir())
    done = leech.p2pctl("download", "private.bin")
    assert done.returncode != 0 and "no file on the network" in done.stderr


def test_clear_and_encrypting_nodes_say_why_they_cannot_talk(
    make_node: Callable[..., Node],
) -> None:
    private = make_node("private", P2P_ENCRYPT="on")
    public = make_node("public", P2P_ENCRYPT="off")
    seed(private, "a.bin", b"a" * 1000)
    seed(public, "b.bin", b"b" * 1000)
    private.start()
    public.start()

    for node, other, why in [
        (private, public, "it does not encrypt and this node does"),
        (public, private, "it encrypts (P2P_ENCRYPT=on, or a network key) and this node does not"),
    ]:
        wait_until(lambda n=node, w=why: w in n.log("listener"), TIMEOUT, what=f"{node}: {why}")
        [peer] = node.p2pctl_json("peers")
        assert peer["username"] == other.username and peer["link"].startswith("cannot talk")
        table = node.p2pctl("peers").stdout
        assert "cannot talk" in table, table
        assert node.sql("SELECT count(*) FROM holdings") == [(0,)]
    # One line each, not one per announcement.
    assert private.log("listener").count("it does not encrypt and this node does") == 1


def test_a_restarted_peer_keeps_its_fingerprint_and_replays_cannot_change_it(
    make_node: Callable[..., Node], udp_port: int
) -> None:
    capture = DatagramCapture(udp_port)
    try:
        peer = make_node("peer", P2P_NETWORK_KEY=KEY)
        watcher = make_node("watcher", P2P_NETWORK_KEY=KEY)
        peer.start()
        watcher.start()
        wait_until(lambda: watcher.sees(peer), TIMEOUT, what="the watcher to see the peer")
        first_id = peer.node_id()
        [(fingerprint,)] = watcher.sql("SELECT fingerprint FROM peers")
        assert fingerprint and len(fingerprint) == 64
        old = capture.from_node(first_id)
        assert old

        peer.restart(("announcer",))
        wait_until(
            lambda: peer.node_id() != first_id and watcher.sees(peer),
            TIMEOUT,
            what="the watcher to see the restarted peer",
        )
        dropped = watcher.log("listener").count("dropped datagram")
        for data in old:  # the old announcements, replayed
            send_datagram(data, udp_port)
        wait_until(
            lambda: watcher.log("listener").count("dropped datagram") > dropped,
            TIMEOUT,
            what="the listener to refuse the replays",
        )
    finally:
        capture.close()
    rows = watcher.sql("SELECT node_id, fingerprint FROM peers")
    assert rows == [(peer.node_id(), fingerprint)], rows
    status = peer.p2pctl_json("status")
    assert status["fingerprint"] == fingerprint
    assert protocol.short_fingerprint(fingerprint) in watcher.p2pctl("peers").stdout


def test_under_tls_a_wrong_key_learns_nothing_not_even_the_catalog(
    make_node: Callable[..., Node],
) -> None:
    a = make_node("keyed-a", P2P_NETWORK_KEY=KEY)
    b = make_node("keyed-b", P2P_NETWORK_KEY=KEY)
    wrong = make_node("wrong", P2P_NETWORK_KEY=WRONG_KEY)
    seed(a, "plans.bin", b"the plans" * 1000)
    for node in (a, b, wrong):
        node.start()
    wait_known(b, "plans.bin", timeout=TIMEOUT)
    wait_until(
        lambda: "HMAC does not match our network key" in wrong.log("listener"),
        TIMEOUT,
        what="the wrong-key node to refuse the group's announcements",
    )
    assert wrong.sql("SELECT count(*) FROM peers") == [(0,)]
    [(a_fp,)] = b.sql("SELECT fingerprint FROM peers")
    port = a.tcp_port()
    assert port
    tls = NodeTls(identity.load_or_create(wrong.home / "identity"), encrypt=True)
    link = tls.link(True, a_fp)  # as if it knew a's fingerprint: it does not even

    # No key, a wrong key, a clear client: nobody gets past the TLS handshake and proof.
    with pytest.raises(protocol.WrongNetworkKey):
        PeerClient(LOOPBACK, port, key=None, link=link).connect()
    with pytest.raises(protocol.RemoteRefused):
        PeerClient(LOOPBACK, port, key=protocol.derive_network_key(WRONG_KEY), link=link).connect()
    clear = split_frames(raw_exchange(port, protocol.encode_request(protocol.CatalogRequest())))
    assert len(clear) == 1 and clear[0]["op"] == "welcome" and clear[0]["tls"] is True
    wait_until(lambda: "does not speak TLS" in a.log("server"), TIMEOUT, what="the refusal logged")
    # The right key, through the same pinned TLS: the catalog.
    with PeerClient(LOOPBACK, port, key=WIRE_KEY, link=link) as client:
        _, entries = client.catalog()
    assert [e.name for e in entries] == ["plans.bin"]


def test_bytes_that_are_not_tls_inside_a_tls_connection_cost_one_line(
    make_node: Callable[..., Node],
) -> None:
    """A peer (or the wire) breaking the TLS stream after the handshake is bad network
    input: the server ends that connection with one line, no traceback, and serves on."""
    a = make_node("keyed-a", P2P_NETWORK_KEY=KEY)
    b = make_node("keyed-b", P2P_NETWORK_KEY=KEY)
    seed(a, "plans.bin", b"the plans" * 1000)
    for node in (a, b):
        node.start()
    wait_known(b, "plans.bin", timeout=TIMEOUT)
    [(a_fp,)] = b.sql("SELECT fingerprint FROM peers")
    port = a.tcp_port()
    assert port
    link = NodeTls(identity.load_or_create(b.home / "identity"), encrypt=True).link(True, a_fp)
    client = PeerClient(LOOPBACK, port, key=WIRE_KEY, link=link)
    client.connect()
    try:
        raw = socket.socket(fileno=os.dup(client.sock.fileno()))
        raw.sendall(b"\x17\x03\x03\x00\x10" + b"not a sealed record")
        wait_until(
            lambda: "TLS connection from 127.0.0.1 ended" in a.log("server"),
            TIMEOUT,
            what="the broken TLS stream logged",
        )
        raw.close()
    finally:
        client.close()
    with PeerClient(LOOPBACK, port, key=WIRE_KEY, link=link) as again:
        _, entries = again.catalog()
    assert [e.name for e in entries] == ["plans.bin"]
    assert "Traceback" not in a.log("server")

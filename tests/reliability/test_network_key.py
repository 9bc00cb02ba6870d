"""Case 8: P2P_NETWORK_KEY keeps a network closed, and announcements cannot be replayed.

Two nodes share a key. A node without a key and a node with another key must
never appear in their peers (nor they in its), and a raw client that does not
prove the key gets no byte of a chunk and no catalog: the chunk server answers
with an error and closes. An announcement captured off the wire (a socket bound
beside the listeners with SO_REUSEADDR + SO_REUSEPORT) and sent again to
127.255.255.255 is refused as a replay and changes nothing in the database;
so is the replay of an announcement whose node id is gone from the peers table,
because its announcer restarted (a new node id) or because the peer expired.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import pytest
from fakepeer import DatagramCapture, send_datagram
from node import LOOPBACK, Node, wait_until
from nodetools import forbidden_log_text, raw_exchange, seed, split_frames, wait_known

from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.net.client import PeerClient
from p2pshare.services.protocol import FileKey

pytestmark = pytest.mark.reliability

KEY = "correct horse battery staple"
OTHER_KEY = "another network entirely"
# What the wire uses (P2P_NETWORK_KEY through scrypt), for raw clients.
WIRE_KEY = protocol.derive_network_key(KEY)
CHUNK = 16 * 1024
# Long enough that no peer expires while a test looks at the peers table.
PEER_TTL = 60
# What each listener logs when it drops an announcement (services/protocol/announce.py).
NO_MAC = "announcement carries no valid network key HMAC"
BAD_MAC = "announcement HMAC does not match our network key"
UNEXPECTED_MAC = "announcement carries a network key HMAC and we have no network key"


def peer_names(node: Node) -> set[str]:
    return {row[0] for row in node.sql("SELECT username FROM peers")}


def snapshot(node: Node) -> dict[str, list[tuple[object, ...]]]:
    """What an announcement could change: peers and what they hold."""
    return {
        "peers": node.sql("SELECT * FROM peers ORDER BY id"),
        "holdings": node.sql("SELECT * FROM holdings ORDER BY id"),
        "files": node.sql("SELECT id, sha256 FROM files ORDER BY id"),
    }


def dropped(node: Node) -> int:
    """Datagrams the node's listener has dropped so far (one log line each)."""
    return node.log("listener").count("dropped datagram")


def wait_caught_up(node: Node, capture: DatagramCapture, node_id: str) -> None:
    """Wait until `node` has handled the last announcement `node_id` sent (its announcer
    is stopped), so nothing but what the test sends next can change its peers table."""

    def caught_up() -> bool:
        sent = [json.loads(d)["seq"] for d in capture.from_node(node_id)]
        seq = node.scalar("SELECT announce_seq FROM peers WHERE node_id = ?", (node_id,))
        return bool(sent) and seq == max(sent)

    wait_until(caught_up, 60, what=f"{node} to handle the last announcement of {node_id[:8]}")


def keyed_pair(make_node: Callable[..., Node], **settings: object) -> tuple[Node, Node]:
    a = make_node(
        "keyed-a", P2P_NETWORK_KEY=KEY, P2P_PEER_TTL=PEER_TTL, P2P_CHUNK_SIZE=CHUNK, **settings
    )
    b = make_node("keyed-b", P2P_NETWORK_KEY=KEY, P2P_PEER_TTL=PEER_TTL, **settings)
    return a, b


def test_outsiders_are_ignored_and_refused(make_node: Callable[..., Node]) -> None:
    # In clear (P2P_ENCRYPT=off), so raw clients can speak to the server as an outsider
    # would: the key alone must keep them out. test_encryption.py does it under TLS.
    a, b = keyed_pair(make_node, P2P_ENCRYPT="off")
    keyless = make_node("keyless", P2P_PEER_TTL=PEER_TTL)
    wrong = make_node(
        "wrongkey", P2P_NETWORK_KEY=OTHER_KEY, P2P_PEER_TTL=PEER_TTL, P2P_ENCRYPT="off"
    )
    everyone = (a, b, keyless, wrong)
    for node in everyone:
        node.start(wait=False)
    for node in everyone:
        node.wait_alive()
    secret = os.urandom(3 * CHUNK + 5)
    seed(a, "secret.bin", secret)
    seed(keyless, "open.bin", b"open")
    seed(wrong, "other.bin", b"other")
    wait_known(b, "secret.bin")
    wait_until(lambda: a.sees(b) and b.sees(a), 60, what="the keyed nodes to see each other")
    # Every listener has heard, and dropped, the announcements of the other network(s).
    expected_drops = {a: (NO_MAC, BAD_MAC), b: (NO_MAC, BAD_MAC)}
    expected_drops[keyless] = (UNEXPECTED_MAC,)
    expected_drops[wrong] = (NO_MAC, BAD_MAC)
    wait_until(
        lambda: all(
            all(text in node.log("listener") for text in texts)
            for node, texts in expected_drops.items()
        ),
        60,
        what="every listener to drop the other networks' announcements",
    )

    insiders = {a.username, b.username}
    assert peer_names(a) == {b.username}
    assert peer_names(b) == {a.username}
    assert peer_names(keyless) == set(), "a keyless node recorded keyed peers"
    assert peer_names(wrong) == set(), "a node with another key recorded our peers"
    for outsider in (keyless, wrong):
        assert not insiders & peer_names(outsider)
    for insider in (a, b):
        assert not insider.sql("SELECT name FROM holdings WHERE name IN ('open.bin', 'other.bin')")

    port = a.tcp_port()
    root = protocol.manifest_root(manifest_entries(secret, CHUNK))
    key = FileKey(hashlib.sha256(secret).hexdigest(), CHUNK, root)
    get = protocol.encode_request(protocol.ChunkRequest(key, 0, 0, 0))
    catalog = protocol.encode_request(protocol.CatalogRequest())

    # The honest client without a key stops at the welcome.
    with pytest.raises(protocol.WrongNetworkKey):
        PeerClient(LOOPBACK, port, key=None).connect()
    # With a wrong key the server refuses the proof.
    with pytest.raises(protocol.RemoteRefused):
        PeerClient(LOOPBACK, port, key=protocol.derive_network_key(OTHER_KEY)).connect()
    # A raw client that skips the proof, or sends a wrong one, pipelining requests
    # behind it: the welcome, one error, then the connection closes. No chunk bytes.
    wrong_auth = protocol.encode_request(protocol.AuthRequest("0" * 64))
    for label, frames in {
        "chunk without auth": get + catalog,
        "catalog without auth": catalog + get,
        "wrong auth, then requests": wrong_auth + get + catalog,
    }.items():
        reply = split_frames(raw_exchange(port, frames))
        assert len(reply) == 2, (label, reply)
        assert reply[0].get("op") == "welcome" and reply[0].get("auth") is True, (label, reply)
        assert reply[1].get("ok") is False, (label, reply)
        print(f"{label}: {reply[1]}")
    # With the key the same requests work: the refusals above were about the key.
    with PeerClient(LOOPBACK, port, key=WIRE_KEY) as client:
        version, entries = client.catalog()
        assert [e.name for e in entries] == ["secret.bin"]
        client.send(protocol.ChunkRequest(key, 0, 0, 0))
        header = client.read_chunk_header(protocol.ChunkRequest(key, 0, 0, 0), CHUNK)
        buf = bytearray(header.length)
        client.read_exact_into(memoryview(buf))
        assert bytes(buf) == secret[:CHUNK]
    # Served chunks are recorded in order, so any served to the raw clients would be
    # recorded by the time this one is: exactly one chunk left the server.
    wait_until(
        lambda: a.scalar("SELECT count(*) FROM uploads") >= 1, 30, what="the upload recorded"
    )
    assert a.scalar("SELECT count(*) FROM uploads") == 1, "a chunk went to a client without key"
    for node in everyone:
        assert forbidden_log_text(node) == []


def test_replayed_announcement_is_refused(
    make_node: Callable[..., Node], capture: DatagramCapture
) -> None:
    a, b = keyed_pair(make_node)
    for node in (a, b):
        node.start(wait=False)
    for node in (a, b):
        node.wait_alive()
    seed(a, "doc.bin", os.urandom(CHUNK))
    wait_known(b, "doc.bin")
    a_id = a.node_id()
    captured = wait_until(lambda: capture.from_node(a_id), 60, what="an announcement of a")
    # Silence a's announcer, so nothing but the replay can touch b's row for a.
    a.stop(("announcer",))
    wait_caught_up(b, capture, a_id)
    before = snapshot(b)

    for data in captured[-3:]:
        send_datagram(data, a.udp_port)
    wait_until(
        lambda: b.log("listener").count("replayed announcement") >= min(3, len(captured)),
        30,
        what="b's listener to log the replays",
    )

    assert snapshot(b) == before
    a.start(("announcer",))  # so the teardown stops it cleanly
    assert forbidden_log_text(b) == []


def test_replay_of_an_announcement_from_before_a_restart_is_refused(
    make_node: Callable[..., Node], capture: DatagramCapture
) -> None:
    a, b = keyed_pair(make_node)
    for node in (a, b):
        node.start(wait=False)
    for node in (a, b):
        node.wait_alive()
    old_id = a.node_id()
    captured = wait_until(lambda: capture.from_node(old_id), 60, what="an announcement of a")
    wait_until(lambda: b.sees(a), 60, what="b to see a")
    a.restart(("announcer",))  # a new node id, same address and TCP port
    new_id = a.node_id()
    assert new_id != old_id
    wait_until(lambda: b.sees(a), 60, what="b to see a's new node id")
    a.stop(("announcer",))  # nothing else but the replay from here on
    wait_caught_up(b, capture, new_id)
    before = snapshot(b)

    drops = dropped(b)
    send_datagram(captured[-1], a.udp_port)  # signed, a few seconds old: inside max_age
    wait_until(
        lambda: dropped(b) > drops or old_id in {r[1] for r in b.sql("SELECT * FROM peers")},
        30,
        what="b's listener to handle the replay",
    )

    after = snapshot(b)
    a.start(("announcer",))
    ids = [row[1] for row in after["peers"]]
    print(f"peers of b: before {[r[1] for r in before['peers']]}, after {ids}")
    assert old_id not in ids, "the replayed announcement resurrected a's old node id"
    assert after == before


def test_replay_of_an_expired_peers_announcement_is_refused(
    make_node: Callable[..., Node], capture: DatagramCapture
) -> None:
    # b forgets a silent peer after 3 s; an announcement stays inside the replay
    # window (max_age, at least 30 s) far longer than that.
    a = make_node("keyed-a", P2P_NETWORK_KEY=KEY, P2P_PEER_TTL=PEER_TTL)
    b = make_node("keyed-b", P2P_NETWORK_KEY=KEY, P2P_PEER_TTL=3)
    for node in (a, b):
        node.start(wait=False)
    for node in (a, b):
        node.wait_alive()
    a_id = a.node_id()
    wait_until(lambda: b.sees(a), 60, what="b to see a")
    wait_until(lambda: capture.from_node(a_id), 60, what="an announcement of a")
    a.stop(("announcer",))  # a falls silent; its server stays up
    # Its very last announcement: the youngest there is, so the replay below is refused
    # for what it is, not for its age (max_age), however long the expiry took.
    captured = capture.from_node(a_id)
    wait_until(lambda: a.username not in peer_names(b), 60, what="b to forget a")
    before = snapshot(b)

    drops = dropped(b)
    send_datagram(captured[-1], a.udp_port)
    wait_until(
        lambda: dropped(b) > drops or a.username in peer_names(b),
        30,
        what="b's listener to handle the replay",
    )

    after = snapshot(b)
    a.start(("announcer",))  # so the teardown stops it cleanly
    assert after == before, "a replayed announcement brought back a peer that had expired"

"""Discovery between real nodes on loopback: announcements, catalogs, expiry, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import zlib
from pathlib import Path

import pytest

from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries

pytestmark = pytest.mark.integration

TEN_THOUSAND = 10_000
# Bounds on waits for what must happen, generous for a busy machine; how soon it
# happens on a quiet one is the benchmark's business (bench/bench.py: discovery).
DISCOVERY_TIMEOUT = 60.0


def start_all(*nodes):
    """Start every node's roles at once, then wait for each to be alive."""
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_alive()


def all_see_each_other(nodes):
    return all(n.sees(*(o for o in nodes if o is not n)) for n in nodes)


def peer_rows(node, username):
    """(node_id, tcp_port) of every row the node has for a peer username."""
    return sorted(node.sql("SELECT node_id, tcp_port FROM peers WHERE username = ?", (username,)))


# ---------------------------------------------------------------- finding each other


def test_two_nodes_find_each_other(make_node, wait_until):
    a, b = make_node("a"), make_node("b")
    start_all(a, b)
    up = time.monotonic()
    wait_until(
        lambda: all_see_each_other([a, b]), DISCOVERY_TIMEOUT, what="a and b to see each other"
    )
    latency = time.monotonic() - up
    print(f"\ndiscovery latency, two nodes: {latency:.2f} s after both were up")

    # The row holds the other's real address and real (P2P_TCP_PORT=0) port.
    assert a.peers()[b.username][1:3] == ("127.0.0.1", b.tcp_port())
    assert b.peers()[a.username][1:3] == ("127.0.0.1", a.tcp_port())
    listed = a.p2pctl_json("peers")
    assert [(p["username"], p["tcp_port"]) for p in listed] == [(b.username, b.tcp_port())]
    # A node never lists itself.
    assert a.username not in a.peers() and b.username not in b.peers()


def test_three_nodes_one_under_supervisord_all_see_each_other(make_node, wait_until):
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    a.start_supervised(wait=False)
    b.start(wait=False)
    c.start(wait=False)
    for node in (a, b, c):
        node.wait_alive()
    up = time.monotonic()
    wait_until(
        lambda: all_see_each_other([a, b, c]),
        DISCOVERY_TIMEOUT,
        what="three nodes to see each other",
    )
    print(f"\ndiscovery latency, three nodes: {time.monotonic() - up:.2f} s after all were up")
    for node in (a, b, c):
        assert len(node.peers()) == 2


def test_new_file_reaches_peer_holdings_within_seconds(make_node, wait_until):
    a, b = make_node("a"), make_node("b")
    start_all(a, b)
    wait_until(
        lambda: all_see_each_other([a, b]), DISCOVERY_TIMEOUT, what="a and b to see each other"
    )

    data = os.urandom(300 * 1024)
    written = time.monotonic()
    (a.share / "report.pdf").write_bytes(data)

    def held():
        return b.sql(
            "SELECT h.name, f.sha256, f.size, h.chunks_held, f.chunk_count FROM holdings h "
            "JOIN files f ON f.id = h.file_id JOIN peers p ON p.id = h.peer_id "
            "WHERE p.username = ?",
            (a.username,),
        )

    rows = wait_until(held, DISCOVERY_TIMEOUT, what="report.pdf in b's holdings")
    latency = time.monotonic() - written
    print(f"\nnew file on a in b's holdings after {latency:.2f} s")
    assert rows == [("report.pdf", hashlib.sha256(data).hexdigest(), len(data), 2, 2)]
    # The content is known by the root of its manifest (chained SHA-256 states, the last
    # the file's SHA-256); the manifest itself is fetched only when a download needs it.
    hashes = manifest_entries(data, 256 * 1024)
    assert hashes[-1] == hashlib.sha256(data).hexdigest()
    assert b.sql("SELECT root FROM files") == [(protocol.manifest_root(hashes),)]
    assert b.sql("SELECT count(*) FROM chunks") == [(0,)]
    listed = b.p2pctl_json("files")
    assert [(f["name"], f["here"], f["peers"]) for f in listed] == [("report.pdf", False, 1)]


# ---------------------------------------------------------------- leaving and coming back


def test_stopped_node_is_forgotten_after_peer_ttl(make_node, wait_until):
    fast = {"P2P_ANNOUNCE_INTERVAL": 1, "P2P_PEER_TTL": 3}
    a, b = make_node("a", **fast), make_node("b", **fast)
    (a.share / "x.txt").write_bytes(b"x" * 100)
    start_all(a, b)
    wait_until(
        lambda: b.holdings_of(a.username) == 1, DISCOVERY_TIMEOUT, what="b to learn a's file"
    )
    a_id = a.node_id()
    seen: list[float] = []  # the latest last_seen of a in b that this test has read

    def forgotten() -> bool:
        rows = b.sql("SELECT last_seen FROM peers WHERE node_id = ?", (a_id,))
        seen.extend(r[0] for r in rows)
        return not rows

    assert not forgotten()
    a.stop()
    stopped = time.monotonic()
    wait_until(forgotten, DISCOVERY_TIMEOUT, what="b to forget a")
    gone_after = time.monotonic() - stopped
    print(f"\nstopped peer forgotten {gone_after:.2f} s after it stopped (TTL 3 s)")
    # Not before its last announcement was TTL old, as b itself recorded both (the
    # last_seen read here is never later than b's last one), however slow the machine.
    retired_at = b.scalar("SELECT retired_at FROM retired_nodes WHERE node_id = ?", (a_id,))
    assert retired_at - max(seen) >= 3, (retired_at, max(seen))
    # What it offered went with it: no holdings, and its file's content is orphaned and gone
    # (swept by the listener's writer in its next transactions, after the peer's).
    assert b.scalar("SELECT count(*) FROM holdings") == 0
    wait_until(
        lambda: b.scalar("SELECT count(*) FROM files") == 0,
        DISCOVERY_TIMEOUT,
        what="the orphaned content to be swept",
    )
    assert "forgotten" in b.log("listener")


def test_restarted_node_is_relearned_and_its_old_row_goes(make_node, wait_until):
    fast = {"P2P_ANNOUNCE_INTERVAL": 1, "P2P_PEER_TTL": 3}
    a, b = make_node("a", **fast), make_node("b", **fast)
    (a.share / "x.txt").write_bytes(b"x" * 100)
    start_all(a, b)
    wait_until(
        lambda: b.holdings_of(a.username) == 1, DISCOVERY_TIMEOUT, what="b to learn a's file"
    )
    old = (a.node_id(), a.tcp_port())
    assert peer_rows(b, a.username) == [old]

    a.restart()
    new = (a.node_id(), a.tcp_port())
    assert new[0] != old[0]
    wait_until(
        lambda: new in peer_rows(b, a.username),
        DISCOVERY_TIMEOUT,
        what="b to learn the restarted a",
    )
    wait_until(
        lambda: peer_rows(b, a.username) == [new],
        DISCOVERY_TIMEOUT,
        what="the old row of a to go (its TTL is 3 s)",
    )
    wait_until(
        lambda: b.holdings_of(a.username) == 1, DISCOVERY_TIMEOUT, what="the new a's file in b"
    )


def test_node_restarted_on_its_fixed_port_replaces_its_old_row_at_once(
    make_node, wait_until, free_tcp_port
):
    # A long TTL, so only the same-endpoint rule can remove the old row in time.
    a = make_node("a", P2P_TCP_PORT=free_tcp_port(), P2P_PEER_TTL=60)
    b = make_node("b", P2P_PEER_TTL=60)
    start_all(a, b)
    wait_until(lambda: b.sees(a), DISCOVERY_TIMEOUT, what="b to see a")
    old_id = a.node_id()

    a.restart()
    new = (a.node_id(), a.tcp_port())
    assert new[0] != old_id and new[1] == int(a.env["P2P_TCP_PORT"])
    rows = wait_until(
        lambda: (r := peer_rows(b, a.username)) and old_id not in dict(r) and r,
        30,  # well inside the TTL (60 s), and b says why the row went, below
        what="b to replace a's old row",
    )
    assert rows == [new]
    # Replaced by the same-endpoint rule, not expired: so b's own record says.
    assert b.scalar("SELECT replaced FROM retired_nodes WHERE node_id = ?", (old_id,)) == 1


# ---------------------------------------------------------------- a big catalog


def test_ten_thousand_files_are_learned_with_small_datagrams(make_node, wait_until, capture):
    a, b = make_node("a"), make_node("b")
    start_all(a, b)
    wait_until(
        lambda: all_see_each_other([a, b]), DISCOVERY_TIMEOUT, what="a and b to see each other"
    )

    started = time.monotonic()
    for d in range(100):
        folder = a.share / f"d{d:02d}"
        folder.mkdir()
        for i in range(100):
            (folder / f"f{i:02d}.txt").write_bytes(b"file %d %d\n" % (d, i))
    written = time.monotonic()
    indexed = wait_until(
        lambda: a.scalar("SELECT count(*) FROM local_files") == TEN_THOUSAND and time.monotonic(),
        300,
        interval=0.25,
        what="a to index 10,000 files",
    )
    wait_until(
        lambda: b.holdings_of(a.username) == TEN_THOUSAND,
        300,
        interval=0.25,
        what="b to hold a's 10,000 files",
    )
    learned = time.monotonic()
    print(
        f"\n10,000 files: written in {written - started:.1f} s, indexed by a "
        f"{indexed - written:.1f} s later, all in b's holdings {learned - written:.1f} s "
        f"after the last write ({learned - started:.1f} s after the first)"
    )

    # Every content b learned is known by its key and size; no manifest was fetched for
    # any (a download asks for one; a one-chunk file's is its SHA-256).
    assert b.scalar("SELECT count(*) FROM files") == TEN_THOUSAND
    assert b.scalar("SELECT count(*) FROM chunks") == 0
    # b's view of a settles on the catalog a serves now: announced and synced.
    final = a.scalar("SELECT catalog_version FROM node")
    wait_until(
        lambda: b.peers()[a.username][3:] == (final, final),
        DISCOVERY_TIMEOUT,
        what="b to have heard and synced a's last catalog version",
    )

    from_a = capture.from_node(a.node_id())
    sizes = [len(d) for d in from_a]
    everything = [len(d) for d, _ in capture.received]
    print(
        f"captured {len(from_a)} datagrams from a (max {max(sizes)} bytes), "
        f"{len(everything)} in all (max {max(everything)} bytes)"
    )
    assert len(from_a) >= 3  # start, changes while indexing, intervals
    assert max(everything) <= protocol.MAX_DATAGRAM == 1400
    # The catalog version it announced grew while the files were indexed.
    assert len({json.loads(d)["cv"] for d in from_a}) >= 2


# ---------------------------------------------------------------- bad datagrams


def _announce_raw(node_id: str, **override: object) -> bytes:
    raw = {
        "p2p": protocol.PROTOCOL_VERSION,
        "t": "announce",
        "node": node_id,
        "user": "mallory",
        "port": 4242,
        "cv": 1,
        "seq": 1000,
        "ts": time.time(),
    }
    raw.update(override)
    return json.dumps(raw).encode()


def _bad_datagrams(peer_id: str) -> dict[str, bytes]:
    fresh = secrets.token_hex(16)
    return {
        "empty": b"",
        "random bytes": os.urandom(300),
        "not UTF-8": b'{"p2p": 2, "t": "announce", "user": "\xff\xfe\xfd"}',
        "oversized 2000 bytes": _announce_raw(fresh, user="x" * 1850),
        "huge JSON": _announce_raw(fresh, user="y" * 60_000),
        "JSON but not an object": b"[1, 2, 3]",
        "deeply nested JSON": b"[" * 650 + b"]" * 650,
        "protocol v1": _announce_raw(fresh, p2p=1),
        "a future version": _announce_raw(fresh, p2p=3),
        "wrong type": _announce_raw(fresh, t="hello"),
        "negative port": _announce_raw(fresh, port=-1),
        "port too large": _announce_raw(fresh, port=70000),
        "port as float": _announce_raw(fresh, port=4242.0),
        "node id not hex": _announce_raw("Z" * 32),
        "node id too short": _announce_raw(fresh[:10]),
        "control character in username": _announce_raw(fresh, user="mal\nlory"),
        "username too long": _announce_raw(fresh, user="u" * 65),
        "seq as bool": _announce_raw(fresh, seq=True),
        "negative seq": _announce_raw(fresh, seq=-5),
        "timestamp NaN": _announce_raw(fresh).replace(b'"ts": ', b'"ts": NaN, "x": '),
        "replay: a peer's id with a lower seq": _announce_raw(
            peer_id, seq=50, user="replayed", port=4343
        ),
        "replay: a peer's id with the same seq": _announce_raw(
            peer_id, seq=100, user="replayed", port=4343
        ),
    }


def _drop_lines(node) -> int:
    return node.log("listener").count("dropped datagram from 127.0.0.1")


def test_bad_datagrams_change_nothing_and_are_logged(
    make_node, wait_until, fake_peer, announce, send_datagram
):
    # b alone on the port, so unicast to 127.0.0.1 reaches its listener (and no other).
    b = make_node("b", P2P_PEER_TTL=120)
    b.start()
    peer = fake_peer(catalog=protocol.encode_catalog([], 1))
    announce(
        b.udp_port,
        node_id=peer.node_id,
        username=peer.username,
        tcp_port=peer.port,
        catalog_version=1,
        seq=100,
        target="127.0.0.1",
    )
    wait_until(
        lambda: b.peers().get(peer.username, ())[-1:] == (1,),
        DISCOVERY_TIMEOUT,
        what="b to record the fake peer and fetch its (empty) catalog",
    )

    def snapshot():
        return (
            b.sql("SELECT * FROM peers ORDER BY id"),
            b.sql("SELECT * FROM holdings"),
            b.sql("SELECT * FROM files"),
            b.sql("SELECT * FROM chunks"),
        )

    before = snapshot()
    listener = b.procs["listener"]
    for what, data in _bad_datagrams(peer.node_id).items():
        # Stay under the listener's 10 logged drops per second, so each gets its line.
        window = int(time.monotonic())
        if _drop_lines(b) % 5 == 4:
            wait_until(lambda w=window: int(time.monotonic()) != w, 2, what="the next second")
        count = _drop_lines(b)
        send_datagram(data, b.udp_port, "127.0.0.1")
        wait_until(lambda c=count: _drop_lines(b) > c, 30, what=f"b to log dropping: {what}")
        assert listener.poll() is None, f"listener died on: {what}"
    assert snapshot() == before
    assert b.log("listener").count("replayed announcement") == 2

    # The listener's loop is alive: a genuine next announcement is recorded at once.
    beat = b.heartbeats()["listener"][1]
    announce(
        b.udp_port,
        node_id=peer.node_id,
        username=peer.username,
        tcp_port=peer.port,
        catalog_version=1,
        seq=101,
        target="127.0.0.1",
    )
    wait_until(
        lambda: b.scalar("SELECT announce_seq FROM peers") == 101,
        30,
        what="b to accept the next genuine announcement",
    )
    wait_until(lambda: b.heartbeats()["listener"][1] > beat, 30, what="a fresh listener heartbeat")
    assert "Traceback" not in b.log("listener")


# ---------------------------------------------------------------- network key


def _fetch_catalog_raw(port: int, auth: str | None) -> dict:
    """Ask a node's server for its catalog over raw TCP, optionally with an auth MAC."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        rfile = sock.makefile("rb")

        def read_frame() -> bytes:
            return rfile.read(protocol.frame_length(rfile.read(4)))

        welcome = protocol.decode_welcome(read_frame())
        if auth is not None:
            sock.sendall(
                protocol.encode_request(
                    protocol.AuthRequest(
                        protocol.auth_mac(protocol.derive_network_key(auth), welcome.nonce),
                        None,
                        "ab" * 16,
                    )
                )
            )
            reply = json.loads(read_frame())
            if not reply.get("ok"):
                return reply
        sock.sendall(protocol.encode_request(protocol.CatalogRequest()))
        reply = json.loads(read_frame())
        rfile.close()
        return {"auth_required": welcome.auth_required, **reply}


def test_network_key_separates_nodes(make_node, wait_until):
    # In clear, so the raw client below speaks to the server as an outsider would (under
    # TLS, tests/reliability/test_encryption.py).
    fast = {"P2P_ANNOUNCE_INTERVAL": 1, "P2P_ENCRYPT": "off"}
    a = make_node("a", P2P_NETWORK_KEY="our network secret", **fast)
    b = make_node("b", P2P_NETWORK_KEY="our network secret", **fast)
    c = make_node("c", P2P_NETWORK_KEY="their network secret", **fast)
    d = make_node("d", **fast)  # no key
    start_all(a, b, c, d)
    wait_until(
        lambda: all_see_each_other([a, b]), DISCOVERY_TIMEOUT, what="a and b to see each other"
    )

    # Wait until a and b have heard (and refused) c and d, and c has heard the others.
    def heard_and_refused(node, *reasons):
        log = node.log("listener")
        return all(r in log for r in reasons)

    wrong, missing = "HMAC does not match our network key", "announcement carries no"
    for node in (a, b, c):
        wait_until(
            lambda n=node: heard_and_refused(n, wrong, missing),
            30,
            what=f"{node.label} to refuse the others' announcements",
        )
    assert set(a.peers()) == {b.username}
    assert set(b.peers()) == {a.username}
    assert c.peers() == {}

    # Without the key, a's server answers nothing; with it, its catalog.
    port = a.tcp_port()
    refused = _fetch_catalog_raw(port, auth=None)
    assert refused["auth_required"] is True and refused["ok"] is False
    assert _fetch_catalog_raw(port, auth="their network secret")["ok"] is False
    assert _fetch_catalog_raw(port, auth="our network secret")["ok"] is True


def test_node_without_key_does_not_list_keyed_nodes(make_node, wait_until):
    fast = {"P2P_ANNOUNCE_INTERVAL": 1}
    a = make_node("a", P2P_NETWORK_KEY="our network secret", **fast)
    d = make_node("d", **fast)  # no key
    start_all(a, d)
    wait_until(
        lambda: "announcement carries no" in a.log("listener"),
        30,
        what="a to refuse d's announcement",
    )
    # d has heard a: it either recorded a (the bug) or logged refusing it.
    wait_until(
        lambda: a.username in d.peers() or "network key" in d.log("listener"),
        30,
        what="d to hear a's announcement",
    )
    assert d.peers() == {}


# ---------------------------------------------------------------- lying catalogs


def test_lying_catalogs_are_dropped_and_record_nothing(
    make_node, wait_until, fake_peer, announce, catalog_entry
):
    b = make_node("b", P2P_PEER_TTL=120)
    b.start()

    def manifests_for(table):
        def answer(req):
            return protocol.encode_manifests({k: table[k] for k in req.files if k in table})

        return answer

    # A truthful peer first: b records what it offers (so the test can see recording work).
    good_bytes = os.urandom(40_000)
    good, good_hashes = catalog_entry("good.txt", good_bytes)
    honest = fake_peer(
        catalog=protocol.encode_catalog([good], 1),
        manifests=manifests_for({good.file: good_hashes}),
    )
    announce(b.udp_port, node_id=honest.node_id, username=honest.username, tcp_port=honest.port)
    wait_until(lambda: b.holdings_of(honest.username) == 1, 10, what="b to record good.txt")
    files_before = b.sql("SELECT * FROM files ORDER BY id")
    chunks_before = b.sql("SELECT * FROM chunks ORDER BY file_id, chunk_index")

    def liar(name, content=b"evil bytes", **kwargs):
        entry, hashes = catalog_entry(name, content)
        return fake_peer(
            catalog=protocol.encode_catalog([entry], 1),
            manifests=manifests_for({entry.file: hashes}),
            **kwargs,
        )

    def wrong_hash_count(req):
        return protocol.encode_manifests({k: ["00" * 32] * 5 for k in req.files})

    ok_entry, _ = catalog_entry("fine-name.txt", b"some other bytes")
    liars = {
        "../ in name": liar("../evil"),
        "absolute name": liar("/etc/evil"),
        "../ inside name": liar("a/../../evil"),
        "drive letter": liar("C:evil"),
        "backslash": liar("..\\evil"),
        "empty part": liar("a//evil"),
        "control character": liar("evil\nname"),
        "catalog not zlib": fake_peer(catalog=b"this is not zlib at all"),
        "catalog inflating past 64 MiB": fake_peer(
            catalog=zlib.compress(b'{"cv":1,"files":[' + b" " * (65 * 1024 * 1024) + b"]}")
        ),
        "truncated catalog": fake_peer(catalog=protocol.encode_catalog([ok_entry], 1)[:-5]),
    }
    # Known content (good.txt's hash) offered with another size: a lie b must not believe.
    size_liar = fake_peer(
        catalog=protocol.encode_catalog(
            [protocol.CatalogEntry("good-copy.txt", good.file, 999_999, None)], 1
        )
    )

    def bogus_manifest(req):  # the right count, ending in the SHA-256, but not the root's
        return protocol.encode_manifests(
            {k: ["ab" * 32, k.sha256] for k in req.files if k == good_twice.file}
        )

    # Manifests that do not prove themselves: each is refused alone, the catalog is kept.
    good_twice = protocol.CatalogEntry(
        "good-again.txt", good.file._replace(root="cd" * 32), good.size, None
    )
    many_lies, _ = catalog_entry("many-lies.txt", os.urandom(40_000))
    manifest_liars = {
        "manifest with the wrong number of entries": fake_peer(
            catalog=protocol.encode_catalog([many_lies], 1), manifests=wrong_hash_count
        ),
        "manifest that does not hash to its root": fake_peer(
            catalog=protocol.encode_catalog([good_twice], 1), manifests=bogus_manifest
        ),
    }
    everyone = [*liars.values(), size_liar, *manifest_liars.values()]
    for peer in everyone:
        announce(b.udp_port, node_id=peer.node_id, username=peer.username, tcp_port=peer.port)
    wait_until(
        lambda: all(p.count("catalog") >= 1 for p in everyone),
        10,
        what="b to ask every liar for its catalog",
    )
    wait_until(
        lambda: b.log("listener").count("cannot fetch the catalog of peer") >= len(liars),
        10,
        what="b to log each lying catalog",
    )
    for peer in [size_liar, *manifest_liars.values()]:
        wait_until(
            lambda peer=peer: b.peers()[peer.username][-1] == 1,
            10,
            what=f"b to process {peer.username}'s catalog",
        )
    # Manifests come with downloads, not catalogs: nothing proves these offers wrong yet,
    # so they are recorded (one each), and the listener asked for no manifest.
    assert b.log("listener").count("refused the manifest of") == 0
    liars_held = {p.username: b.holdings_of(p.username) for p in everyone}
    assert liars_held == {p.username: int(p in manifest_liars.values()) for p in everyone}
    assert sorted(b.sql("SELECT name FROM holdings")) == [
        ("good-again.txt",),
        ("good.txt",),
        ("many-lies.txt",),
    ]
    assert b.sql("SELECT * FROM chunks ORDER BY file_id, chunk_index") == chunks_before
    # A download of the offer whose manifest lies asks for it, refuses it, and trusts no
    # chunk hash of it: the download waits for a peer with a manifest that proves itself.
    asked = b.p2pctl("download", "many-lies.txt", "--no-wait")
    assert asked.returncode == 0, asked.stderr
    wait_until(
        lambda: "refused the manifest of" in b.log("downloader"),
        20,
        what="b's downloader to refuse the manifest with the wrong number of entries",
    )
    assert b.sql("SELECT * FROM chunks ORDER BY file_id, chunk_index") == chunks_before
    wait_until(
        lambda: (
            b.sql("SELECT status, reason FROM downloads")
            == [
                (
                    "queued",
                    "waiting for its manifest: no peer offering it has sent one that proves itself",
                )
            ]
        ),
        20,
        what="the download to say why it waits",
    )
    assert files_before[0] in b.sql("SELECT * FROM files ORDER BY id")
    # The liars whose catalogs failed stay unsynced; b retries them, never believes them.
    for peer in liars.values():
        assert b.peers()[peer.username][-1] == -1
    assert b.procs["listener"].poll() is None
    assert not list(b.home.rglob("*evil*"))


def test_catalog_with_one_content_under_two_sizes_records_nothing_inconsistent(
    make_node, wait_until, fake_peer, announce, catalog_entry
):
    # Once a bug: the listener stored a files row whose chunk_count contradicted its size,
    # and chunks of negative size.
    b = make_node("b", P2P_PEER_TTL=120)
    b.start()
    small, _ = catalog_entry("small.txt", os.urandom(100))
    big = protocol.CatalogEntry("big.txt", small.file, 10 * protocol.MIN_CHUNK, None)

    def manifests(req):  # consistent with big.txt, the size the listener asks about
        return protocol.encode_manifests({k: ["ab" * 32] * 10 for k in req.files})

    peer = fake_peer(catalog=protocol.encode_catalog([small, big], 1), manifests=manifests)
    announce(b.udp_port, node_id=peer.node_id, username=peer.username, tcp_port=peer.port)
    wait_until(lambda: peer.count("catalog") >= 1, 10, what="b to ask for the catalog")
    wait_until(
        lambda: (
            b.peers()[peer.username][-1] == 1 or "cannot fetch the catalog" in b.log("listener")
        ),
        10,
        what="b to apply or refuse the catalog",
    )
    # Whatever b keeps must be self-consistent: never a chunk of negative size, never
    # a chunk count that the size contradicts.
    assert b.sql("SELECT chunk_index, size FROM chunks WHERE size <= 0") == []
    assert (
        b.sql(
            "SELECT size, chunk_size, chunk_count FROM files "
            "WHERE chunk_count != (size + chunk_size - 1) / chunk_size"
        )
        == []
    )


def test_slow_peers_do_not_starve_catalog_fetches(
    make_node, wait_until, fake_peer, announce, catalog_entry
):
    b = make_node("b", P2P_PEER_TTL=120)
    b.start()
    slow = [fake_peer(catalog=b"", stall="trickle") for _ in range(4)]
    for peer in slow:
        announce(b.udp_port, node_id=peer.node_id, username=peer.username, tcp_port=peer.port)
    wait_until(
        lambda: all(p.count("stalled") == 1 for p in slow),
        10,
        what="b to start fetching every slow catalog",
    )

    entry, hashes = catalog_entry("wanted.txt", b"wanted bytes")
    honest = fake_peer(
        catalog=protocol.encode_catalog([entry], 1),
        manifests=lambda req: protocol.encode_manifests({entry.file: hashes}),
    )
    announce(b.udp_port, node_id=honest.node_id, username=honest.username, tcp_port=honest.port)
    wait_until(lambda: honest.username in b.peers(), 30, what="b to record the honest peer")
    # Unhindered, this takes a few milliseconds. Behind the slow ones it would take their
    # FETCH_DEADLINE (30 s in services/listener/role.py): the bound stays below that.
    wait_until(
        lambda: b.holdings_of(honest.username) == 1,
        25,
        what="b to fetch the honest peer's catalog beside the slow ones",
    )


def thread_nices(pid: int) -> set[int]:
    """The niceness of every thread of a process (/proc/PID/task/TID/stat, field 19)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        out.add(int(text[text.rindex(")") + 2 :].split()[16]))
    return out


@pytest.mark.parametrize("nice", [None, "0", "4"])
def test_the_listener_runs_at_p2p_listener_nice_and_the_others_as_started(
    make_node, wait_until, nice
):
    """Every thread of the listener (its heartbeat and fetch threads too) runs that much
    nicer than the roles beside it (default 10), and records the setting in role_settings."""
    a, b = make_node("a", P2P_LISTENER_NICE=nice), make_node("b")
    start_all(a, b)
    # b's catalog fetched: the fetch threads exist and have been at work.
    wait_until(lambda: a.sees(b), DISCOVERY_TIMEOUT, what="a to see b")
    base = os.nice(0)  # the roles start at the test's own niceness
    expected = base + (10 if nice is None else int(nice))
    beats = a.heartbeats()
    assert thread_nices(beats["listener"][0]) == {min(expected, 19)}
    assert thread_nices(beats["downloader"][0]) == {base}
    assert thread_nices(beats["server"][0]) == {base}
    setting = a.sql("SELECT value FROM role_settings WHERE role = 'listener' AND name = ?",
                    ("listener_nice",))  # fmt: skip
    assert setting == [(str(10 if nice is None else int(nice)),)]


def test_restarted_server_alone_is_followed_to_its_new_port(make_node, wait_until):
    a, b = make_node("a"), make_node("b")
    (a.share / "x.txt").write_bytes(b"x")
    start_all(a, b)
    wait_until(
        lambda: b.holdings_of(a.username) == 1, DISCOVERY_TIMEOUT, what="b to learn a's file"
    )
    node_id, old_port = a.node_id(), a.tcp_port()

    a.restart(("server",))
    new_port = a.tcp_port()
    assert new_port != old_port and a.node_id() == node_id
    # The announcer notices the new port and says so at once; b follows, same row.
    wait_until(
        lambda: peer_rows(b, a.username) == [(node_id, new_port)],
        DISCOVERY_TIMEOUT,
        what="b to follow a to its new port",
    )
    assert b.holdings_of(a.username) == 1

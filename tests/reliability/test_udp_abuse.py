"""Case 6: a UDP flood of junk at one node's listener, while genuine discovery goes on.

50,000 datagrams (random bytes, malformed JSON, bad fields, oversized, wrong
version, keyed, forged with another real node's node id or our own, replays of a
captured genuine announcement) go as fast as one Python socket sends them to
127.0.0.1:<udp port>; the kernel drops what the listener's queue cannot hold.
Then the same 50,000 go again at the listener's own pace, so every one reaches
its decoder, while a new genuine node starts and must be discovered. Unicast
reaches one socket of the port's group, so the attacked node `x` is the only
listener on the port: the genuine nodes run only their server and announcer,
announcing to 127.255.255.255 on the same port.

A second test shows one forged announcement taking over a known peer (a bug).
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import re
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest
from node import wait_until
from nodetools import status_kib

from p2pshare.services import protocol

pytestmark = pytest.mark.reliability

FLOOD = 50_000
# Then the same 50,000 again at the rate the listener takes them (another burst
# whenever the socket's queue is below QUEUE_ROOM bytes), so each kind reaches the
# decoder, while a genuine node starts.
BURST = 500
QUEUE_ROOM = 1024 * 1024
# The junk goes on until n is discovered (and every datagram went once); this bounds
# it only should the test itself be stuck. Discovery is waited for well inside it.
SUSTAIN_LIMIT_SECONDS = 300.0
DISCOVERY_TIMEOUT = 180.0
RSS_GROWTH_LIMIT = 20 * 1024 * 1024
SPEAKERS = ("server", "announcer")  # genuine nodes without a listener of their own
# Flush datagrams come from this loopback address, so their log lines are told apart;
# a little over a second apart, so each can start a second of its own in the listener.
FLUSH_FROM = "127.0.0.2"
FLUSH_GAP = 1.2


def udp_socket_stats(port: int) -> tuple[int, int]:
    """(bytes queued, datagrams dropped by the kernel) for the sockets bound to `port`."""
    queued = dropped = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            queued += int(fields[4].split(":")[1], 16)
            dropped += int(fields[-1])
    return queued, dropped


def drops_logged(text: str) -> int:
    """Bad datagrams the listener says it dropped: one line each, then per-second counts."""
    return text.count("dropped datagram from") + sum(
        int(n) for n in re.findall(r"dropped (\d+) more bad datagrams", text)
    )


def announcement(**fields: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "p2p": protocol.PROTOCOL_VERSION,
        "t": "announce",
        "node": secrets.token_hex(16),
        "user": "mallory",
        "port": 1,
        "cv": 1,
        "seq": 1,
        "ts": time.time(),
    }
    raw.update(fields)
    return raw


def dumps(raw: object) -> bytes:
    return json.dumps(raw, separators=(",", ":")).encode()


def junk(
    rng: random.Random, *, victim_id: str, victim_seq: int, own_id: str, genuine: bytes
) -> list[tuple[str, bytes]]:
    """FLOOD datagrams, each refused by a correct listener, with their kinds."""
    victim_raw = json.loads(genuine)
    makers = {
        "random bytes": lambda: rng.randbytes(rng.randint(1, protocol.MAX_DATAGRAM)),
        "malformed JSON": lambda: rng.choice(
            [
                genuine[: rng.randint(1, len(genuine) - 1)],
                b"{" * rng.randint(1, 1000),
                b"[" * 1000 + b"]" * 1000,
                b'{"p2p":1,"t":"announce","node":',
                dumps([1, 2, 3]),
                dumps("announce"),
                b"\xff\xfe" + genuine,
                genuine.replace(b"}", b",}"),
                b'{"p2p":1,"t":"announce","ts":NaN}',
            ]
        ),
        "bad fields": lambda: dumps(
            announcement(
                **rng.choice(
                    [
                        {"port": 0},
                        {"port": 70000},
                        {"port": "80"},
                        {"seq": -1},
                        {"seq": 2**63},
                        {"cv": 1.5},
                        {"node": "z" * 32},
                        {"node": "ab" * 15},
                        {"user": "x" * 65},
                        {"user": "evil\nname"},
                        {"user": None},
                        {"ts": "now"},
                        {"ts": True},
                    ]
                )
            )
        ),
        "oversized": lambda: dumps(
            announcement(user="x" * rng.randint(protocol.MAX_DATAGRAM, 60_000))
        ),
        "wrong version": lambda: dumps(
            announcement(
                **rng.choice(
                    [
                        {"p2p": protocol.PROTOCOL_VERSION - 1},
                        {"p2p": protocol.PROTOCOL_VERSION + 1},
                        {"p2p": str(protocol.PROTOCOL_VERSION)},
                        {"p2p": True},
                        {"t": "hello"},
                    ]
                )
            )
        ),
        "keyed (we have no key)": lambda: dumps(announcement(mac="0" * 64)),
        "forged victim id, old seq": lambda: dumps(
            announcement(node=victim_id, seq=rng.randint(0, victim_seq), port=rng.randint(1, 9))
        ),
        "forged victim id, keyed": lambda: dumps(
            {**victim_raw, "seq": 2**62, "user": "mallory", "mac": secrets.token_hex(32)}
        ),
        "forged own id": lambda: dumps(announcement(node=own_id, seq=2**62)),
        "replay of genuine": lambda: genuine,
    }
    kinds = list(makers)
    out = [(kind, makers[kind]()) for n in range(FLOOD) for kind in [kinds[n % len(kinds)]]]
    rng.shuffle(out)
    return out


def blast(datagrams: list[bytes], port: int) -> tuple[int, int, float]:
    """Send every datagram once, back to back. Returns (sent, sendto errors, seconds)."""
    sent = refused = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        target = ("127.0.0.1", port)  # unicast on loopback only
        for data in datagrams:
            try:
                sock.sendto(data, target)
                sent += 1
            except OSError:
                refused += 1
    return sent, refused, time.monotonic() - started


class Sustain(threading.Thread):
    """Junk at the listener's own pace: a burst whenever its queue has room, until every
    datagram went once and we are told to stop."""

    def __init__(self, datagrams: list[bytes], port: int) -> None:
        super().__init__(daemon=True)
        self.datagrams = datagrams
        self.port = port
        self.sent = 0
        self.seconds = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            target = ("127.0.0.1", self.port)
            i = 0
            while time.monotonic() - started < SUSTAIN_LIMIT_SECONDS:
                if self.stop.is_set() and self.sent >= len(self.datagrams):
                    break
                if udp_socket_stats(self.port)[0] > QUEUE_ROOM:
                    time.sleep(0.002)
                    continue
                for _ in range(BURST):
                    with contextlib.suppress(OSError):
                        sock.sendto(self.datagrams[i], target)
                        self.sent += 1
                    i = (i + 1) % len(self.datagrams)
        self.seconds = time.monotonic() - started


class DropCount:
    """The listener's count of the bad datagrams it dropped, read from its log once all
    of it is written, the flushes excluded.

    The listener logs a line for each of the first bad datagrams in a second and
    writes the count of the rest when the next second's first bad datagram arrives.
    So flushes (one bad datagram each, from FLUSH_FROM so their lines are told apart)
    go a second apart until one is logged as a line of its own: every drop before it
    is then written. That is a condition, not a time: it holds however far behind
    the listener is.
    """

    def __init__(self, node, port: int) -> None:
        self.node, self.port = node, port
        self.flushes = 0

    def _flush(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((FLUSH_FROM, 0))
            sock.sendto(b"flush", ("127.0.0.1", self.port))  # unicast on loopback only
        self.flushes += 1

    def settled(self) -> int:
        """Every bad datagram the listener has dropped so far, flushes excluded."""
        wait_until(
            lambda: udp_socket_stats(self.port)[0] == 0, 60, what="the listener to drain its queue"
        )
        mark = f"dropped datagram from {FLUSH_FROM}:"
        seen = self.node.log("listener").count(mark)
        last = [0.0]

        def flushed() -> bool:
            if self.node.log("listener").count(mark) > seen:
                return True
            if time.monotonic() - last[0] >= FLUSH_GAP:
                self._flush()
                last[0] = time.monotonic()
            return False

        wait_until(flushed, 60, interval=0.1, what="the listener to log a flush datagram alone")
        return drops_logged(self.node.log("listener")) - self.flushes


def test_udp_flood_changes_nothing_and_discovery_goes_on(make_node, capture):
    x = make_node("x", P2P_ANNOUNCE_INTERVAL=1, P2P_PEER_TTL=30)
    g = make_node("g", P2P_ANNOUNCE_INTERVAL=1)
    n = make_node("n", P2P_ANNOUNCE_INTERVAL=1)
    (g.share / "g.txt").write_bytes(b"genuine\n")
    x.start(("server", "announcer", "listener"))
    g.start(SPEAKERS)
    g_id = g.node_id()
    genuine = wait_until(
        lambda: capture.from_node(g_id)[-1:], 60, what="a genuine announcement of g to replay"
    )[0]
    capture.close()  # from now on x's listener is the only socket on the port
    wait_until(lambda: x.sees(g) and x.holdings_of(g.username) == 1, 60, what="x to learn g")
    port = x.udp_port

    def peer_rows():
        return x.sql("SELECT node_id, username, address, tcp_port FROM peers ORDER BY node_id")

    def table_counts():
        return {
            t: x.scalar(f"SELECT count(*) FROM {t}")
            for t in ("peers", "files", "chunks", "holdings", "bad_peers", "downloads")
        }

    before_rows, before_counts = peer_rows(), table_counts()
    listener = x.procs["listener"]
    pid = listener.pid
    rss_before, hwm_before = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
    labelled = junk(
        random.Random(1),
        victim_id=g_id,
        victim_seq=json.loads(genuine)["seq"],
        own_id=x.node_id(),
        genuine=genuine,
    )
    datagrams = [data for _, data in labelled]
    kinds = collections.Counter(kind for kind, _ in labelled)

    # 1. The blast: every one of the 50,000 as fast as one socket sends them.
    drops0 = udp_socket_stats(port)[1]
    sent, refused, blast_seconds = blast(datagrams, port)
    assert sent == FLOOD
    counted = DropCount(x, port)
    logged_blast = counted.settled()
    blast_drops = udp_socket_stats(port)[1] - drops0

    # 2. All of it again at the listener's full capacity, while n, a genuine node, starts.
    sustain = Sustain(datagrams, port)
    started = time.monotonic()
    sustain.start()
    n.start(SPEAKERS, wait=False)
    try:
        wait_until(lambda: x.sees(n), DISCOVERY_TIMEOUT, interval=0.1, what="x to see n")
        discovered_after = time.monotonic() - started
        assert sustain.is_alive(), "the junk stopped before n was discovered"
    finally:
        sustain.stop.set()
        sustain.join(SUSTAIN_LIMIT_SECONDS)
    assert sustain.sent >= FLOOD
    logged_sustain = counted.settled() - logged_blast
    sustain_drops = udp_socket_stats(port)[1] - drops0 - blast_drops
    # Every datagram that reached the listener was refused with a log line or counted,
    # except those with x's own node id, which it ignores silently as its own echo.
    own = sum(labelled[i % FLOOD][0] == "forged own id" for i in range(sustain.sent))
    assert sustain.sent - own - sustain_drops <= logged_sustain <= sustain.sent - own

    flooded = time.time()
    wait_until(
        lambda: x.heartbeats()["listener"][1] > flooded,
        30,
        what="a listener heartbeat written after the flood",
    )
    assert listener.poll() is None and x.heartbeats()["listener"][0] == pid
    rss_after, hwm_after = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")

    # The junk left no trace: the peers are g (untouched) and n, nothing else.
    after_rows = peer_rows()
    assert {r[0] for r in after_rows} == {g_id, n.node_id()}
    assert [r for r in after_rows if r[0] == g_id] == [r for r in before_rows if r[0] == g_id]
    assert "mallory" not in {r[1] for r in after_rows}
    after_counts = table_counts()
    assert after_counts == {**before_counts, "peers": before_counts["peers"] + 1}
    assert (rss_after - rss_before) * 1024 < RSS_GROWTH_LIMIT

    # And after the flood: g is still heard, and its new file is learned.
    heard = time.time()
    (g.share / "after.txt").write_bytes(b"after the flood\n")
    wait_until(
        lambda: (
            x.holdings_of(g.username) == 2
            and x.scalar("SELECT last_seen FROM peers WHERE node_id = ?", (g_id,)) > heard
        ),
        60,
        what="x to learn g's new file after the flood",
    )
    assert "Traceback" not in x.log("listener")
    print(
        f"\nudp flood: blast of {sent} datagrams ({dict(kinds)}) in {blast_seconds:.2f} s = "
        f"{sent / blast_seconds:.0f}/s, {refused} sendto errors, kernel dropped {blast_drops} "
        f"(queue full), listener refused {logged_blast}; then {sustain.sent} more at the "
        f"listener's pace over {sustain.seconds:.1f} s = {sustain.sent / sustain.seconds:.0f}/s, "
        f"kernel dropped {sustain_drops}, listener refused {logged_sustain} and ignored {own} "
        f"with its own id; n discovered {discovered_after:.1f} s into it; listener pid {pid} "
        f"unchanged; VmRSS {rss_before} -> {rss_after} kB, VmHWM {hwm_before} -> {hwm_after} "
        f"kB; tables {before_counts} -> {after_counts}"
    )


def test_forged_announcement_cannot_take_over_a_known_peer(make_node, capture, free_tcp_port):
    """One datagram with g's node id, another name, a dead port and seq 2**62, from the LAN."""
    x = make_node("x", P2P_ANNOUNCE_INTERVAL=1, P2P_PEER_TTL=30)
    g = make_node("g", P2P_ANNOUNCE_INTERVAL=1)
    (g.share / "g.txt").write_bytes(b"genuine\n")
    x.start(("server", "announcer", "listener"))
    g.start(SPEAKERS)
    g_id = g.node_id()
    genuine = json.loads(
        wait_until(lambda: capture.from_node(g_id)[-1:], 60, what="an announcement of g")[0]
    )
    capture.close()
    wait_until(lambda: x.sees(g) and x.holdings_of(g.username) == 1, 60, what="x to learn g")

    def g_row():
        return x.sql(
            "SELECT username, tcp_port, announce_seq, last_seen FROM peers WHERE node_id = ?",
            (g_id,),
        )[0]

    before = g_row()
    dropped = drops_logged(x.log("listener"))
    forged = {**genuine, "user": "mallory", "port": free_tcp_port(), "seq": 2**62}
    forged["cv"] += 1
    blast([dumps(forged)], x.udp_port)
    sent_at = time.time()
    # Handled either way: refused with a log line, or written over g's row.
    wait_until(
        lambda: drops_logged(x.log("listener")) > dropped or g_row()[2] == 2**62,
        30,
        what="x's listener to handle the forged announcement",
    )
    print(f"\nforged announcement: g's row {before[:3]} -> {g_row()[:3]}")
    # g's own next announcements (every second) must still be what x knows of g.
    row = wait_until(lambda: (r := g_row())[3] > sent_at + 1.5 and r, 30, what="g to be heard")
    assert row[:2] == before[:2]
    assert x.holdings_of(g.username) == 1

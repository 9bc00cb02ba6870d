"""Case 7: one node's chunk server under abuse on 127.0.0.1, while a genuine peer downloads.

At once: 500 connections opened and left idle, slow readers that ask for big
chunks and never read, half-sent requests (a header promising 1000 bytes, ten
bytes, silence), random bytes, a hypothesis fuzzer over the request format,
chunk requests for other files under forged hashes, and path traversal or
absolute names wherever a name could go. Meanwhile a second node downloads a
file from the attacked one with `p2pctl download`; it must arrive byte-identical.
The server must close what it should within its timeouts
(services/server/chunkserver.py: PREAUTH_TIMEOUT 10 s before the first request,
FRAME_TIMEOUT 10 s to finish a frame, STALL_TIMEOUT 30 s for a reader that reads
nothing, IDLE_TIMEOUT 60 s between requests) and its memory must stay bounded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import selectors
import socket
import threading
import time

import pytest
from fakepeer import read_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node import pick_udp_port, wait_until
from nodetools import status_kib

from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.server import chunkserver

pytestmark = pytest.mark.reliability

CHUNK = 1024 * 1024
BIG = 32 * CHUNK + 4321  # 33 chunks
IDLE_CONNECTIONS = 500
SLOW_READERS = 20
HALF_SENT = 20
IDLE_AFTER_REQUEST = 10
RANDOM_CONNECTIONS = 200
RSS_GROWTH_LIMIT = 20 * 1024 * 1024
IDLE_TIMEOUT = chunkserver.IDLE_TIMEOUT
# Chunks of partial.bin the gate lets through to b before the requests to b are made.
PARTIAL_CHUNKS = 8
TRAVERSAL = (
    "../../../../etc/passwd",
    "/etc/passwd",
    "big.bin/../../p2p.db",
    "..",
    "./big.bin",
    "C:\\Windows\\win.ini",
    "C:/Windows/win.ini",
    "\\\\server\\share",
    "big.bin\x00.txt",
    "%2e%2e/%2e%2e/etc/passwd",
)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# The abuse comes from a LAN's worth of hosts, each connection from a loopback address of
# its own (127.1.x.y), so the server's cap per address (test_hostile_slots.py) leaves it
# all in; the genuine download comes from 127.0.0.1.
_SOURCES = itertools.count()


def next_source() -> str:
    n = next(_SOURCES)
    return f"127.1.{n // 250 % 250}.{n % 250 + 1}"


class Raw:
    """A raw client connection to 127.0.0.1:port, from a source address of its own."""

    def __init__(self, port: int, *, welcome: bool = True, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.bind((next_source(), 0))
        self.sock.connect(("127.0.0.1", port))
        if welcome:
            protocol.decode_welcome(self.frame())

    def frame(self) -> bytes:
        return read_frame(self.sock)

    def reply(self) -> dict:
        return json.loads(self.frame())

    def send(self, raw: object) -> None:
        # Not protocol.frame: any JSON value at all, of any size, as json.dumps writes it.
        body = json.dumps(raw).encode()
        self.sock.sendall(protocol.FRAME_HEADER.pack(len(body)) + body)

    def close(self) -> None:
        self.sock.close()


class CloseWatch(threading.Thread):
    """Records when the server closes each socket of a set we only read from (EOF or reset).

    Sockets are added before the thread starts.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.opened: dict[int, float] = {}
        self.closed: dict[int, float] = {}
        self.groups: dict[int, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, sock: socket.socket, group: str, opened: float) -> None:
        sock.setblocking(False)
        self.opened[sock.fileno()] = opened
        self.groups[sock.fileno()] = group
        self.selector.register(sock, selectors.EVENT_READ)

    def run(self) -> None:
        while not self.stop.is_set() and self.selector.get_map():
            for key, _ in self.selector.select(0.1):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(sock)
                    with self.lock:
                        self.closed[sock.fileno()] = time.monotonic()

    def lifetimes(self, group: str) -> list[float]:
        with self.lock:
            return sorted(
                self.closed[fd] - self.opened[fd]
                for fd, g in self.groups.items()
                if g == group and fd in self.closed
            )

    def open_count(self, group: str) -> int:
        with self.lock:
            return sum(g == group and fd not in self.closed for fd, g in self.groups.items())

    def close_all(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def forged_and_traversal_requests(
    sha: str, root: str, other: tuple[str, str], secret: tuple[str, str]
) -> list[dict]:
    """Requests that must be refused: other files' chunks, lies, names where none belong.

    `other` and `secret` are (sha256, root) of a file the node knows only from a peer's
    catalog and of a file on its disk that it does not share.
    """
    get = {"op": "get", "sha": sha, "cs": CHUNK, "rt": root, "i": 0, "off": 0, "len": 0}
    other_sha, secret_sha = other[0], secret[0]
    requests = [
        {**get, "sha": secret_sha, "rt": secret[1]},  # on the node's disk, not shared
        {**get, "sha": other_sha, "rt": other[1]},  # known only from a peer's catalog
        {**get, "rt": "ab" * 32},  # the right file under a manifest root nobody offers
        {**get, "sha": hashlib.sha256(b"nothing").hexdigest()},
        {**get, "cs": CHUNK // 2},  # the right file under another chunk size
        {**get, "i": 33},  # one past the last chunk
        {**get, "i": protocol.MAX_CHUNKS_PER_FILE},
        {**get, "i": 32, "off": 4321},  # past the end of the short last chunk
        {**get, "off": CHUNK - 1, "len": 2},
        {"op": "have", "sha": secret_sha, "cs": CHUNK, "rt": secret[1]},
        {"op": "have", "sha": other_sha, "cs": CHUNK, "rt": other[1]},
    ]
    for name in TRAVERSAL:
        requests += [
            {**get, "sha": name},
            {"op": "have", "sha": name, "cs": CHUNK},
            {"op": name},
            {"op": "manifest", "files": [[name, CHUNK]]},
            {"op": "get", "name": name, "path": name, "cs": CHUNK, "i": 0, "off": 0, "len": 0},
            {"op": "auth", "mac": name},
        ]
    return requests


def fuzz_requests(sha: str, root: str) -> st.SearchStrategy[dict]:
    names = st.sampled_from(TRAVERSAL)
    shas = st.one_of(
        st.sampled_from([sha, sha.upper(), sha[:-1], sha + "0", "0" * 64]),
        names,
        st.text(max_size=70),
        st.integers(),
        st.none(),
    )
    numbers = st.one_of(
        st.sampled_from([0, 1, -1, CHUNK, protocol.MIN_CHUNK, protocol.MAX_CHUNK, 33]),
        st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30)]),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=12),
        st.none(),
    )
    leaves = st.one_of(numbers, shas, names)
    values = st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids),
        max_leaves=12,
    )
    ops = st.one_of(
        st.sampled_from(["get", "have", "catalog", "auth", "manifest", "GET", "", "welcome"]),
        names,
        st.text(max_size=16),
        values,
    )
    files = st.lists(st.one_of(st.tuples(shas, numbers).map(list), values), max_size=300)
    # Anything at all in the request's shape ...
    anything = st.fixed_dictionaries(
        {"op": ops},
        optional={
            "sha": shas,
            "cs": numbers,
            "i": numbers,
            "off": numbers,
            "len": numbers,
            "files": files,
            "mac": st.one_of(shas, st.just("a" * 64)),
            "name": names,
            "path": names,
            "extra": values,
        },
    )
    # ... and valid requests with one or two fields changed, which reach past the
    # decoder into the server's own checks (chunk index, offset, length, file).
    templates = st.sampled_from(
        [
            {"op": "get", "sha": sha, "cs": CHUNK, "rt": root, "i": 0, "off": 0, "len": 0},
            {"op": "get", "sha": sha, "cs": CHUNK, "rt": root, "i": 32, "off": 4000, "len": 321},
            {"op": "have", "sha": sha, "cs": CHUNK, "rt": root},
            {"op": "manifest", "files": [[sha, CHUNK, root]]},
            {"op": "catalog"},
            {"op": "auth", "mac": "a" * 64},
        ]
    )
    fields = st.sampled_from(["op", "sha", "cs", "i", "off", "len", "files", "mac"])
    changes = st.dictionaries(fields, st.one_of(numbers, shas, files), min_size=1, max_size=2)
    near_valid = st.builds(lambda t, c: {**t, **c}, templates, changes)
    return st.one_of(anything, near_valid)


def _offer_of(data: bytes) -> tuple[str, str]:
    """(sha256, manifest root) of bytes indexed with CHUNK-sized chunks."""
    return hashlib.sha256(data).hexdigest(), protocol.manifest_root(manifest_entries(data, CHUNK))


def test_chunk_server_survives_abuse_and_serves_a_genuine_download(make_node):
    a = make_node("a", P2P_CHUNK_SIZE=CHUNK, P2P_ANNOUNCE_INTERVAL=1)
    b = make_node("b", P2P_CHUNK_SIZE=CHUNK, P2P_ANNOUNCE_INTERVAL=1)
    data = os.urandom(BIG)
    sha, root = _offer_of(data)
    (a.share / "big.bin").write_bytes(data)
    secret = os.urandom(5000)  # on a's disk, outside its share folder
    (a.home / "secret.bin").write_bytes(secret)
    other = os.urandom(3000)  # b shares it, so a knows it only from b's catalog
    (b.share / "other.bin").write_bytes(other)
    a.start()
    b.start()
    wait_until(
        lambda: a.holdings_of(b.username) == 1 and b.holdings_of(a.username) == 1,
        60,
        what="a and b to learn each other's files",
    )
    port = a.tcp_port()
    server = a.procs["server"]
    pid = server.pid
    rss_before, fds_before = status_kib(pid, "VmRSS"), open_fds(pid)
    watch = CloseWatch()
    slow: list[Raw] = []  # never read: the server's closing them shows only in its log
    try:
        # 1. Slow readers: ask for every chunk of the big file, read nothing.
        opened = time.monotonic()
        for _ in range(SLOW_READERS):
            conn = Raw(port, rcvbuf=4096)
            for i in range(33):
                conn.send(
                    {"op": "get", "sha": sha, "cs": CHUNK, "rt": root, "i": i, "off": 0, "len": 0}
                )
            slow.append(conn)
        slow_opened = time.monotonic()
        # 2. 500 idle connections that never say a word.
        for _ in range(IDLE_CONNECTIONS):
            conn = Raw(port, welcome=False)
            watch.add(conn.sock, "idle", time.monotonic())
        # 3. Half-sent: a header promising 1000 bytes, then 10 of them, then silence.
        for _ in range(HALF_SENT):
            conn = Raw(port)
            conn.sock.sendall(protocol.FRAME_HEADER.pack(1000) + b'{"op":"get')
            watch.add(conn.sock, "half", time.monotonic())
        # 4. One good request, then idle (IDLE_TIMEOUT applies from here).
        for _ in range(IDLE_AFTER_REQUEST):
            conn = Raw(port)
            conn.send({"op": "have", "sha": sha, "cs": CHUNK, "rt": root})
            assert conn.reply()["ok"] is True
            watch.add(conn.sock, "idle-after-request", time.monotonic())
        watch.start()
        attack_set_up = time.monotonic() - opened
        rss_loaded, fds_loaded = status_kib(pid, "VmRSS"), open_fds(pid)

        # The server logs each connection it closes for a timeout; the slow readers'
        # are the ones beyond the idle and half-sent ones.
        def stalled_closed() -> int:
            return a.log("server").count("closed idle or stalled connection") - (
                IDLE_CONNECTIONS + HALF_SENT
            )

        # The genuine download runs while all of that is held open.
        result: dict[str, object] = {}

        def download() -> None:
            started = time.monotonic()
            result["done"] = b.p2pctl("download", "big.bin", timeout=300)
            result["seconds"] = time.monotonic() - started
            result["open"] = {g: watch.open_count(g) for g in ("idle", "half")} | {
                "slow": SLOW_READERS - max(0, stalled_closed())
            }

        downloader = threading.Thread(target=download, daemon=True)
        downloader.start()

        # 5. Random bytes, each on its own connection.
        rng = random.Random(7)
        random_outcomes = {"error reply": 0, "closed": 0}
        for _ in range(RANDOM_CONNECTIONS):
            conn = Raw(port)
            try:
                conn.sock.sendall(rng.randbytes(rng.randint(1, 5000)))
                reply = conn.reply()
                assert reply["ok"] is False and isinstance(reply["error"], str), reply
                random_outcomes["error reply"] += 1
            except (ConnectionError, TimeoutError):
                random_outcomes["closed"] += 1
            finally:
                conn.close()
        assert server.poll() is None

        # 6. Forged hashes, other files' chunks, names where none belong: each refused.
        forged = forged_and_traversal_requests(sha, root, _offer_of(other), _offer_of(secret))
        for raw in forged:
            conn = Raw(port)
            try:
                conn.send(raw)
                reply = conn.reply()
            finally:
                conn.close()
            assert reply["ok"] is False and isinstance(reply["error"], str), (raw, reply)

        # 7. The fuzzer: each request gets an error reply, or a reply if it is valid, or a
        # closed connection; the server stays up.
        fuzz_outcomes = {"error reply": 0, "ok reply": 0, "closed": 0}

        @settings(
            max_examples=200,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(fuzz_requests(sha, root))
        def fuzz(raw: dict) -> None:
            body = json.dumps(raw).encode()
            if len(body) > protocol.MAX_FRAME:
                return
            try:
                protocol.decode_request(body)
                valid = True
            except protocol.ProtocolError:
                valid = False
            conn = Raw(port)
            try:
                conn.sock.sendall(protocol.FRAME_HEADER.pack(len(body)) + body)
                reply = conn.reply()
            except ConnectionError:
                fuzz_outcomes["closed"] += 1
                reply = None
            finally:
                conn.close()
            assert server.poll() is None, f"the server died on {raw!r}"
            if reply is None:
                return
            assert isinstance(reply.get("ok"), bool), (raw, reply)
            if not valid:
                assert reply["ok"] is False and isinstance(reply["error"], str), (raw, reply)
            fuzz_outcomes["ok reply" if reply["ok"] else "error reply"] += 1

        fuzz()

        downloader.join(300)
        done = result["done"]
        assert done.returncode == 0, done.stderr
        saved = b.home / "downloads" / "big.bin"
        assert saved.read_bytes() == data
        # The download went on beside everything the attack still held open.

        # Timeouts: idle and half-sent connections go after their 10 s; readers that
        # read nothing after STALL_TIMEOUT (30 s) of no progress. Never sooner; how much
        # later a busy machine makes it is bounded only by these waits.
        wait_until(
            lambda: (
                len(watch.lifetimes("idle")) == IDLE_CONNECTIONS
                and len(watch.lifetimes("half")) == HALF_SENT
            ),
            chunkserver.PREAUTH_TIMEOUT + 30,
            interval=0.2,
            what="the server to close the idle and half-sent connections",
        )

        wait_until(
            lambda: stalled_closed() >= SLOW_READERS,
            chunkserver.STALL_TIMEOUT + 30,
            interval=0.2,
            what="the server to drop the readers that read nothing",
        )
        slow_closed_after = time.monotonic() - slow_opened
        idle, half = watch.lifetimes("idle"), watch.lifetimes("half")
        assert idle[0] >= chunkserver.PREAUTH_TIMEOUT - 1
        assert half[0] >= chunkserver.FRAME_TIMEOUT - 1
        assert slow_closed_after >= chunkserver.STALL_TIMEOUT - 1
        # One request, then silence: IDLE_TIMEOUT (60 s) applies; none may be cut sooner
        # (on a quiet machine this test ends before any is cut at all).
        cut_early = [t for t in watch.lifetimes("idle-after-request") if t < IDLE_TIMEOUT - 1]
        assert not cut_early, f"idle-after-request connections cut after {cut_early} s"
    finally:
        watch.close_all()
        for conn in slow:
            conn.close()

    assert server.poll() is None and a.heartbeats()["server"][0] == pid
    wait_until(lambda: open_fds(pid) <= fds_before + 5, 30, what="the server to close its fds")
    rss_after, hwm = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
    assert (rss_after - rss_before) * 1024 < RSS_GROWTH_LIMIT
    assert "Traceback" not in a.log("server")
    uploaded = a.scalar("SELECT count(*) FROM uploads WHERE sha256 = ?", (sha,))
    # Nothing of the unshared file or of the file a knows only from b ever left a.
    assert (
        a.scalar(
            "SELECT count(*) FROM uploads WHERE sha256 IN (?, ?)",
            (_offer_of(secret)[0], _offer_of(other)[0]),
        )
        == 0
    )
    print(
        f"\ntcp abuse: set up {IDLE_CONNECTIONS} idle, {SLOW_READERS} slow readers, "
        f"{HALF_SENT} half-sent, {IDLE_AFTER_REQUEST} idle-after-request in "
        f"{attack_set_up:.1f} s (server fds {fds_before} -> {fds_loaded}); "
        f"{RANDOM_CONNECTIONS} random-bytes connections {random_outcomes}; "
        f"{len(forged)} forged/traversal requests all refused; fuzzer {fuzz_outcomes}; "
        f"genuine download of {BIG} bytes in {result['seconds']:.1f} s byte-identical "
        f"(attack connections still open when it ended: {result['open']}); closed after: "
        f"idle {idle[0]:.1f}-{idle[-1]:.1f} s, half-sent {half[0]:.1f}-{half[-1]:.1f} s, "
        f"all slow readers by {slow_closed_after:.1f} s; "
        f"idle-after-request still open {watch.open_count('idle-after-request')} "
        f"(IDLE_TIMEOUT {IDLE_TIMEOUT:.0f} s not waited for); "
        f"uploads rows for big.bin {uploaded}; server pid {pid} unchanged; "
        f"VmRSS {rss_before} -> {rss_loaded} (loaded) -> {rss_after} kB, VmHWM {hwm} kB"
    )


def test_chunk_request_past_the_end_of_a_partial_download_is_refused(make_node, chunk_gate):
    """A node offers a download in progress; a request for chunk 2**20 of it must be refused.

    b reaches a through a gate (chunkgate.py) that lets PARTIAL_CHUNKS of 32 through
    until the requests are made, so b's download is partial then on any machine.
    """
    chunk = 256 * 1024
    data = os.urandom(32 * chunk)
    sha = hashlib.sha256(data).hexdigest()
    root = protocol.manifest_root(manifest_entries(data, chunk))
    a = make_node("a", udp_port=pick_udp_port(), P2P_CHUNK_SIZE=chunk)
    b = make_node("b", P2P_CHUNK_SIZE=chunk)
    (a.share / "partial.bin").write_bytes(data)
    a.start()
    b.start()
    gate = chunk_gate(a, b.udp_port, budget=PARTIAL_CHUNKS)
    wait_until(lambda: b.holdings_of(a.username) == 1, 60, what="b to learn partial.bin")
    done = b.p2pctl("download", "partial.bin", "--no-wait")
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: (
            (b.scalar("SELECT bytes_done FROM downloads WHERE status = 'active'") or 0)
            and gate.holding(sha)
        ),
        60,
        what=f"b to hold part of the file and ask for more ({gate})",
    )
    replies = {}
    for index in (31, 32, protocol.MAX_CHUNKS_PER_FILE):
        conn = Raw(b.tcp_port())
        try:
            # A well-formed request (with the offer's root), so it reaches the range check.
            conn.send(
                {"op": "get", "sha": sha, "cs": chunk, "rt": root, "i": index, "off": 0, "len": 0}
            )
            replies[index] = conn.reply()
        except ConnectionError as exc:
            replies[index] = {"closed": str(exc)}
        finally:
            conn.close()
    print(f"\nchunk requests to a partial download: {replies}")
    # The gate let through fewer chunks than the file has: the download was partial.
    assert b.scalar("SELECT status FROM downloads") in ("active", "waiting")
    gate.open()
    wait_until(
        lambda: b.scalar("SELECT status FROM downloads") == "done", 120, what="the download to end"
    )
    assert "Traceback" not in b.log("server")
    for index in (32, protocol.MAX_CHUNKS_PER_FILE):
        assert replies[index].get("ok") is False, replies[index]

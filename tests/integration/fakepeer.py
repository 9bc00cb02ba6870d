"""A scripted p2pshare peer built on the protocol package, that can lie on purpose, and the
pieces the tests speak to nodes with: forged announcements, a datagram capture, frames
read off a socket.

`FakePeer` listens on 127.0.0.1 and, once started with a UDP port, announces itself to
the loopback broadcast address like a real node. It serves a catalog, manifests,
holdings and chunks of its `files` (true ones, or lies: `lie` sends wrong bytes for
chosen chunks, `hangup` closes the connection in the middle of one), or exactly the
raw replies it is given (`catalog`, `manifests`), or stalls. `hostile_fields` gives the
fields of one that offers made-up contents ("bombs") whose manifests prove themselves.

THE NETWORK RULE: TCP on 127.0.0.1 only; datagrams to 127.255.255.255 or 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.protocol import FileKey

LOOPBACK_BROADCAST = "127.255.255.255"
LOOPBACK = "127.0.0.1"
BOMB_CHUNK = protocol.MIN_CHUNK
BOMB_CHUNKS = protocol.MAX_CHUNKS_PER_FILE
# What a request is logged as in FakePeer.requests.
REQUEST_NAMES = {
    protocol.CatalogRequest: "catalog",
    protocol.ChangesRequest: "changes",
    protocol.ManifestRequest: "manifest",
    protocol.HaveRequest: "have",
    protocol.ChunkRequest: "chunk",
}


# ---------------------------------------------------------------- frames off a socket


def recv_exact(conn: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from `conn`. Raises ConnectionError if it closes first."""
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed")
        buf += part
    return bytes(buf)


def read_frame(conn: socket.socket) -> bytes:
    """The body of the next frame on `conn`. Raises ConnectionError and ProtocolError."""
    return recv_exact(conn, protocol.frame_length(recv_exact(conn, protocol.FRAME_HEADER.size)))


def take_frames(buf: bytearray) -> list[bytes]:
    """The bodies of the complete frames at the front of `buf`, taken off it (a partial
    frame stays for more bytes). Raises ProtocolError on a header over the limit."""
    frames = []
    header = protocol.FRAME_HEADER.size
    start = 0
    while len(buf) - start >= header:
        end = start + header + protocol.frame_length(bytes(buf[start : start + header]))
        if len(buf) < end:
            break
        frames.append(bytes(buf[start + header : end]))
        start = end
    del buf[:start]
    return frames


# ---------------------------------------------------------------- datagrams


def send_datagram(data: bytes, port: int, target: str = LOOPBACK_BROADCAST) -> None:
    """One UDP datagram from 127.0.0.1 to a loopback target (never anything else)."""
    assert target in (LOOPBACK_BROADCAST, LOOPBACK), target
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((LOOPBACK, 0))
        sock.sendto(data, (target, port))


def announce(
    port: int,
    *,
    node_id: str,
    username: str,
    tcp_port: int,
    catalog_version: int = 1,
    seq: int = 1,
    key: str | None = None,
    epoch: str | None = None,
    target: str = LOOPBACK_BROADCAST,
) -> bytes:
    """Forge one announcement with protocol.encode_announce and send it; returns the bytes."""
    ann = protocol.Announce(
        node_id, username, tcp_port, catalog_version, seq, time.time(), catalog_epoch=epoch
    )
    data = protocol.encode_announce(ann, key=key)
    send_datagram(data, port, target)
    return data


class DatagramCapture:
    """Every datagram arriving on the announcement port, received beside the nodes' listeners.

    Bound to 0.0.0.0 with SO_REUSEADDR and SO_REUSEPORT, so it gets a copy of each
    broadcast to 127.255.255.255 (unicast would go to one socket only).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("0.0.0.0", port))
        self.sock.settimeout(0.2)
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((data, addr))

    def from_node(self, node_id: str) -> list[bytes]:
        """Datagrams whose JSON says they come from `node_id`."""
        out = []
        for data, _ in list(self.received):
            with contextlib.suppress(ValueError):
                raw = json.loads(data)
                if isinstance(raw, dict) and raw.get("node") == node_id:
                    out.append(data)
        return out

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


# ---------------------------------------------------------------- what a peer offers


@dataclass
class FakeFile:
    name: str
    data: bytes
    chunk_size: int
    # Chunks this peer claims and serves; None: all.
    have: set[int] | None = None
    # A manifest to offer instead of the true one (a liar's); its root is what it hashes to.
    manifest: list[str] | None = None

    @property
    def key(self) -> FileKey:
        return FileKey(
            hashlib.sha256(self.data).hexdigest(),
            self.chunk_size,
            protocol.manifest_root(self.hashes()),
        )

    @property
    def count(self) -> int:
        return protocol.chunk_count(len(self.data), self.chunk_size)

    @property
    def entry(self) -> protocol.CatalogEntry:
        return protocol.CatalogEntry(self.name, self.key, len(self.data), self.bits())

    def bits(self) -> bytes | None:
        if self.have is None:
            return None
        bits = protocol.bitfield_empty(self.count)
        for i in self.have:
            protocol.bitfield_set(bits, i)
        return bytes(bits)

    def chunk(self, i: int) -> bytes:
        return self.data[i * self.chunk_size : (i + 1) * self.chunk_size]

    def hashes(self) -> list[str]:
        """The manifest offered: chained SHA-256 states, the last the file's SHA-256."""
        if self.manifest is not None:
            return self.manifest
        return manifest_entries(self.data, self.chunk_size)


def catalog_entry(
    name: str, content: bytes, chunk_size: int = protocol.MIN_CHUNK
) -> tuple[protocol.CatalogEntry, list[str]]:
    """A true catalog entry for `content` under `name` (not checked), and its manifest."""
    file = FakeFile(name, content, chunk_size)
    return file.entry, file.hashes()


@dataclass(frozen=True)
class Bomb:
    """A made-up content whose manifest proves itself: zero entries ending in the claimed
    SHA-256, offered under the root they hash to."""

    name: str
    key: FileKey
    size: int
    chunks: int

    @property
    def entry(self) -> protocol.CatalogEntry:
        return protocol.CatalogEntry(self.name, self.key, self.size, None)

    def manifest(self) -> bytes:
        """The raw entries: zeros, then the claimed SHA-256."""
        return bytes(32 * (self.chunks - 1)) + bytes.fromhex(self.key.sha256)


def make_bomb(
    name: str, chunks: int = BOMB_CHUNKS, chunk_size: int = BOMB_CHUNK, sha: str | None = None
) -> Bomb:
    """A made-up content, or (given `sha`) a made-up offer of a real file's SHA-256."""
    sha = secrets.token_hex(32) if sha is None else sha
    digests = bytes(32 * (chunks - 1)) + bytes.fromhex(sha)
    key = FileKey(sha, chunk_size, hashlib.sha256(digests).hexdigest())
    return Bomb(name, key, chunks * chunk_size, chunks)


def bomb_manifests(bombs: list[Bomb]) -> Callable[[protocol.ManifestRequest], bytes]:
    """A manifest reply of one bomb per request (more would pass the old inflate limit at
    once), each made once: 2^20 entries of zeros compress to about 40 KiB at level 9."""
    payloads: dict[FileKey, bytes] = {}
    lock = threading.Lock()

    def answer(req: protocol.ManifestRequest) -> bytes:
        for bomb in bombs:
            if bomb.key in req.files:
                with lock:
                    if bomb.key not in payloads:
                        label = f"{bomb.key.sha256}:{bomb.key.chunk_size}:{bomb.key.root}"
                        body = json.dumps({label: base64.b64encode(bomb.manifest()).decode()})
                        payloads[bomb.key] = zlib.compress(body.encode(), 9)
                    return payloads[bomb.key]
        return protocol.encode_manifests({})

    return answer


def one_chunk_offer(name: str) -> protocol.CatalogEntry:
    """A made-up one-chunk content (a catalog's filler)."""
    sha = secrets.token_hex(32)
    key = FileKey(sha, BOMB_CHUNK, protocol.one_chunk_root(sha))
    return protocol.CatalogEntry(name, key, 1000, None)


# ---------------------------------------------------------------- the peer


@dataclass
class FakePeer:
    """A peer on 127.0.0.1 that speaks the p2pshare protocol and says what it is told.

    Its catalog is its `files` and `offers` (made-up entries, no bytes behind them), or
    the raw reply payload `catalog` (lying about anything: build it with
    protocol.encode_catalog, which does not check names, or by hand). Its manifests are
    its files' (or a liar's `FakeFile.manifest`), or whatever `manifests` answers a request
    with (raw payload bytes). With an `epoch` it keeps a catalog log: it announces the log
    and answers a changes request with the whole catalog, page after page.
    """

    files: list[FakeFile] = field(default_factory=list)
    # The announcement port start() announces on; None: it never announces (a test forges
    # its announcements with `announce`).
    udp_port: int | None = None
    username: str = field(default_factory=lambda: f"fake-{secrets.token_hex(3)}")
    node_id: str = field(default_factory=lambda: secrets.token_hex(16))
    key: str | None = None  # as the wire uses it (protocol.derive_network_key)
    # Without the key, ask for one anyway and answer any proof with a bare ok: a server
    # pretending to belong to a keyed network.
    pretend_key: bool = False
    offers: list[protocol.CatalogEntry] = field(default_factory=list)
    extra_catalog: list[list[object]] = field(default_factory=list)  # raw, possibly lying
    catalog: bytes | None = None
    manifests: Callable[[protocol.ManifestRequest], bytes] | None = None
    epoch: str | None = None
    # A peer that holds a catalog fetch open: "silent" answers nothing after the first
    # request; "trickle" promises a 1 MB catalog and sends one byte of it per second.
    stall: str | None = None
    lie: set[int] = field(default_factory=set)  # chunk indices answered with wrong bytes
    lie_all: bool = False
    hangup: set[int] = field(default_factory=set)  # close mid-chunk
    # Asked for this chunk, it dies: hangs up and refuses every connection after.
    quit_at: int | None = None
    # The TCP port to listen on (0: any free one): a peer's, once it closed it.
    tcp_port: int = 0
    # How long a connection may idle before the peer hangs up.
    idle_timeout: float = 60.0
    # Each request received after the key proof (or without one), by REQUEST_NAMES;
    # "stalled" for one it stalled on.
    requests: list[str] = field(default_factory=list)
    chunks_served: int = 0
    bytes_served: int = 0

    def __post_init__(self) -> None:
        self.seq = 0
        self.entries = [f.entry for f in self.files] + self.offers
        # A catalog log counts one change per entry; a whole catalog is version 1.
        self.version = len(self.entries) if self.epoch is not None else 1
        self.stop = threading.Event()
        self.refusing = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, self.tcp_port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self, announce_every: float = 0.5) -> FakePeer:
        """Serve, and announce every `announce_every` seconds if it has a UDP port."""
        loops = [self._accept_loop]
        if self.udp_port is not None:
            loops.append(lambda: self._announce_loop(announce_every))
        for target in loops:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        self.sock.close()

    def refuse_connections(self) -> None:
        """Close the TCP port but go on announcing: a peer then gets 'connection refused'
        from an offer it still sees (a restarted node's old port, a server that died)."""
        self.refusing.set()
        self.threads[0].join(timeout=5)  # the accept loop closes the socket as it leaves

    def count(self, op: str) -> int:
        return self.requests.count(op)

    @property
    def requests_after_auth(self) -> int:
        return len(self.requests)

    def announce(self) -> None:
        assert self.udp_port is not None
        self.seq += 1
        with contextlib.suppress(OSError):
            announce(
                self.udp_port,
                node_id=self.node_id,
                username=self.username,
                tcp_port=self.port,
                catalog_version=self.version,
                seq=self.seq,
                key=self.key,
                epoch=self.epoch,
            )

    def _announce_loop(self, every: float) -> None:
        while not self.stop.is_set():
            self.announce()
            self.stop.wait(every)

    def _accept_loop(self) -> None:
        while not self.stop.is_set() and not self.refusing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        if self.refusing.is_set():
            self.sock.close()

    # ------------------------------------------------------------ serving

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.idle_timeout)
        nonce = secrets.token_hex(16)
        with conn, contextlib.suppress(OSError, protocol.ProtocolError):
            asks = self.key is not None or self.pretend_key
            conn.sendall(protocol.encode_welcome(protocol.Welcome(nonce, asks)))
            while not self.stop.is_set():
                req = protocol.decode_request(read_frame(conn))
                if isinstance(req, protocol.AuthRequest):
                    conn.sendall(self._auth_reply(req, nonce))
                    continue
                if self.stall:
                    self.requests.append("stalled")
                    self._stall(conn)
                    return
                self.requests.append(REQUEST_NAMES[type(req)])
                if not self._answer(conn, req):
                    return

    def _stall(self, conn: socket.socket) -> None:
        if self.stall == "trickle":
            conn.sendall(protocol.encode_ok(len=1_000_000))
        for _ in range(120):  # bounded; close() ends it sooner
            if self.stop.wait(1.0):
                return
            if self.stall == "trickle":
                conn.sendall(b" ")

    def _auth_reply(self, req: protocol.AuthRequest, nonce: str) -> bytes:
        """An honest peer proves the key in turn; a pretender answers a bare ok."""
        if self.key is None or req.nonce is None:
            return protocol.encode_ok()
        return protocol.encode_ok(mac=protocol.server_auth_mac(self.key, nonce, req.nonce))

    def _file(self, key: FileKey) -> FakeFile | None:
        return next((f for f in self.files if f.key == key), None)

    def _answer(self, conn: socket.socket, req: protocol.Request) -> bool:
        """Answer one request; False to hang up."""
        if self.refusing.is_set():
            return False
        if isinstance(req, protocol.CatalogRequest):
            self._send_payload(conn, self._catalog_payload())
        elif isinstance(req, protocol.ChangesRequest):
            if self.epoch is None:
                conn.sendall(protocol.encode_error("no catalog log"))
            else:
                self._send_pages(conn)
        elif isinstance(req, protocol.ManifestRequest):
            if self.manifests is not None:
                payload = self.manifests(req)
            else:
                found = {f.key: f.hashes() for f in self.files if f.key in req.files}
                payload = protocol.encode_manifests(found)
            self._send_payload(conn, payload)
        elif isinstance(req, protocol.HaveRequest):
            f = self._file(req.file)
            if f is None:
                conn.sendall(protocol.encode_error("not here"))
            else:
                conn.sendall(protocol.encode_have(f.bits(), f.count))
        elif isinstance(req, protocol.ChunkRequest):
            return self._send_chunk(conn, req)
        return True

    @staticmethod
    def _send_payload(conn: socket.socket, payload: bytes) -> None:
        conn.sendall(protocol.encode_ok(len=len(payload)) + payload)

    def _catalog_payload(self) -> bytes:
        if self.catalog is not None:
            return self.catalog
        if not self.extra_catalog:
            return protocol.encode_catalog(self.entries, self.version)
        # Raw rows no CatalogEntry would hold (names, types): the body is built by hand.
        body = json.loads(zlib.decompress(protocol.encode_catalog(self.entries, self.version)))
        body["files"].extend(self.extra_catalog)
        return zlib.compress(json.dumps(body).encode())

    def _send_pages(self, conn: socket.socket) -> None:
        """The whole catalog, page after page (a reset each time: simplest, and allowed)."""
        assert self.epoch is not None
        step = protocol.PAGE_ENTRIES
        for start in range(0, max(len(self.entries), 1), step):
            part = self.entries[start : start + step]
            more = start + step < len(self.entries)
            page = protocol.CatalogPage(self.epoch, start, start + len(part), True, more, part, [])
            conn.sendall(protocol.encode_page(page))

    def _send_chunk(self, conn: socket.socket, req: protocol.ChunkRequest) -> bool:
        f = self._file(req.file)
        if f is None or (f.have is not None and req.index not in f.have):
            conn.sendall(protocol.encode_error("no such chunk"))
            return True
        if req.index == self.quit_at:
            self.refusing.set()
            return False
        data = f.chunk(req.index)
        if self.lie_all or req.index in self.lie:
            data = os.urandom(len(data))
        conn.sendall(protocol.encode_chunk_header(protocol.ChunkHeader(req.index, 0, len(data))))
        if req.index in self.hangup:
            conn.sendall(data[: len(data) // 2])
            return False
        conn.sendall(data)
        self.chunks_served += 1
        self.bytes_served += len(data)
        return True


def hostile_fields(bombs: list[Bomb], udp_port: int, *, filler: int = 0) -> dict[str, Any]:
    """The FakePeer fields of Mallory, for the budget tests and bench/hostile.py: it offers
    `bombs` (and `filler` made-up one-chunk contents) from a catalog log, so it is asked for
    changes, and answers each manifest request with one bomb's manifest. About 40 KiB on
    the wire a bomb, 2^20 chunk rows stored."""
    filling = [one_chunk_offer(f"filler/{i:07d}.bin") for i in range(filler)]
    return {
        "udp_port": udp_port,
        "username": "mallory",
        "offers": [b.entry for b in bombs] + filling,
        "manifests": bomb_manifests(bombs),
        "epoch": secrets.token_hex(8),
        "idle_timeout": 30,
    }

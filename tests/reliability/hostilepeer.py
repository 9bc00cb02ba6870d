"""A scripted hostile peer for the budget tests and bench/hostile.py, built on the protocol
package: it announces (with a catalog log, so it is asked for changes), serves a catalog
of made-up contents that claim 2^20 chunks of 16 KiB each, and answers each manifest
request with a manifest that proves itself: zero entries ending in the claimed SHA-256,
offered under the root they hash to. About 40 KiB on the wire, 2^20 chunk rows stored.

It listens on 127.0.0.1 and announces to 127.255.255.255 only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field

from p2pshare.services import protocol
from p2pshare.services.protocol import FileKey

BOMB_CHUNK = protocol.MIN_CHUNK
BOMB_CHUNKS = protocol.MAX_CHUNKS_PER_FILE
LOOPBACK = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"


@dataclass(frozen=True)
class Bomb:
    """A made-up content whose manifest proves itself."""

    name: str
    key: FileKey
    size: int
    chunks: int

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


@dataclass
class HostilePeer:
    """Serves `bombs` (and `filler`: more made-up one-chunk entries) to whoever asks."""

    bombs: list[Bomb]
    udp_port: int
    filler: int = 0  # extra one-chunk entries in its catalog
    username: str = "mallory"
    announce_every: float = 0.5
    manifests_asked: int = 0
    manifests_sent: int = 0
    _payloads: dict[FileKey, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node_id = secrets.token_hex(16)
        self.epoch = secrets.token_hex(8)
        self.entries = [protocol.CatalogEntry(b.name, b.key, b.size, None) for b in self.bombs] + [
            _one_chunk_entry(f"filler/{i:07d}.bin") for i in range(self.filler)
        ]
        self.version = len(self.entries)
        self.seq = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.threads = [
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._announce_loop, daemon=True),
        ]

    def start(self) -> HostilePeer:
        for thread in self.threads:
            thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.sock.close()
        self.udp.close()

    def _announce_loop(self) -> None:
        while not self.stop.is_set():
            self.seq += 1
            ann = protocol.Announce(
                self.node_id, self.username, self.port, self.version, self.seq, time.time(),
                catalog_epoch=self.epoch,
            )  # fmt: skip
            with contextlib.suppress(OSError):
                self.udp.sendto(
                    protocol.encode_announce(ann, key=None), (LOOPBACK_BROADCAST, self.udp_port)
                )
            self.stop.wait(self.announce_every)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError, protocol.ProtocolError):
            conn.sendall(protocol.encode_welcome(protocol.Welcome(secrets.token_hex(16), False)))
            for _ in range(10_000):  # bounded
                header = _recv_exact(conn, 4)
                body = _recv_exact(conn, protocol.frame_length(header))
                req = protocol.decode_request(body)
                if isinstance(req, protocol.ChangesRequest):
                    self._send_pages(conn)
                elif isinstance(req, protocol.ManifestRequest):
                    payload = self._manifest_reply(req.files)
                    conn.sendall(protocol.encode_ok(len=len(payload)) + payload)
                else:
                    conn.sendall(protocol.encode_error("not here"))

    def _send_pages(self, conn: socket.socket) -> None:
        """The whole catalog, page after page (a reset each time: simplest, and allowed)."""
        step = protocol.PAGE_ENTRIES
        for start in range(0, max(len(self.entries), 1), step):
            part = self.entries[start : start + step]
            more = start + step < len(self.entries)
            page = protocol.CatalogPage(self.epoch, start, start + len(part), True, more, part, [])
            conn.sendall(protocol.encode_page(page))

    def _manifest_reply(self, keys: tuple[FileKey, ...]) -> bytes:
        """One bomb's manifest per reply (more would pass the old inflate limit at once)."""
        with self.lock:
            self.manifests_asked += 1
        for bomb in self.bombs:
            if bomb.key in keys:
                with self.lock:
                    self.manifests_sent += 1
                    payload = self._payloads.get(bomb.key)
                    if payload is None:
                        payload = self._payloads[bomb.key] = _manifest_payload(bomb)
                return payload
        return zlib.compress(b"{}")


def _manifest_payload(bomb: Bomb) -> bytes:
    label = f"{bomb.key.sha256}:{bomb.key.chunk_size}:{bomb.key.root}"
    body = json.dumps({label: base64.b64encode(bomb.manifest()).decode()})
    return zlib.compress(body.encode(), 9)


def _one_chunk_entry(name: str) -> protocol.CatalogEntry:
    sha = secrets.token_hex(32)
    key = FileKey(sha, BOMB_CHUNK, protocol.one_chunk_root(sha))
    return protocol.CatalogEntry(name, key, 1000, None)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed")
        buf += part
    return bytes(buf)

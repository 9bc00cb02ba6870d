"""A fake p2pshare peer built from the protocol module, that can lie on purpose.

It announces itself over UDP to the loopback broadcast address and serves a
catalog, manifests, holdings and chunks over TCP on 127.0.0.1, like a real
node; `lie` makes it send wrong bytes for chosen chunks, `hangup` makes it
close the connection in the middle of a chunk.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.protocol import FileKey

BROADCAST = "127.255.255.255"


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


@dataclass
class FakePeer:
    files: list[FakeFile]
    udp_port: int
    username: str = "fake"
    key: str | None = None  # as the wire uses it (protocol.derive_network_key)
    # Without the key, ask for one anyway and answer any proof with a bare ok: a server
    # pretending to belong to a keyed network.
    pretend_key: bool = False
    # Requests it received after the key proof (or without one): what a client gave it.
    requests_after_auth: int = 0
    lie: set[int] = field(default_factory=set)  # chunk indices answered with wrong bytes
    lie_all: bool = False
    hangup: set[int] = field(default_factory=set)  # close mid-chunk
    # Asked for this chunk, it dies: hangs up and refuses every connection after.
    quit_at: int | None = None
    extra_catalog: list[list[object]] = field(default_factory=list)  # raw, possibly lying
    # The TCP port to listen on (0: any free one): a peer's, once it closed it.
    tcp_port: int = 0
    chunks_served: int = 0
    bytes_served: int = 0

    def __post_init__(self) -> None:
        self.node_id = secrets.token_hex(16)
        self.seq = 0
        self.stop = threading.Event()
        self.refusing = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.tcp_port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self, announce_every: float | None = 0.5) -> FakePeer:
        """Serve, and announce every `announce_every` seconds (None: never)."""
        loops = [self._accept_loop]
        if announce_every is not None:
            loops.append(lambda: self._announce_loop(announce_every))
        for target in loops:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        self.sock.close()
        self.udp.close()

    def refuse_connections(self) -> None:
        """Close the TCP port but go on announcing: a peer then gets 'connection refused'
        from an offer it still sees (a restarted node's old port, a server that died)."""
        self.refusing.set()
        self.threads[0].join(timeout=5)  # the accept loop closes the socket as it leaves

    def announce(self) -> None:
        self.seq += 1
        data = protocol.encode_announce(
            protocol.Announce(self.node_id, self.username, self.port, 1, self.seq, time.time()),
            key=self.key,
        )
        self.udp.sendto(data, (BROADCAST, self.udp_port))

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
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        if self.refusing.is_set():
            self.sock.close()

    # ------------------------------------------------------------ serving

    def _read_frame(self, conn: socket.socket) -> bytes:
        header = self._read_exact(conn, 4)
        return self._read_exact(conn, protocol.frame_length(header))

    @staticmethod
    def _read_exact(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = conn.recv(n - len(buf))
            if not part:
                raise ConnectionError("closed")
            buf += part
        return buf

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(60)  # a downloader on a loaded machine may idle a while between asks
        nonce = secrets.token_hex(16)
        try:
            asks = self.key is not None or self.pretend_key
            conn.sendall(protocol.encode_welcome(protocol.Welcome(nonce, asks)))
            while not self.stop.is_set():
                req = protocol.decode_request(self._read_frame(conn))
                if isinstance(req, protocol.AuthRequest):
                    conn.sendall(self._auth_reply(req, nonce))
                    continue
                self.requests_after_auth += 1
                if not self._answer(conn, req):
                    return
        except (OSError, protocol.ProtocolError):
            pass
        finally:
            conn.close()

    def _auth_reply(self, req: protocol.AuthRequest, nonce: str) -> bytes:
        """An honest peer proves the key in turn; a pretender answers a bare ok."""
        if self.key is None or req.nonce is None:
            return protocol.encode_ok()
        return protocol.encode_ok(mac=protocol.server_auth_mac(self.key, nonce, req.nonce))

    def _file(self, key: FileKey) -> FakeFile | None:
        return next((f for f in self.files if f.key == key), None)

    def _answer(self, conn: socket.socket, req: protocol.Request) -> bool:
        if self.refusing.is_set():
            return False
        if isinstance(req, protocol.CatalogRequest):
            entries = [
                protocol.CatalogEntry(f.name, f.key, len(f.data), f.bits()) for f in self.files
            ]
            payload = protocol.encode_catalog(entries, 1)
            if self.extra_catalog:
                import json
                import zlib

                body = json.loads(zlib.decompress(payload))
                body["files"].extend(self.extra_catalog)
                payload = zlib.compress(json.dumps(body).encode())
            conn.sendall(protocol.encode_ok(len=len(payload)) + payload)
        elif isinstance(req, protocol.ManifestRequest):
            found = {f.key: f.hashes() for f in self.files if f.key in req.files}
            payload = protocol.encode_manifests(found)
            conn.sendall(protocol.encode_ok(len=len(payload)) + payload)
        elif isinstance(req, protocol.HaveRequest):
            f = self._file(req.file)
            if f is None:
                conn.sendall(protocol.encode_error("not here"))
            else:
                conn.sendall(protocol.encode_have(f.bits(), f.count))
        elif isinstance(req, protocol.ChunkRequest):
            return self._send_chunk(conn, req)
        return True

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

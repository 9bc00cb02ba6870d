"""A simulated office LAN: N p2pshare peers in one process, speaking the node's own wire format.

Every simulated peer has a node id, a listening TCP socket on 127.0.0.1 (its own
port) and a catalog of F files: one file every peer has and F - 1 of its own,
each one chunk. One selector thread (CatalogServer, which
tests/reliability/test_many_peers.py uses for its own peers too) serves every peer's
welcome, catalog and manifests from replies encoded once; one thread sends every
peer's announcement over UDP to the loopback broadcast (or 127.0.0.1) on the node's
UDP port, each round's datagrams encoded as it begins: a boot storm (every peer
announces within `storm` seconds, and again a moment later, as a real node answers
the newcomers it hears), then every `interval` seconds, each peer at its own phase.
What was asked of each peer is counted, so a caller sees how often each catalog was
fetched. The process stands for many other machines, so it does as little as it can
on this one (bench/biglan.py reports its CPU-seconds beside the node's).

Used in-process (`SimLan(...).start()`) by tests/reliability/test_lan_storm.py,
and as a child process by bench/biglan.py:

    python tests/integration/simlan.py --udp-port P [--peers 1000] [--files 20]

prints `ready` once every socket is listening, storms on a line `go` from stdin
(answering `storm T`, the wall-clock time it began), prints one JSON line of
counters on a line `stats`, and exits on `stop` or end of input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import secrets
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fakepeer import take_frames

from p2pshare.services import protocol
from p2pshare.services.protocol import FileKey

LOOPBACK = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"
CHUNK = protocol.MIN_CHUNK
STORM_SECONDS = 2.0
INTERVAL_SECONDS = 60.0  # the node's default P2P_ANNOUNCE_INTERVAL
# A real node announces at start and again when it hears a newcomer (issue 22's
# storm: every machine hears hundreds); each simulated peer repeats its first
# announcement this long after it, same catalog version, next sequence number.
REPEAT_AFTER = 1.0
# Pauses between announcement bursts, so the storm is spread rather than one burst.
SEND_SLICE = 0.01


def content(label: str) -> bytes:
    """A small file's bytes, the same for the same label (100 to 3,000 bytes)."""
    seed = hashlib.sha256(label.encode()).digest()
    size = 100 + int.from_bytes(seed[:2], "big") % 2900
    return (seed * (size // 32 + 1))[:size]


def one_chunk_key(data: bytes) -> tuple[FileKey, list[str]]:
    """The key and manifest of a file of one chunk: its only entry is its SHA-256."""
    sha = hashlib.sha256(data).hexdigest()
    return FileKey(sha, CHUNK, protocol.manifest_root([sha])), [sha]


@dataclass
class SimPeer:
    index: int
    node_id: str
    username: str
    entries: list[protocol.CatalogEntry]
    port: int = 0
    seq: int = 0


@dataclass
class Stats:
    """What the simulated peers were asked, and what they sent."""

    catalogs: Counter[int] = field(default_factory=Counter)  # peer index -> fetches
    manifest_requests: int = 0
    manifest_files: int = 0
    other: int = 0
    announcements: int = 0
    send_errors: int = 0
    storm_began: float = 0.0
    storm_ended: float = 0.0

    def as_dict(self, peers: int) -> dict[str, Any]:
        fetched = list(self.catalogs.values())
        return {
            "peers": peers,
            "catalog_fetches": sum(fetched),
            "peers_fetched": len(fetched),
            "max_fetches_per_peer": max(fetched, default=0),
            "peers_fetched_twice": sum(1 for n in fetched if n > 1),
            "manifest_requests": self.manifest_requests,
            "manifest_files": self.manifest_files,
            "other_requests": self.other,
            "announcements": self.announcements,
            "send_errors": self.send_errors,
            "storm_began": self.storm_began,
            "storm_ended": self.storm_ended,
        }


class Reply(NamedTuple):
    """A request's answer, encoded once: what it was (for Stats) and the bytes sent."""

    kind: str  # "catalog" or "manifest"
    files: int  # manifests asked for
    data: bytes


class CatalogServer:
    """The TCP side of many simulated peers: a listening socket each on 127.0.0.1, all
    served by one selector thread as a node's server would (welcome, catalog, manifests).

    It is test infrastructure standing for many other machines, so it does as little as
    it can on this one: every welcome and catalog reply, and the manifest replies a
    listener asks for (a peer's files, and those only it has), are encoded once up front
    and found by the request's bytes; other requests are decoded and answered as they
    come. Replies go out in the same pass that reads the request.
    """

    def __init__(
        self,
        catalogs: Sequence[Sequence[protocol.CatalogEntry]],
        manifests: dict[FileKey, list[str]],
        stats: Stats | None = None,
    ) -> None:
        self.catalogs, self.manifests = catalogs, manifests
        self.stats = stats if stats is not None else Stats()
        self.selector = selectors.DefaultSelector()
        self.ports: list[int] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        # No network key here, so the welcome's nonce is never used: one per peer will do.
        self.welcomes = [
            protocol.encode_welcome(protocol.Welcome(secrets.token_hex(16), False))
            for _ in catalogs
        ]
        shared = Counter(e.file for entries in catalogs for e in entries)
        self.catalog_bytes = 0  # every peer's catalog, encoded
        self.replies = [self._prepare(entries, shared) for entries in catalogs]

    def _prepare(
        self, entries: Sequence[protocol.CatalogEntry], shared: Counter[FileKey]
    ) -> dict[bytes, Reply]:
        """This peer's replies by request body: its catalog, and the manifests of all its
        files and of those no other peer has (what a listener asks once it knows the rest)."""
        catalog = protocol.encode_catalog(list(entries), 1)
        self.catalog_bytes += len(catalog)
        out = {CATALOG_REQUEST: Reply("catalog", 0, ok(catalog))}
        keys = [e.file for e in entries]
        for wanted in (keys, [k for k in keys if shared[k] == 1]):
            if 0 < len(wanted) <= protocol.MAX_MANIFEST_FILES:
                request = protocol.encode_request(protocol.ManifestRequest(tuple(wanted)))
                out[request[4:]] = Reply("manifest", len(wanted), self._manifests(wanted))
        return out

    def _manifests(self, keys: Iterable[FileKey]) -> bytes:
        return ok(
            protocol.encode_manifests({k: self.manifests[k] for k in keys if k in self.manifests})
        )

    def listen(self) -> list[int]:
        """Open every peer's listening socket (raising the open-file limit as far as allowed)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = len(self.catalogs) + 1024
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        for index in range(len(self.catalogs)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sock.listen(64)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, (None, index))
            self.ports.append(sock.getsockname()[1])
        return self.ports

    def start(self) -> None:
        self.thread = threading.Thread(target=self._serve, name="catalogs", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.1):
                conn, index = key.data
                if conn is None:
                    self._accept(key.fileobj, index)  # type: ignore[arg-type]
                else:
                    self._io(conn, mask)

    def _accept(self, listener: socket.socket, index: int) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = Conn(sock, index)
        self.selector.register(sock, selectors.EVENT_READ, (conn, index))
        self._send(conn, self.welcomes[index])

    def _io(self, conn: Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                data = conn.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                conn.inbox += data
                self._answer(conn)
            elif conn.outbox:
                self._send(conn, b"")
        except (OSError, protocol.ProtocolError):
            self.selector.unregister(conn.sock)
            conn.sock.close()

    def _send(self, conn: Conn, data: bytes) -> None:
        """Send now what the socket takes; wait for it to be writable only for the rest."""
        conn.outbox += data
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        del conn.outbox[:sent]
        writing = bool(conn.outbox)
        if writing != conn.writing:
            conn.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.selector.modify(conn.sock, events, (conn, conn.index))

    def _answer(self, conn: Conn) -> None:
        out = bytearray()
        for body in take_frames(conn.inbox):
            reply = self.replies[conn.index].get(body) or self._decode(body, conn.index)
            if reply.kind == "catalog":
                self.stats.catalogs[conn.index] += 1
            elif reply.kind == "manifest":
                self.stats.manifest_requests += 1
                self.stats.manifest_files += reply.files
            else:
                self.stats.other += 1
            out += reply.data
        if out:
            self._send(conn, bytes(out))

    def _decode(self, body: bytes, index: int) -> Reply:
        """A request nothing was prepared for. Raises ProtocolError."""
        req = protocol.decode_request(body)
        if isinstance(req, protocol.CatalogRequest):
            return self.replies[index][CATALOG_REQUEST]
        if isinstance(req, protocol.ManifestRequest):
            return Reply("manifest", len(req.files), self._manifests(req.files))
        return Reply("other", 0, protocol.encode_error("simulated peer"))


@dataclass
class Conn:
    """One accepted connection: bytes read and not yet answered, bytes not yet sent."""

    sock: socket.socket
    index: int  # the peer's
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    writing: bool = False  # registered for EVENT_WRITE


def ok(payload: bytes) -> bytes:
    """A reply header with its payload, as a node's server sends it."""
    return protocol.encode_ok(len=len(payload)) + payload


CATALOG_REQUEST = protocol.encode_request(protocol.CatalogRequest())[4:]


class SimLan:
    """N simulated peers with F files each (F >= 1), serving and announcing on loopback."""

    def __init__(
        self,
        peers: int,
        files: int,
        udp_port: int,
        *,
        target: str = LOOPBACK_BROADCAST,
        storm: float = STORM_SECONDS,
        interval: float = INTERVAL_SECONDS,
        repeat_after: float | None = REPEAT_AFTER,
        prefix: str = "sim",
    ) -> None:
        if target not in (LOOPBACK, LOOPBACK_BROADCAST):
            raise ValueError("simulated peers announce on loopback only")
        self.udp_port, self.target = udp_port, target
        self.storm, self.interval, self.repeat_after = storm, interval, repeat_after
        self.stats = Stats()
        manifests: dict[FileKey, list[str]] = {}
        common_key, common_manifest = one_chunk_key(content(f"{prefix}-common"))
        manifests[common_key] = common_manifest
        common = protocol.CatalogEntry(
            "common.bin", common_key, len(content(f"{prefix}-common")), None
        )
        self.peers: list[SimPeer] = []
        for i in range(peers):
            entries = [common]
            for j in range(files - 1):
                data = content(f"{prefix}-{i}-{j}")
                key, manifest = one_chunk_key(data)
                manifests[key] = manifest
                entries.append(
                    protocol.CatalogEntry(f"{prefix}{i:05d}/f{j:02d}.txt", key, len(data), None)
                )
            self.peers.append(SimPeer(i, secrets.token_hex(16), f"{prefix}-{i:05d}", entries))
        self.server = CatalogServer([p.entries for p in self.peers], manifests, self.stats)
        self.stop = threading.Event()
        self.go = threading.Event()
        self.threads: list[threading.Thread] = []

    @property
    def offers(self) -> int:
        return sum(len(p.entries) for p in self.peers)

    @property
    def catalog_bytes(self) -> int:
        return self.server.catalog_bytes

    def listen(self) -> None:
        """Open every peer's listening socket."""
        for peer, port in zip(self.peers, self.server.listen(), strict=True):
            peer.port = port

    def start(self) -> SimLan:
        """Listen, serve, and begin the storm at once."""
        self.listen()
        self.go.set()
        return self.run_threads()

    def run_threads(self) -> SimLan:
        self.server.start()
        thread = threading.Thread(target=self._announce, name="announce", daemon=True)
        thread.start()
        self.threads.append(thread)
        return self

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        for thread in self.threads:
            thread.join(5)
        self.server.close()

    # ------------------------------------------------------------ announcing

    def _schedule(self) -> list[tuple[float, int]]:
        """(offset from the storm's start, peer index) of the first round: spread evenly."""
        n = len(self.peers)
        slots = [(self.storm * i / max(n, 1), i) for i in range(n)]
        if self.repeat_after is not None:
            slots += [(t + self.repeat_after, i) for t, i in slots]
        return sorted(slots)

    def _announce(self) -> None:
        self.go.wait()
        if self.stop.is_set():
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((LOOPBACK, 0))
            began = time.time()
            self.stats.storm_began = began
            self._send_due(sock, began, self._encode(self._schedule()))
            self.stats.storm_ended = time.time()
            # Steady: each peer again every interval, at the phase it had in the storm.
            first = {i: self.storm * i / max(len(self.peers), 1) for i in range(len(self.peers))}
            rounds = 1
            while not self.stop.is_set():
                slots = sorted((rounds * self.interval + t, i) for i, t in first.items())
                self.stop.wait(max(0.0, began + slots[0][0] - time.time()))
                self._send_due(sock, began, self._encode(slots))
                rounds += 1

    def _encode(self, slots: list[tuple[float, int]]) -> list[tuple[float, bytes]]:
        """A round's datagrams, encoded as it begins (each dated then: a round is a few
        seconds, far inside the age a listener accepts) rather than one by one as sent."""
        now, out = time.time(), []
        for at, i in slots:
            peer = self.peers[i]
            peer.seq += 1
            ann = protocol.Announce(peer.node_id, peer.username, peer.port, 1, peer.seq, now)
            out.append((at, protocol.encode_announce(ann, key=None)))
        return out

    def _send_due(
        self, sock: socket.socket, began: float, slots: list[tuple[float, bytes]]
    ) -> None:
        k, target = 0, (self.target, self.udp_port)
        while k < len(slots) and not self.stop.is_set():
            now = time.time() - began
            while k < len(slots) and slots[k][0] <= now:
                try:
                    sock.sendto(slots[k][1], target)
                    self.stats.announcements += 1
                except OSError:
                    self.stats.send_errors += 1
                k += 1
            if k < len(slots):
                self.stop.wait(min(SEND_SLICE, max(0.0, slots[k][0] - (time.time() - began))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--udp-port", type=int, required=True)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument(
        "--target", default=LOOPBACK_BROADCAST, choices=[LOOPBACK_BROADCAST, LOOPBACK]
    )
    parser.add_argument("--storm", type=float, default=STORM_SECONDS)
    parser.add_argument("--interval", type=float, default=INTERVAL_SECONDS)
    args = parser.parse_args()
    lan = SimLan(
        args.peers,
        args.files,
        args.udp_port,
        target=args.target,
        storm=args.storm,
        interval=args.interval,
    )
    lan.listen()
    lan.run_threads()
    print("ready", len(lan.peers), lan.offers, lan.catalog_bytes, flush=True)
    try:
        for line in sys.stdin:
            word = line.strip()
            if word == "go":
                lan.go.set()
                while not lan.stats.storm_began:
                    time.sleep(0.001)
                print("storm", lan.stats.storm_began, flush=True)
            elif word == "stats":
                print(json.dumps(lan.stats.as_dict(len(lan.peers))), flush=True)
            elif word == "stop":
                break
    finally:
        lan.close()


if __name__ == "__main__":
    main()

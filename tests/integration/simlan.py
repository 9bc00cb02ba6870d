"""A simulated office LAN: N p2pshare peers in one process, speaking the node's own wire format.

Every simulated peer has a node id, a listening TCP socket on 127.0.0.1 (its own
port) and a catalog of F files: one file every peer has and F - 1 of its own,
each one chunk. One selector thread serves every peer's welcome, catalog and
manifests; one thread sends every peer's announcement over UDP to the loopback
broadcast (or 127.0.0.1) on the node's UDP port: a boot storm (every peer
announces within `storm` seconds, and again a moment later, as a real node
answers the newcomers it hears), then every `interval` seconds, each peer at its
own phase. What was asked of each peer is counted, so a caller sees how often
each catalog was fetched.

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
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
    catalog: bytes  # encoded, version 1
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
        self.manifests: dict[FileKey, list[str]] = {}
        common_key, common_manifest = one_chunk_key(content(f"{prefix}-common"))
        self.manifests[common_key] = common_manifest
        common = protocol.CatalogEntry(
            "common.bin", common_key, len(content(f"{prefix}-common")), None
        )
        self.peers: list[SimPeer] = []
        for i in range(peers):
            entries = [common]
            for j in range(files - 1):
                data = content(f"{prefix}-{i}-{j}")
                key, manifest = one_chunk_key(data)
                self.manifests[key] = manifest
                entries.append(
                    protocol.CatalogEntry(f"{prefix}{i:05d}/f{j:02d}.txt", key, len(data), None)
                )
            self.peers.append(
                SimPeer(
                    i,
                    secrets.token_hex(16),
                    f"{prefix}-{i:05d}",
                    entries,
                    protocol.encode_catalog(entries, 1),
                )
            )
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.go = threading.Event()
        self.threads: list[threading.Thread] = []

    @property
    def offers(self) -> int:
        return sum(len(p.entries) for p in self.peers)

    @property
    def catalog_bytes(self) -> int:
        return sum(len(p.catalog) for p in self.peers)

    def listen(self) -> None:
        """Open every peer's listening socket (raising the open-file limit as far as allowed)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = len(self.peers) + 1024
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        for peer in self.peers:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sock.listen(64)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, ("listen", peer.index))
            peer.port = sock.getsockname()[1]

    def start(self) -> SimLan:
        """Listen, serve, and begin the storm at once."""
        self.listen()
        self.go.set()
        return self.run_threads()

    def run_threads(self) -> SimLan:
        for target in (self._serve, self._announce):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        for thread in self.threads:
            thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()

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
            self._send_due(sock, began, self._schedule())
            self.stats.storm_ended = time.time()
            # Steady: each peer again every interval, at the phase it had in the storm.
            first = {i: self.storm * i / max(len(self.peers), 1) for i in range(len(self.peers))}
            rounds = 1
            while not self.stop.is_set():
                slots = sorted((rounds * self.interval + t, i) for i, t in first.items())
                self._send_due(sock, began, slots)
                rounds += 1

    def _send_due(self, sock: socket.socket, began: float, slots: list[tuple[float, int]]) -> None:
        k = 0
        while k < len(slots) and not self.stop.is_set():
            now = time.time() - began
            while k < len(slots) and slots[k][0] <= now:
                self._send(sock, self.peers[slots[k][1]])
                k += 1
            if k < len(slots):
                self.stop.wait(min(SEND_SLICE, max(0.0, slots[k][0] - (time.time() - began))))

    def _send(self, sock: socket.socket, peer: SimPeer) -> None:
        peer.seq += 1
        data = protocol.encode_announce(
            protocol.Announce(peer.node_id, peer.username, peer.port, 1, peer.seq, time.time()),
            key=None,
        )
        try:
            sock.sendto(data, (self.target, self.udp_port))
            self.stats.announcements += 1
        except OSError:
            self.stats.send_errors += 1

    # ------------------------------------------------------------ serving

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.1):
                kind, state = key.data
                if kind == "listen":
                    self._accept(key.fileobj, state)  # type: ignore[arg-type]
                else:
                    self._io(key.fileobj, state, mask)  # type: ignore[arg-type]

    def _accept(self, listener: socket.socket, index: int) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        welcome = protocol.encode_welcome(protocol.Welcome(secrets.token_hex(16), False))
        state = {"index": index, "in": bytearray(), "out": bytearray(welcome)}
        self.selector.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", state))

    def _io(self, conn: socket.socket, state: dict[str, Any], mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                state["in"] += data
                self._answer(state)
            if state["out"]:
                sent = conn.send(state["out"])
                del state["out"][:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, protocol.ProtocolError):
            self.selector.unregister(conn)
            conn.close()
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if state["out"] else 0)
        self.selector.modify(conn, events, ("conn", state))

    def _answer(self, state: dict[str, Any]) -> None:
        buf = state["in"]
        while len(buf) >= 4:
            (length,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + length:
                return
            req = protocol.decode_request(bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
            if isinstance(req, protocol.CatalogRequest):
                self.stats.catalogs[state["index"]] += 1
                payload = self.peers[state["index"]].catalog
            elif isinstance(req, protocol.ManifestRequest):
                self.stats.manifest_requests += 1
                self.stats.manifest_files += len(req.files)
                payload = protocol.encode_manifests(
                    {k: self.manifests[k] for k in req.files if k in self.manifests}
                )
            else:
                self.stats.other += 1
                state["out"] += protocol.encode_error("simulated peer")
                continue
            state["out"] += protocol.encode_ok(len=len(payload)) + payload


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

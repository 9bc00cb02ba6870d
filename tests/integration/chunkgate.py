"""A gate the test holds between the other nodes and one real seeder.

(Shared by the integration and reliability tests, like fakepeer.py.)

It lets a test stop a transfer at a point it chooses, by count rather than by
time: the seeder sends at most `budget` chunks of each file until the test calls
`open()`, however fast or slow the machine is.

- The seeder runs on a UDP port of its own, so no other node hears it directly.
  The gate receives its announcements there (bound beside the seeder's own
  listener with SO_REUSEPORT, so it gets a copy of each loopback broadcast),
  changes only the TCP port, to the gate's own on 127.0.0.1, and sends them on to
  127.255.255.255 on the test's port. Catalog version, sequence number and node id
  stay the seeder's own, so the others follow its real catalog changes.
- Every TCP connection to the gate is relayed to the seeder's chunk server (the
  port its database gives at that moment), byte for byte. The requests are read
  frame by frame: catalog, manifest and have requests pass at once; chunk
  requests pass until `budget` of them have passed for that file, and then that
  connection's requests wait, in order, until `open()`.

Loopback only: TCP on 127.0.0.1, UDP to 127.255.255.255.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import Counter
from typing import Protocol

from fakepeer import read_frame
from taprelay import relay_announcements, relay_sockets

from p2pshare.services import protocol

LOOPBACK = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"
CONNECT_TIMEOUT = 5.0


class Seeder(Protocol):
    """What the gate needs of a node (node.Node has it)."""

    udp_port: int

    def tcp_port(self) -> int | None: ...


# The key the gate counts every file's chunk requests under when its budget is for all
# files together (per_file=False: a folder of many one-chunk files).
ALL_FILES = "*"


class ChunkGate:
    def __init__(
        self, seeder: Seeder, to_udp_port: int, *, budget: int, per_file: bool = True
    ) -> None:
        assert seeder.udp_port != to_udp_port, "the seeder must announce on a port of its own"
        self.seeder = seeder
        self.to_udp_port = to_udp_port
        self.budget = budget
        self.per_file = per_file
        self.cond = threading.Condition()
        self.passed: Counter[str] = Counter()  # chunk requests let through, by file SHA-256
        self.waiting: Counter[str] = Counter()  # connections holding a chunk request, by file
        self.relayed_announcements = 0
        self.chunk_connections = 0  # connections that asked for at least one chunk
        self.opened = False
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []

        self.listener, self.udp_in, self.udp_out = relay_sockets(seeder.udp_port)
        self.port = int(self.listener.getsockname()[1])

        self.threads = [
            threading.Thread(target=self._relay_announcements, daemon=True),
            threading.Thread(target=self._accept, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def __repr__(self) -> str:
        return (
            f"ChunkGate(port {self.port}, budget {self.budget}, open {self.opened}, "
            f"passed {dict(self.passed)}, waiting {dict(self.waiting)})"
        )

    # ------------------------------------------------------------ the test's handles

    def open(self) -> None:
        """Let every held and later chunk request through."""
        with self.cond:
            self.opened = True
            self.cond.notify_all()

    def allow(self, more: int) -> None:
        """Let `more` further chunk requests of each file (or of all, per_file=False) through."""
        with self.cond:
            self.budget += more
            self.cond.notify_all()

    def holding(self, sha256: str = ALL_FILES) -> bool:
        """A chunk request for this file (any file, per_file=False) is waiting at the gate
        (the leecher wants more)."""
        with self.cond:
            return self.waiting[sha256] > 0

    def passed_total(self) -> int:
        """Chunk requests let through so far, of all files."""
        with self.cond:
            return sum(self.passed.values())

    def close(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        # shutdown() first: it wakes our threads blocked on a socket and tells the
        # seeder and the leecher the connection is over (close() alone does neither while
        # another thread is still in recv or send), so no node waits on us at its exit.
        _hang_up(*self.conns)
        for sock in (self.listener, self.udp_in, self.udp_out, *self.conns):
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self.threads:
            thread.join(5)

    # ------------------------------------------------------------ announcements

    def _relay_announcements(self) -> None:
        def count() -> None:
            self.relayed_announcements += 1

        relay_announcements(
            self.udp_in, self.udp_out, self.port, self.to_udp_port, None, self.stopping, count
        )

    # ------------------------------------------------------------ TCP

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            port = self.seeder.tcp_port()
            try:
                if not port:
                    raise ConnectionRefusedError("the seeder's server has no port")
                upstream = socket.create_connection((LOOPBACK, port), timeout=CONNECT_TIMEOUT)
            except OSError:
                client.close()  # as if the seeder refused: the leecher retries later
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self.conns += [client, upstream]
            for target in (self._requests, self._replies):
                thread = threading.Thread(target=target, args=(client, upstream), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _replies(self, client: socket.socket, upstream: socket.socket) -> None:
        """Seeder to leecher, as it comes."""
        try:
            while data := upstream.recv(256 * 1024):
                client.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(client, upstream)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Leecher to seeder, one request frame at a time; chunk requests may wait."""
        asked = False
        try:
            while True:
                body = read_frame(client)
                try:
                    req = protocol.decode_request(body)
                except protocol.ProtocolError:
                    req = None  # the seeder answers it as it sees fit
                if isinstance(req, protocol.ChunkRequest) and not asked:
                    asked = True
                    with self.cond:
                        self.chunk_connections += 1
                if isinstance(req, protocol.ChunkRequest) and not self._admit(
                    req.file.sha256 if self.per_file else ALL_FILES, client
                ):
                    return
                upstream.sendall(protocol.FRAME_HEADER.pack(len(body)) + body)
        except (OSError, protocol.ProtocolError):
            pass
        finally:
            _hang_up(client, upstream)

    def _admit(self, sha256: str, client: socket.socket) -> bool:
        """Wait until a chunk request of this file may pass. False when the gate closes or
        the leecher hangs up meanwhile (a held request it gave up on costs no budget)."""

        def may_pass() -> bool:
            return self.opened or self.stopping.is_set() or self.passed[sha256] < self.budget

        with self.cond:
            if not may_pass():
                self.waiting[sha256] += 1
                try:
                    while not may_pass():
                        self.cond.wait(0.2)
                        if not may_pass() and _hung_up(client):
                            return False
                finally:
                    self.waiting[sha256] -= 1
            if self.stopping.is_set():
                return False
            self.passed[sha256] += 1
            return True


def _hung_up(sock: socket.socket) -> bool:
    """The other side closed or reset the connection (data it sent may still be unread)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _hang_up(*socks: socket.socket) -> None:
    """End a relayed connection both ways (the other pump sees EOF or an error)."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

"""A relay the test puts between the other nodes and one real seeder, to see what crosses
the wire (a wiretap) or to play the man in the middle.

(Shared by the integration and reliability tests, like chunkgate.py.)

- The seeder announces on a UDP port of its own. The relay receives its announcements
  there (bound beside the seeder's listener with SO_REUSEPORT, so it gets a copy of
  each loopback broadcast), points the TCP port at itself, signs them again with the
  network key when there is one (the test is the network, it holds the key), and sends
  them on to 127.255.255.255 on the test's port. Fingerprint, node id, sequence
  numbers stay the seeder's.
- Wiretap: every TCP connection is relayed to the seeder byte for byte, and every byte
  in either direction is kept in `seen`, as a capture on the wire would hold them.
- Man in the middle (`impostor` = an ssl server context with a certificate of its
  own): it greets the client as the seeder would, in clear, then answers the TLS
  handshake with that certificate, under the seeder's announced fingerprint.

Loopback only: TCP on 127.0.0.1, UDP to 127.255.255.255.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable

from p2pshare.services import protocol

LOOPBACK = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"


def relay_sockets(seeder_udp_port: int) -> tuple[socket.socket, socket.socket, socket.socket]:
    """A relay's sockets: TCP listening on 127.0.0.1, UDP hearing the seeder's announcements
    beside its own listener (SO_REUSEPORT: a copy of each loopback broadcast), and UDP to
    send them on to the loopback broadcast."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
    listener.settimeout(0.2)
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    inbox.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    inbox.bind(("0.0.0.0", seeder_udp_port))
    inbox.settimeout(0.2)
    outbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outbox.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    outbox.bind((LOOPBACK, 0))
    return listener, inbox, outbox


def relay_announcements(
    inbox: socket.socket,
    outbox: socket.socket,
    tcp_port: int,
    to_udp_port: int,
    key: str | None,
    stopping: threading.Event,
    relayed: Callable[[], None] = lambda: None,
) -> None:
    """Until `stopping`: each announcement heard on `inbox`, pointed at `tcp_port` and signed
    again with `key` (the test holds it), sent on to the loopback broadcast on
    `to_udp_port`. Node id, fingerprint and sequence numbers stay the seeder's."""
    while not stopping.is_set():
        try:
            data, _ = inbox.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            ann = protocol.decode_announce(data, key=key, now=time.time(), max_age=3600)
        except protocol.ProtocolError:
            continue
        out = protocol.encode_announce(dataclasses.replace(ann, tcp_port=tcp_port), key=key)
        with contextlib.suppress(OSError):
            outbox.sendto(out, (LOOPBACK_BROADCAST, to_udp_port))
            relayed()


class TapRelay:
    def __init__(
        self,
        seeder_udp_port: int,
        seeder_tcp_port: int | None,
        to_udp_port: int,
        *,
        key: str | None = None,
        impostor: ssl.SSLContext | None = None,
    ) -> None:
        assert seeder_udp_port != to_udp_port, "the seeder must announce on a port of its own"
        self.seeder_tcp_port = seeder_tcp_port
        self.to_udp_port = to_udp_port
        self.key = key
        self.impostor = impostor
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.connections = 0
        self.handshakes_refused = 0  # impostor: clients that hung up on our certificate
        self.stopping = threading.Event()
        self.socks: list[socket.socket] = []

        self.listener, self.udp_in, self.udp_out = relay_sockets(seeder_udp_port)
        self.port = int(self.listener.getsockname()[1])
        self.threads = [
            threading.Thread(target=self._relay_announcements, daemon=True),
            threading.Thread(target=self._accept, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def __repr__(self) -> str:
        return f"TapRelay(port {self.port}, {self.connections} connections, {len(self.seen)} B)"

    def captured(self) -> bytes:
        with self.lock:
            return bytes(self.seen)

    def close(self) -> None:
        self.stopping.set()
        for sock in (self.listener, self.udp_in, self.udp_out, *self.socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self.threads:
            thread.join(5)

    # ------------------------------------------------------------ announcements

    def _relay_announcements(self) -> None:
        relay_announcements(
            self.udp_in, self.udp_out, self.port, self.to_udp_port, self.key, self.stopping
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
            self.connections += 1
            self.socks.append(client)
            target = self._impersonate if self.impostor else self._tap
            thread = threading.Thread(target=target, args=(client,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _tap(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((LOOPBACK, self.seeder_tcp_port or 0), timeout=5)
        except OSError:
            client.close()
            return
        self.socks.append(upstream)
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        self.threads.append(back)
        self._pipe(client, upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self.stopping.is_set():
                data = src.recv(256 * 1024)
                if not data:
                    break
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _impersonate(self, client: socket.socket) -> None:
        assert self.impostor is not None
        client.settimeout(10)
        with contextlib.suppress(OSError):
            welcome = protocol.Welcome(secrets.token_hex(16), self.key is not None, tls=True)
            client.sendall(protocol.encode_welcome(welcome))
            with self.impostor.wrap_socket(client, server_side=True) as tls:
                # The client has checked our certificate: it either hangs up or asks.
                if not tls.recv(4096):
                    self.handshakes_refused += 1
                    return
                with self.lock:
                    self.seen += b"(the client spoke to the impostor)"
            return
        self.handshakes_refused += 1

"""Listener role: hears announcements, records peers, fetches their catalogs, expires the silent.

This thread reads and validates datagrams; catalogs are fetched by a few threads
(services/listener/catalog_fetch.py), and every write goes through one writer thread in short
batched transactions (services/listener/writer.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time

from p2pshare.services import protocol
from p2pshare.services.listener.writer import ListenerWriter
from p2pshare.services.runtime import RoleContext, StartupError, run_role, start_heartbeat

log = logging.getLogger("p2p.listener")

RECV_TIMEOUT = 0.5
# Peers silent for P2P_PEER_TTL are expired once every EXPIRE_SHARE of the TTL (at least
# every EXPIRE_EVERY): a peer goes at most 5 % of its TTL late, and an idle listener does
# not open a write transaction every second to find nobody to expire.
EXPIRE_EVERY = 1.0
EXPIRE_SHARE = 0.05
EXPIRE_LATEST = 5.0
MAX_BATCH = 256
# Node ids whose last address the proof warmer remembers: more than the peers of a LAN.
PROOFS_REMEMBERED = 4096
# Dropped datagrams are logged one line each up to this many per second; a
# flood gets a summary line instead of filling the disk.
DROP_LOG_PER_SECOND = 10


def open_udp(port: int) -> socket.socket:
    """A UDP socket on `port` that other nodes on this host can share.

    Bound to every address: a socket bound to one unicast address does not
    receive datagrams sent to a broadcast address.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    try:
        sock.bind(("", port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on UDP port {port} (P2P_UDP_PORT): {exc.strerror}"
        ) from None
    sock.settimeout(RECV_TIMEOUT)
    return sock


class DropLog:
    """One log line per dropped datagram, up to a rate; then a count.

    Called from the receiving loop (bad bytes) and the writer's thread (replays), so
    under a lock: without it both threads wrote the same second's count, and the log
    claimed twice the drops there were."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.window = 0
        self.logged = 0
        self.suppressed = 0

    def drop(self, ip: str, reason: str) -> None:
        second = int(time.monotonic())
        with self.lock:
            if second != self.window:
                if self.suppressed:
                    log.warning("dropped %d more bad datagrams", self.suppressed)
                self.window, self.logged, self.suppressed = second, 0, 0
            if self.logged < DROP_LOG_PER_SECOND:
                self.logged += 1
                log.warning("dropped datagram from %s: %s", ip, reason)
            else:
                self.suppressed += 1


def lower_priority(increment: int) -> None:
    """Be nicer to the CPU by `increment` (this thread, and the threads it starts later)."""
    if increment <= 0:
        return
    try:
        nice = os.nice(increment)
    except OSError as exc:  # not allowed here (a container's policy): run as we are
        log.info("running at normal priority: %s", exc)
        return
    # On Linux niceness is per thread: those already running (run_role's signal watcher)
    # are lowered one by one. A thread that ended meanwhile is nothing to lower.
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            if int(tid) != threading.get_native_id():
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)


class ProofWarmer:
    """Checks here, in the receiving thread, the signatures the writer may ask about inside
    its transaction (`Announce.proves_identity` remembers the answer): those of a node id
    this process has not heard yet, or heard from another address. Checking a signature
    costs many times what recording an announcement does, and the database is locked
    for every role while the writer's transaction is open."""

    def __init__(self) -> None:
        self.seen: collections.OrderedDict[str, str] = collections.OrderedDict()

    def warm(self, ann: protocol.Announce, ip: str) -> None:
        if ann.signature is None:
            return
        if self.seen.get(ann.node_id) != ip:
            ann.proves_identity()
            self.seen[ann.node_id] = ip
        self.seen.move_to_end(ann.node_id)
        if len(self.seen) > PROOFS_REMEMBERED:
            self.seen.popitem(last=False)


def receive_batch(sock: socket.socket) -> list[tuple[bytes, str]]:
    """Wait up to RECV_TIMEOUT for a datagram, then take what else is queued, up to MAX_BATCH.

    Announcements are written to the database a batch per transaction, so a burst
    (500 peers announcing at once, or a flood) costs a few commits, not one each.
    """
    try:
        data, (ip, _port) = sock.recvfrom(65535)
    except TimeoutError:
        return []
    batch = [(data, ip)]
    # Non-blocking while draining: with a timeout set, Python waits for the next
    # datagram even with MSG_DONTWAIT, and a steady trickle would never end a batch.
    sock.setblocking(False)
    try:
        while len(batch) < MAX_BATCH:
            try:
                data, (ip, _port) = sock.recvfrom(65535)
            except BlockingIOError:
                break
            batch.append((data, ip))
    finally:
        sock.settimeout(RECV_TIMEOUT)
    return batch


def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    sock = open_udp(settings.udp_port)
    ctx.detail = f"udp *:{settings.udp_port}"
    ctx.record_settings(
        {
            "udp_port": settings.udp_port,
            "peer_ttl": settings.peer_ttl,
            "network_key": settings.keyed,
            "encrypt": ctx.tls.encrypt,
            "listener_nice": settings.listener_nice,
        }
    )
    # Before any thread starts: threads take the niceness of the one that made them (see
    # settings.DEFAULT_LISTENER_NICE for why the listener yields).
    lower_priority(settings.listener_nice)
    start_heartbeat(ctx)
    drops = DropLog()
    proofs = ProofWarmer()
    writer = ListenerWriter(ctx, drops.drop)
    writer.start()
    max_age = max(3 * settings.announce_interval, 30.0)
    expire_every = max(EXPIRE_EVERY, EXPIRE_SHARE * settings.peer_ttl)
    next_expiry = 0.0
    log.info("listening for announcements on UDP port %d", settings.udp_port)
    try:
        while not ctx.stop.is_set():
            batch = receive_batch(sock)
            heard = []
            for data, ip in batch:
                try:
                    ann = protocol.decode_announce(
                        data,
                        key=settings.network_key,
                        now=time.time(),
                        max_age=max_age,
                        old_key=settings.network_secret,
                    )
                except protocol.ProtocolError as exc:
                    drops.drop(ip, f"{type(exc).__name__}: {exc}")
                    continue
                proofs.warm(ann, ip)
                heard.append((ann, ip))
            if heard:
                writer.put_heard(heard)
            now = time.time()
            # Expire once the socket is drained, so announcements still queued count (the
            # writer takes jobs in order); but not later than EXPIRE_LATEST after it is
            # due, whatever a flood does.
            drained = len(batch) < MAX_BATCH
            if now >= next_expiry and (drained or now >= next_expiry + EXPIRE_LATEST):
                writer.put_expire(now)
                next_expiry = now + expire_every
    finally:
        sock.close()
        writer.join()


def main() -> None:
    run_role("listener", run)


if __name__ == "__main__":
    main()

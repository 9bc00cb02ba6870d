"""Listener role: hears announcements, records peers, fetches their catalogs, expires the silent."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque

from p2pshare.db import index as dbindex
from p2pshare.db import peers as dbpeers
from p2pshare.services import protocol
from p2pshare.services.peerclient import PeerClient
from p2pshare.services.runtime import RoleContext, StartupError, run_role, start_heartbeat

log = logging.getLogger("p2p.listener")

RECV_TIMEOUT = 0.5
EXPIRE_EVERY = 1.0
EXPIRE_LATEST = 5.0
MAX_BATCH = 256
# Catalog fetches at once, and how long one may take in all (10,000 files take
# well under a second on a LAN).
MAX_FETCHES = 64
FETCH_DEADLINE = 30.0
RETRY_SECONDS = 5.0
# Dropped datagrams are logged one line each up to this many per second; a
# flood gets a summary line instead of filling the disk.
DROP_LOG_PER_SECOND = 10
# A liar may send thousands of bad manifests; a few lines say enough.
MAX_REFUSED_LOGGED = 5


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
    """One log line per dropped datagram, up to a rate; then a count."""

    def __init__(self) -> None:
        self.window = 0
        self.logged = 0
        self.suppressed = 0

    def drop(self, ip: str, reason: str) -> None:
        second = int(time.monotonic())
        if second != self.window:
            if self.suppressed:
                log.warning("dropped %d more bad datagrams", self.suppressed)
            self.window, self.logged, self.suppressed = second, 0, 0
        if self.logged < DROP_LOG_PER_SECOND:
            self.logged += 1
            log.warning("dropped datagram from %s: %s", ip, reason)
        else:
            self.suppressed += 1


class CatalogFetcher:
    """Fetches peers' catalogs, each in its own thread, one fetch per peer at a time.

    A thread per fetch (bounded by MAX_FETCHES, the rest queue) so a peer that
    answers slowly holds up only itself; FETCH_DEADLINE frees its thread.
    """

    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.busy: set[int] = set()
        self.again: set[int] = set()
        self.queued: deque[int] = deque()
        self.failed: dict[int, tuple[float, str]] = {}  # peer -> (retry at, error logged)

    def want(self, peer_id: int) -> None:
        with self.lock:
            if peer_id in self.busy:
                self.again.add(peer_id)
                return
            if len(self.busy) >= MAX_FETCHES:
                if peer_id not in self.queued:
                    self.queued.append(peer_id)
                return
            self.busy.add(peer_id)
        threading.Thread(
            target=self._work, args=(peer_id,), name=f"catalog-{peer_id}", daemon=True
        ).start()

    def retry_due(self, now: float) -> None:
        for peer_id, (at, _) in list(self.failed.items()):
            if at <= now:
                self.want(peer_id)

    def _work(self, peer_id: int) -> None:
        try:
            self._fetch(peer_id)
            self.failed.pop(peer_id, None)
        except (OSError, protocol.ProtocolError) as exc:
            self._failed(peer_id, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("catalog fetch from peer %d failed", peer_id)
            self._failed(peer_id, "internal error")
        with self.lock:
            self.busy.discard(peer_id)
            again = peer_id in self.again
            self.again.discard(peer_id)
            following = self.queued.popleft() if self.queued else None
        if again:
            self.want(peer_id)
        if following is not None:
            self.want(following)

    def _failed(self, peer_id: int, error: str) -> None:
        previous = self.failed.get(peer_id)
        if previous is None or previous[1] != error:
            log.warning("cannot fetch the catalog of peer %d: %s", peer_id, error)
        self.failed[peer_id] = (time.time() + RETRY_SECONDS, error)

    def _fetch(self, peer_id: int) -> None:
        db = self.ctx.database
        with db.read() as s:
            endpoint = dbpeers.peer_endpoint(s, peer_id)
        if endpoint is None:
            self.failed.pop(peer_id, None)
            return  # expired or replaced meanwhile
        address, port = endpoint.address, endpoint.tcp_port
        link = self.ctx.tls.link(endpoint.tls, endpoint.fingerprint)  # raises CannotTalk
        started = time.monotonic()
        with PeerClient(address, port, key=self.ctx.settings.network_key, link=link) as client:
            client.deadline = time.monotonic() + FETCH_DEADLINE
            version, entries = client.catalog()
            with db.read() as s:
                known = dbpeers.known_contents(s, (e.file for e in entries))
            need = {
                e.file: e.size for e in entries if e.file not in known or not known[e.file].complete
            }
            manifests = client.manifests(need) if need else protocol.Manifests({}, {})
        for key, why in list(manifests.refused.items())[:MAX_REFUSED_LOGGED]:
            log.warning(
                "refused the manifest of %s (root %s) from %s:%d: %s",
                key.sha256[:12],
                key.root[:12],
                address,
                port,
                why,
            )
        offered = [
            dbpeers.Offered(
                e.name,
                e.file.sha256,
                e.file.chunk_size,
                e.file.root,
                e.size,
                e.have,
                e.chunks if e.have is None else protocol.bitfield_count(e.have),
            )
            for e in entries
        ]
        with db.write() as s:
            kept = dbpeers.apply_catalog(
                s,
                peer_id,
                version,
                offered,
                {tuple(k): v for k, v in manifests.good.items()},
                now=time.time(),
            )
            if kept is not None:
                dbindex.delete_orphan_files(s)
        log.info(
            "catalog v%d of %s:%d: %d files, %d new contents, in %.2f s",
            version,
            address,
            port,
            len(entries),
            len(manifests.good),
            time.monotonic() - started,
        )


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
            "network_key": settings.network_key is not None,
            "encrypt": ctx.tls.encrypt,
        }
    )
    start_heartbeat(ctx)
    fetcher = CatalogFetcher(ctx)
    drops = DropLog()
    max_age = max(3 * settings.announce_interval, 30.0)
    next_expiry = 0.0
    log.info("listening for announcements on UDP port %d", settings.udp_port)
    try:
        while not ctx.stop.is_set():
            batch = receive_batch(sock)
            heard = []
            for data, ip in batch:
                try:
                    ann = protocol.decode_announce(
                        data, key=settings.network_key, now=time.time(), max_age=max_age
                    )
                except protocol.ProtocolError as exc:
                    drops.drop(ip, f"{type(exc).__name__}: {exc}")
                    continue
                heard.append((ann, ip))
            if heard:
                handle(ctx, fetcher, heard, drops)
            now = time.time()
            # Expire once the queue is drained, so announcements still queued count;
            # but not later than EXPIRE_LATEST after it is due, whatever a flood does.
            drained = len(batch) < MAX_BATCH
            if now >= next_expiry and (drained or now >= next_expiry + EXPIRE_LATEST):
                expire(ctx, now)
                fetcher.retry_due(now)
                next_expiry = now + EXPIRE_EVERY
    finally:
        sock.close()


def handle(
    ctx: RoleContext,
    fetcher: CatalogFetcher,
    heard: list[tuple[protocol.Announce, str]],
    drops: DropLog,
) -> None:
    """Record a batch of valid announcements in one transaction, then act on each."""
    outcomes = []
    with ctx.database.write() as s:
        now = time.time()
        for ann, ip in heard:
            record = dbpeers.Heard(
                ann.node_id,
                ann.username,
                ip,
                ann.tcp_port,
                ann.catalog_version,
                ann.seq,
                ann.fingerprint,
                ann.tls,
            )
            outcomes.append((ann, ip, dbpeers.record_announce(s, record, now=now)))
    for ann, ip, outcome in outcomes:
        if outcome.ignored:
            continue
        if outcome.peer_id is None:
            drops.drop(ip, f"{outcome.refused} from node {ann.node_id[:8]}")
            continue
        if outcome.new:
            log.info(
                "new peer %s at %s:%d (node %s)", ann.username, ip, ann.tcp_port, ann.node_id[:8]
            )
        if outcome.needs_catalog:
            fetcher.want(outcome.peer_id)


def expire(ctx: RoleContext, now: float) -> None:
    with ctx.database.write() as s:
        gone = dbpeers.expire_peers(s, now=now, ttl=ctx.settings.peer_ttl)
        if gone:
            dbindex.delete_orphan_files(s)
    for name in gone:
        log.info("peer %s silent for %.0f s: forgotten", name, ctx.settings.peer_ttl)


def main() -> None:
    run_role("listener", run)


if __name__ == "__main__":
    main()

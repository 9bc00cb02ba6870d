"""Announcer role: tells the network this node exists, on which port, at which catalog version.

Sends at start, within about a second of a catalog change (rate-limited so a
busy download does not flood the network), when the listener saw a newcomer
(so it learns of us at once), and every P2P_ANNOUNCE_INTERVAL seconds.
"""

from __future__ import annotations

import errno
import logging
import random
import secrets
import socket
import time

from p2pshare.db import node as dbnode
from p2pshare.services import protocol
from p2pshare.services.net import identity
from p2pshare.services.net.netif import interface_broadcasts
from p2pshare.services.runtime import RoleContext, run_role, start_heartbeat

log = logging.getLogger("p2p.announcer")

# The loop sleeps until another process commits (the server bound its port, the catalog
# moved, the listener asks for an answer) or the interval is due, and reads the node state
# then; at most once every POLL_SECONDS however often others commit. While an announcement
# is owed but not yet sent (a change within MIN_GAP_SECONDS, no port yet) it looks again
# after POLL_SECONDS, or FIRST_POLL_SECONDS before the first announcement: a node should
# be heard the moment it can be reached.
POLL_SECONDS = 0.2
FIRST_POLL_SECONDS = 0.02
# At most one announcement per this many seconds for changes; the interval
# announcement and the start are not held back.
MIN_GAP_SECONDS = 0.5
# Spread answers to a newcomer so many nodes do not answer in the same instant.
ANSWER_JITTER_SECONDS = 0.3


class Announcer:
    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.node_id = secrets.token_hex(protocol.NODE_ID_HEX // 2)
        self.seq = 0
        # Every announcement is signed by the node's certificate key, so a peer can tell
        # this node's next node id (a restart) from someone claiming its address.
        self.signer = identity.signer(ctx.tls.identity)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if self.settings.bind != "0.0.0.0":
            self.sock.bind((self.settings.bind, 0))
        self.failing: dict[str, int] = {}  # target -> errno already logged
        self.last_sent = 0.0
        self.sent_version: int | None = None
        self.sent_port: int | None = None
        self.answered_at = 0.0
        self.recorded_targets: list[str] | None = None
        # The node state is read only when another connection committed since the last
        # read, the interval is due, or an announcement is owed.
        self.watch = ctx.watch_until_stop()
        self.owed = True  # a change seen but not yet announced (MIN_GAP_SECONDS)

    def targets(self) -> list[str]:
        if self.settings.broadcast is not None:
            return list(self.settings.broadcast)
        return interface_broadcasts()

    def record_settings(self, targets: list[str]) -> None:
        """What the announcer runs with, for `p2pctl status`: the targets it really sends to."""
        settings = self.settings
        self.ctx.record_settings(
            {
                "username": settings.username,
                "bind": settings.bind,
                "udp_port": settings.udp_port,
                "broadcast": ",".join(targets),
                "broadcast_from": "interfaces" if settings.broadcast is None else "P2P_BROADCAST",
                "announce_interval": settings.announce_interval,
                "network_key": settings.keyed,
                "encrypt": self.ctx.tls.encrypt,
                "fingerprint": self.ctx.tls.identity.fingerprint,
            }
        )
        self.recorded_targets = targets

    def send(self, catalog_version: int, tcp_port: int, now: float, epoch: str | None) -> None:
        self.seq += 1
        data = protocol.encode_announce(
            protocol.Announce(
                self.node_id,
                self.settings.username,
                tcp_port,
                catalog_version,
                self.seq,
                now,
                self.ctx.tls.identity.fingerprint,
                self.ctx.tls.encrypt,
                epoch,
            ),
            key=self.settings.network_key,
            signer=self.signer,
        )
        targets = self.targets()
        if not targets:
            self._log_once(
                "(none)",
                errno.ENETUNREACH,
                "no up, non-loopback IPv4 interface with a broadcast address; set P2P_BROADCAST",
            )
        for target in targets:
            try:
                self.sock.sendto(data, (target, self.settings.udp_port))
            except OSError as exc:
                self._log_once(target, exc.errno or 0, exc.strerror or str(exc))
                continue
            if self.failing.pop(target, None) is not None:
                log.info("announcing to %s works again", target)
        self.last_sent, self.sent_version, self.sent_port = now, catalog_version, tcp_port
        if targets != self.recorded_targets:  # interfaces came or went since we recorded
            self.record_settings(targets)
        log.info(
            "announced catalog v%d on tcp %d (%d bytes) to %s",
            catalog_version,
            tcp_port,
            len(data),
            ", ".join(targets) or "nobody",
        )

    def _log_once(self, target: str, err: int, message: str) -> None:
        if self.failing.get(target) != err:
            self.failing[target] = err
            log.warning("cannot announce to %s: %s", target, message)

    def step(self, changed: bool) -> None:
        """Announce if something calls for it now; `changed`: another process committed."""
        now = time.time()
        due = now - self.last_sent >= self.settings.announce_interval
        if not (due or self.owed or changed):
            return
        with self.ctx.database.read() as s:
            state = dbnode.node_state_if_any(s)
        if state is None or state.tcp_port is None:
            self.owed = True  # the server has not bound its port yet: look again
            return
        changed = (state.catalog_version, state.tcp_port) != (self.sent_version, self.sent_port)
        asked = state.announce_wanted_at > self.answered_at
        self.owed = changed or asked
        if due or (self.owed and now - self.last_sent >= MIN_GAP_SECONDS):
            if asked and not (due or changed):
                time.sleep(random.uniform(0, ANSWER_JITTER_SECONDS))
            self.answered_at = state.announce_wanted_at
            self.send(state.catalog_version, state.tcp_port, time.time(), state.catalog_epoch)
            self.owed = False

    def until_next_look(self) -> float:
        """Seconds the loop may sleep unless another process commits: until the interval's
        announcement, or a short poll while one is owed."""
        if self.owed or not self.last_sent:
            return POLL_SECONDS if self.last_sent else FIRST_POLL_SECONDS
        return max(
            FIRST_POLL_SECONDS, self.last_sent + self.settings.announce_interval - time.time()
        )


def run(ctx: RoleContext) -> None:
    announcer = Announcer(ctx)
    with ctx.database.write() as s:
        dbnode.set_node_id(s, announcer.node_id, now=time.time())
    ctx.detail = f"node {announcer.node_id[:8]}"
    targets = announcer.targets()
    announcer.record_settings(targets)
    start_heartbeat(ctx)
    log.info(
        "node id %s, announcing to %s", announcer.node_id, ", ".join(targets) or "no interface yet"
    )
    changed = True
    try:
        while not ctx.stop.is_set():
            looked = time.monotonic()
            try:
                announcer.step(changed)
            except Exception:
                log.exception("announce step failed; retrying")
                announcer.owed = True  # look again soon, not at the interval
            # Commits come in bursts (a download's progress, a boot storm's peers): one
            # read of the node state covers every commit of the next POLL_SECONDS.
            rest = looked + (POLL_SECONDS if announcer.last_sent else FIRST_POLL_SECONDS)
            if ctx.stop.wait(max(0.0, rest - time.monotonic())):
                break
            changed = announcer.watch.wait_changed(announcer.until_next_look())
    finally:
        announcer.sock.close()
        announcer.watch.close()


def main() -> None:
    run_role("announcer", run)


if __name__ == "__main__":
    main()

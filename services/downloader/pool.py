"""Connections to peers kept open between batches of small files.

A connection costs a TCP handshake, the welcome and, on a keyed network, a TLS
handshake and a key proof: more than a small file's bytes. Idle connections wait
here for the next batch, a little shorter than the server's own idle limit
(chunkserver.IDLE_TIMEOUT) so the server never closes one under a new request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from p2pshare.services.net.client import PeerClient

IDLE_SECONDS = 20.0
IDLE_PER_PEER = 2

# A pooled connection belongs to one peer and one way of reaching it (address, port,
# its fingerprint, TLS or not): a peer that restarted with another identity gets a new one.
PoolKey = tuple[str, int, str | None, bool]


class PeerPool:
    """Idle connections by peer. Thread-safe; a taken connection belongs to its taker."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._idle: dict[PoolKey, list[tuple[float, PeerClient]]] = {}
        self._lock = threading.Lock()

    def take(self, key: PoolKey, connect: Callable[[], PeerClient]) -> tuple[PeerClient, bool]:
        """An idle connection to the peer, else a new one from `connect()` (which raises
        OSError or ProtocolError). Returns (client, whether it was reused): a reused
        connection the peer has meanwhile closed fails at its first read, and its taker
        may try once more with a new one."""
        now = time.monotonic()
        stale: list[PeerClient] = []
        found: PeerClient | None = None
        with self._lock:
            idle = self._idle.get(key, [])
            while idle and found is None:
                since, client = idle.pop()
                if now - since < self.idle_seconds:
                    found = client
                else:
                    stale.append(client)
        for client in stale:
            client.close()
        if found is not None:
            return found, True
        return connect(), False

    def give(self, key: PoolKey, client: PeerClient) -> None:
        """Keep a connection whose requests were all answered, for the next taker."""
        if client.sock is None:
            return
        extra: list[PeerClient] = []
        with self._lock:
            idle = self._idle.setdefault(key, [])
            idle.append((time.monotonic(), client))
            while len(idle) > IDLE_PER_PEER:
                extra.append(idle.pop(0)[1])
        for old in extra:
            old.close()

    def prune(self) -> None:
        """Close connections idle too long."""
        now = time.monotonic()
        stale: list[PeerClient] = []
        with self._lock:
            for key in list(self._idle):
                keep = [(t, c) for t, c in self._idle[key] if now - t < self.idle_seconds]
                stale.extend(c for t, c in self._idle[key] if now - t >= self.idle_seconds)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for client in stale:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients = [c for idle in self._idle.values() for _, c in idle]
            self._idle.clear()
        for client in clients:
            client.close()

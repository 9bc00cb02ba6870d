"""The chunk server's connection slots: how many connections it holds, in all and per address.

A peer on the LAN may open connections until the server runs out: the cap in all keeps
the server's descriptors and memory bounded, the cap per address keeps one host from
taking every slot, so a host that opens thousands still leaves room for every other.
Pure bookkeeping: the server takes a slot when it accepts and gives it back when the
connection ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Every connection costs a descriptor and a few tens of KiB (buffers, a task); 1,024 stays
# within the usual descriptor limit and far above what a LAN's peers use honestly.
MAX_CONNECTIONS = 1024
# A node holds a handful of connections to a peer (each download's connections, a
# catalog or manifest fetch, the torrent role's LAN copy); 64 leaves room for several
# nodes on one host (one address), while one host alone can take at most this many of
# MAX_CONNECTIONS.
MAX_CONNECTIONS_PER_ADDRESS = 64
# A host refused again and again is logged once per this many seconds, with a count.
REFUSAL_LOG_SECONDS = 60.0


@dataclass
class _Refusals:
    logged_at: float
    since_logged: int = 0


@dataclass
class ConnectionSlots:
    """Connections held, per address. Not thread-safe: the server's event loop owns it."""

    total: int = MAX_CONNECTIONS
    per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    held: Counter[str] = field(default_factory=Counter)
    open: int = 0
    _refusals: dict[str, _Refusals] = field(default_factory=dict)

    def take(self, address: str) -> str | None:
        """A slot for a connection from `address`; None when taken, else why it is refused
        (one sentence, for the peer)."""
        if self.held[address] >= self.per_address:
            return f"too many connections from {address} (at most {self.per_address})"
        if self.open >= self.total:
            return f"server busy ({self.total} connections open)"
        self.held[address] += 1
        self.open += 1
        return None

    def give_back(self, address: str) -> None:
        self.held[address] -= 1
        self.open -= 1
        if self.held[address] <= 0:
            del self.held[address]

    def refusal_to_log(self, address: str, now: float) -> int | None:
        """Count one refusal of `address`; the refusals to log now (this one and those not
        logged since), or None while its last line is under REFUSAL_LOG_SECONDS old."""
        seen = self._refusals.get(address)
        if seen is None or now - seen.logged_at >= REFUSAL_LOG_SECONDS:
            count = 1 if seen is None else seen.since_logged + 1
            self._refusals[address] = _Refusals(now)
            self._forget_quiet(now)
            return count
        seen.since_logged += 1
        return None

    def _forget_quiet(self, now: float) -> None:
        """Drop the records of hosts not logged for a while (what they were refused since
        goes unsaid), so a LAN's worth of addresses does not pile up."""
        quiet = [a for a, r in self._refusals.items() if now - r.logged_at >= REFUSAL_LOG_SECONDS]
        for address in quiet:
            del self._refusals[address]

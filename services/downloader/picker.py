"""Which chunk to ask which peer for next: rarest first, then an endgame.

Pure and single-threaded; the download job calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pshare.services.protocol import bitfield_has

MISSING, INFLIGHT, DONE = 0, 1, 2
# In the endgame a chunk is asked of at most this many peers at once.
MAX_OWNERS = 2


class Picker:
    def __init__(self, count: int, done: Iterable[int] = ()) -> None:
        self.count = count
        self.state = [MISSING] * count
        for i in done:
            self.state[i] = DONE
        self.remaining = self.state.count(MISSING)
        self.owners: dict[int, set[str]] = {}
        self.peer_bits: dict[str, bytes | None] = {}
        self.avail = [0] * count
        self.order: list[int] = list(range(count))
        self._dirty = True
        self._skip = 0  # order[:_skip] are all DONE

    @property
    def finished(self) -> bool:
        return self.remaining == 0

    def set_peer(self, peer: str, bits: bytes | None) -> None:
        """What a peer holds now (None: everything)."""
        self._count_peer(peer, -1)
        self.peer_bits[peer] = bits
        self._count_peer(peer, +1)

    def drop_peer(self, peer: str) -> list[int]:
        """Forget a peer; its chunks in flight go back to missing. Returns them."""
        self._count_peer(peer, -1)
        self.peer_bits.pop(peer, None)
        released = [i for i, owners in self.owners.items() if peer in owners]
        for i in released:
            self.release(peer, i)
        return released

    def _count_peer(self, peer: str, sign: int) -> None:
        if peer not in self.peer_bits:
            return
        bits = self.peer_bits[peer]
        for i in range(self.count):
            if bitfield_has(bits, i):
                self.avail[i] += sign
        self._dirty = True

    def pick(self, peer: str, *, duplicates: bool = True) -> tuple[int, bool] | None:
        """(chunk, is_duplicate) to ask `peer` for, or None when it has nothing we need
        (duplicates False: nothing but a chunk no one is fetching)."""
        bits = self.peer_bits.get(peer, b"")
        if self._dirty:
            self.order.sort(key=lambda i: (self.avail[i], i))
            self._dirty, self._skip = False, 0
        state, order = self.state, self.order
        while self._skip < self.count and state[order[self._skip]] == DONE:
            self._skip += 1
        for pos in range(self._skip, self.count):
            i = order[pos]
            if state[i] == MISSING and bitfield_has(bits, i):
                state[i] = INFLIGHT
                self.owners[i] = {peer}
                return i, False
        return self._endgame(peer, bits) if duplicates else None

    def _endgame(self, peer: str, bits: bytes | None) -> tuple[int, bool] | None:
        best: int | None = None
        for i, owners in self.owners.items():
            if peer in owners or len(owners) >= MAX_OWNERS or not bitfield_has(bits, i):
                continue
            if best is None or len(owners) < len(self.owners[best]):
                best = i
        if best is None:
            return None
        self.owners[best].add(peer)
        return best, True

    def release(self, peer: str, index: int) -> None:
        """The peer will not deliver this chunk (error or bad data)."""
        owners = self.owners.get(index)
        if owners is None:
            return
        owners.discard(peer)
        if not owners:
            del self.owners[index]
            if self.state[index] == INFLIGHT:
                self.state[index] = MISSING

    def complete(self, peer: str, index: int) -> bool:
        """A verified chunk arrived; False if another peer's copy was first."""
        if self.state[index] == DONE:
            self.release(peer, index)
            return False
        self.state[index] = DONE
        self.remaining -= 1
        self.owners.pop(index, None)
        return True

    def is_done(self, index: int) -> bool:
        return self.state[index] == DONE

    def unavailable(self) -> list[int]:
        """Chunks still needed that no known peer holds."""
        return [i for i in range(self.count) if self.state[i] != DONE and self.avail[i] == 0]

    def in_flight(self) -> int:
        return len(self.owners)

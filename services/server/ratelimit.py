"""A token bucket shared by every connection of the chunk server (P2P_UPLOAD_LIMIT)."""

from __future__ import annotations

import asyncio
import time

# Burst allowance, as a fraction of one second's budget: small, so the rate a
# peer measures over a few seconds is close to the limit.
BURST_SECONDS = 0.05
MIN_SLICE = 4096
MAX_SLICE = 256 * 1024


class RateLimiter:
    """Grants bytes at `rate` per second across all callers, in arrival order."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.capacity = max(MIN_SLICE, rate * BURST_SECONDS)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def slice_size(self) -> int:
        """How many bytes to send per grant: about a burst, so waits stay short."""
        return int(min(MAX_SLICE, max(MIN_SLICE, self.capacity)))

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, n: int) -> None:
        """Wait until `n` bytes may be sent. `n` may exceed the burst; it is then paid in debt."""
        async with self._lock:
            self._refill()
            if self.tokens < n:
                await asyncio.sleep((n - self.tokens) / self.rate)
                self._refill()
            self.tokens -= n

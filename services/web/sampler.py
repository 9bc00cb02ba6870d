"""Download rates sampled from the database into the web program's memory.

`downloads.bytes_received` only grows, so the bytes received between two samples are the
sum of each row's growth. Uploads need no sampling: `uploads` has `at` and `bytes`.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

# Ten minutes at one sample a second: the chart shows the last five, rates use the last few.
SAMPLE_SECONDS = 1.0
KEEP_SAMPLES = 600
RATE_WINDOW_SECONDS = 5.0


@dataclass(frozen=True)
class Sample:
    at: float
    received: int  # bytes received by every download since the previous sample


class RateSampler:
    """Thread-safe: the role's main loop calls `add`, request handlers read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[int, int] | None = None
        self._samples: deque[Sample] = deque(maxlen=KEEP_SAMPLES)
        # Per download: (at, bytes_received) of recent samples, for its own rate.
        self._per: dict[int, deque[tuple[float, int]]] = {}

    def add(self, received: dict[int, int], *, now: float) -> None:
        """Record one reading of every download's `bytes_received`."""
        with self._lock:
            if self._last is not None:
                grown = sum(max(0, n - self._last.get(i, 0)) for i, n in received.items())
                self._samples.append(Sample(now, grown))
            self._last = dict(received)
            for download_id, n in received.items():
                history = self._per.setdefault(download_id, deque(maxlen=16))
                if not history or history[-1][1] != n or now - history[-1][0] > 1:
                    history.append((now, n))
            for gone in set(self._per) - set(received):
                del self._per[gone]

    def samples(self, *, since: float) -> list[Sample]:
        with self._lock:
            return [s for s in self._samples if s.at >= since]

    def rate(self, download_id: int, *, now: float) -> float | None:
        """Bytes per second over the last few seconds; None before two readings."""
        with self._lock:
            history = [h for h in self._per.get(download_id, ()) if now - h[0] <= 30]
        recent = [h for h in history if now - h[0] <= RATE_WINDOW_SECONDS] or history[-2:]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return None
        return max(0.0, (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]))

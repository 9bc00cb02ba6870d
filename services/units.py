"""Human units for what p2pctl prints and the web page shows: one module, so a size, a
rate or an age reads the same in both."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago `ts` was, coarsely: "40 s ago", "5 min ago", "3 h ago", "2 d ago"."""
    if ts is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - ts)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def rate(nbytes: int, seconds: float | None) -> str:
    if not seconds or seconds <= 0 or not nbytes:
        return "-"
    return f"{human_bytes(nbytes / seconds)}/s"


def human_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{human_bytes(rate)}/s"


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def plural(n: int, word: str) -> str:
    """`1 peer`, `2 peers`: a count and its noun (a plain -s plural serves every noun
    p2pctl counts)."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"

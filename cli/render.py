"""Turning report rows into tables (tabulate) or JSON, and human-friendly units."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def ago(ts: float | None, *, now: float | None = None) -> str:
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


def emit_json(rows: Sequence[Any] | Any) -> None:
    def plain(obj: Any) -> Any:
        return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj

    payload = [plain(r) for r in rows] if isinstance(rows, list) else plain(rows)
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


# Rows written to stdout at once by the streaming emitters: large enough that writes
# cost nothing, small enough that a reader of a pipe sees the first rows at once.
STREAM_ROWS = 1000
# json.dumps(rows, indent=2, sort_keys=True) of a list of flat objects, but by the C
# encoder (Python's own runs when indent is set): the item separator carries the
# newline and indentation, which never occur inside an encoded value.
_ROW_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",\n    ", ": "))
# One encoder for every line: json.dumps with any option builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(sort_keys=True)


def emit_json_stream(rows: Iterable[dict[str, Any]]) -> None:
    """Print flat rows exactly as `emit_json` prints a list of them, as they come."""
    out = sys.stdout
    batch: list[str] = []
    first = True
    for row in rows:
        inner = _ROW_ENCODER.encode(row)[1:-1]
        batch.append(("[\n  {\n    " if first else ",\n  {\n    ") + inner + "\n  }")
        first = False
        if len(batch) >= STREAM_ROWS:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch) + ("[]\n" if first else "\n]\n"))
    out.flush()


def emit_jsonl(rows: Iterable[dict[str, Any]]) -> None:
    """One compact JSON object a line (sorted keys), printed as they come."""
    out = sys.stdout
    batch: list[str] = []
    for row in rows:
        batch.append(_LINE_ENCODER.encode(row) + "\n")
        if len(batch) >= STREAM_ROWS:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch))
    out.flush()


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    """A table, or one sentence when there is nothing to show."""
    if not rows:
        click.echo(empty)
        return
    from tabulate import tabulate  # 40 ms to import: only commands that print a table pay

    click.echo(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))

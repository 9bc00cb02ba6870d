"""Turning report rows into tables (tabulate) or JSON; the units in them are
`services.units`, shared with the web page."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click


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
    from tabulate import tabulate  # slow to import: only commands that print a table pay

    click.echo(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))

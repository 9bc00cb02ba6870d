"""Statements written with `?` placeholders, run through SQLAlchemy Core: each becomes a
`text()` with named parameters once (cached), its values bound by position."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, TextClause, text


@functools.lru_cache(maxsize=512)
def statement(sql: str) -> TextClause:
    """`sql` with its i-th `?` (none inside a literal here) as the parameter `:p{i}`."""
    parts = sql.split("?")
    named = [f"{part}:p{i}" for i, part in enumerate(parts[:-1])]
    return text("".join([*named, parts[-1]]))


def run(conn: Connection, sql: str, params: Sequence[object] = ()) -> Any:
    """Execute `sql` with `params` in the order of its `?`s; returns the CursorResult."""
    return conn.execute(statement(sql), {f"p{i}": value for i, value in enumerate(params)})

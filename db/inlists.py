"""IN lists of many values, in slices of a few fixed lengths.

SQLite limits bound parameters per statement, so a list of thousands goes in slices. Each
slice is padded (its last value repeated, which IN ignores) to one of a few lengths: a
statement's text depends on how many `?` it has, and the sqlite3 module keeps the last
128 statements of each connection prepared. With a slice of any length from 1 to 500,
a role handling 10,000 files kept hundreds of distinct, large prepared statements per
connection: 10-15 MB of RSS each, which grew with every catalog and every folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import TypeVar

T = TypeVar("T")

# Well under SQLite's limit on bound parameters per statement (32,766 since 3.32).
SLICE = 500
LENGTHS = (1, 4, 16, 64, 256, SLICE)


def in_slices(values: Sequence[T], size: int = SLICE) -> Iterator[list[T]]:
    """`values` in slices of at most `size` (at most SLICE), in order, each padded to one
    of LENGTHS by repeating its last value."""
    size = min(size, SLICE)
    for start in range(0, len(values), size):
        yield padded(values[start : start + size])


def padded(part: Sequence[T]) -> list[T]:
    """`part` (1 to SLICE values) with its last value repeated up to the next of LENGTHS."""
    out = list(part)
    length = next(n for n in LENGTHS if n >= len(out))
    return out + out[-1:] * (length - len(out))


def marks(part: Sized) -> str:
    """One `?` per value of a slice, for `IN (...)`."""
    return ",".join("?" * len(part))

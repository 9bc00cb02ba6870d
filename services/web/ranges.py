"""HTTP Range requests for the browser share (RFC 9110 section 14): one range or the whole.

Pure: a header and a size in, a byte span out.
"""

from __future__ import annotations

from dataclasses import dataclass


class Unsatisfiable(Exception):
    """A valid range that starts at or beyond the end of the file (answered with 416)."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> Span | None:
    """The span a Range header asks for, or None for the whole file.

    A malformed header, another unit or several ranges get the whole file (the RFC
    lets a server ignore Range). Raises Unsatisfiable when the one range asked for
    lies wholly past the end.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0:
            raise Unsatisfiable(header)
        return Span(max(0, size - suffix), size - 1) if size else _empty(header)
    start = int(first)
    if start >= size:
        raise Unsatisfiable(header)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if end < start:
        return None
    return Span(start, end)


def _empty(header: str) -> Span:
    raise Unsatisfiable(header)

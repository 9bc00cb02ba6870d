"""SHA-1 of BitTorrent v1 pieces, read from the files where they are.

hashlib releases the GIL on large buffers; reads go into one reused buffer of whole
pieces, so a file's bytes pass through Python's hands once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from p2pshare.services.torrent.metainfo import PlannedFile

# Bytes read at once: whole pieces, at least this much (large reads, few syscalls).
READ_BYTES = 4 * 1024 * 1024


def inner_pieces(path: Path, phase: int, count: int, piece_size: int) -> bytes:
    """SHA-1 of `count` whole pieces starting `phase` bytes into the file, concatenated.
    Raises OSError, including when the file is shorter than that."""
    per_read = max(1, READ_BYTES // piece_size)
    buf = bytearray(per_read * piece_size)
    view = memoryview(buf)
    out = []
    with open(path, "rb", buffering=0) as f:
        f.seek(phase)
        left = count
        while left:
            n = min(per_read, left)
            want = n * piece_size
            got = 0
            while got < want:
                r = f.readinto(view[got:want])
                if not r:
                    raise OSError(f"{path} is shorter than it was when indexed")
                got += r
            for i in range(n):
                out.append(hashlib.sha1(view[i * piece_size : (i + 1) * piece_size]).digest())
            left -= n
    return b"".join(out)


def piece_at(
    paths: Sequence[Path], planned: Sequence[PlannedFile], index: int, piece_size: int, total: int
) -> bytes:
    """SHA-1 of one piece assembled from every file it spans. Raises OSError."""
    start, end = index * piece_size, min((index + 1) * piece_size, total)
    h = hashlib.sha1()
    for path, f in zip(paths, planned, strict=True):
        lo, hi = max(start, f.offset), min(end, f.offset + f.size)
        if lo >= hi:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, hi - lo, lo - f.offset)
        finally:
            os.close(fd)
        if len(data) != hi - lo:
            raise OSError(f"{path} is shorter than it was when indexed")
        h.update(data)
    return h.digest()


def stream_pieces(paths: Sequence[Path], piece_size: int) -> Iterator[bytes]:
    """SHA-1 of each piece of these files laid end to end (BEP 3, no padding), the short
    last one included, reading each byte once. Raises OSError."""
    buf = bytearray(max(piece_size, READ_BYTES // piece_size * piece_size))
    view = memoryview(buf)
    h, filled = hashlib.sha1(), 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while r := f.readinto(view):
                at = 0
                while at < r:
                    take = min(r - at, piece_size - filled)
                    h.update(view[at : at + take])
                    at, filled = at + take, filled + take
                    if filled == piece_size:
                        yield h.digest()
                        h, filled = hashlib.sha1(), 0
    if filled:
        yield h.digest()


def pieces_match(paths: Sequence[Path], piece_size: int, pieces: bytes) -> bool:
    """Whether these files are exactly what the torrent's pieces say. Raises OSError."""
    at = 0
    for digest in stream_pieces(paths, piece_size):
        if pieces[at : at + len(digest)] != digest:
            return False
        at += len(digest)
    return at == len(pieces)

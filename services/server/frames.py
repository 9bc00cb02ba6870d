"""Request frames off one connection of the chunk server, in batches, and what the
requests of one batch share (`Batch`).

A peer that pipelines (many small files, or many chunks of one) sends several request
frames in one segment. Reading them as they come, a batch at a time, lets the server
look up where all of their bytes are in one database read instead of one per request.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import BinaryIO

from p2pshare.services import protocol
from p2pshare.services.protocol import FileKey
from p2pshare.services.server.scan import open_beneath

# What one read asks the connection for: a whole frame at its largest and its header.
READ_SIZE = protocol.MAX_FRAME + protocol.FRAME_HEADER.size
# Frames handed over at most per batch; the rest wait in the buffer for the next one.
MAX_BATCH = 64
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC


class FrameReader:
    """Whole request frames from a StreamReader, every complete one received so far."""

    def __init__(self, reader: asyncio.StreamReader, max_batch: int = MAX_BATCH) -> None:
        self.reader = reader
        self.max_batch = max_batch
        self.pending = bytearray()

    async def batch(self, idle: float, frame_timeout: float) -> list[bytes]:
        """The bodies of the complete frames received (at least one, at most max_batch), in
        order, waiting up to `idle` seconds for one to begin and `frame_timeout` for one
        that began to end.

        Raises TimeoutError, asyncio.IncompleteReadError (the peer closed) and
        ProtocolError (a header announcing a frame over protocol.MAX_FRAME).
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # by when the frame begun in `pending` must end
        while True:
            frames = self._complete()
            if frames:
                return frames
            if self.pending and deadline is None:
                deadline = loop.time() + frame_timeout
            async with asyncio.timeout_at(deadline if deadline is not None else loop.time() + idle):
                data = await self.reader.read(READ_SIZE)
            if not data:
                raise asyncio.IncompleteReadError(bytes(self.pending), None)
            self.pending += data

    def _complete(self) -> list[bytes]:
        """Take the complete frames off the front of `pending`. Raises ProtocolError."""
        frames: list[bytes] = []
        start = 0
        header = protocol.FRAME_HEADER.size
        pending = self.pending
        while len(frames) < self.max_batch and len(pending) - start >= header:
            try:
                length = protocol.frame_length(bytes(pending[start : start + header]))
            except protocol.ProtocolError:
                if frames:
                    break  # the frames before it are answered first, as they came
                raise
            end = start + header + length
            if len(pending) < end:
                break
            frames.append(bytes(pending[start + header : end]))
            start = end
        if start:
            del pending[:start]
        return frames


class Batch:
    """What the requests of one batch share: the keys looked up for it, and the file its
    last chunk came from, kept open for the next chunk of the same file (one at a time,
    so a connection holds at most one descriptor however much it pipelines)."""

    def __init__(self) -> None:
        self.fresh: set[FileKey] = set()
        self._path: Path | None = None
        self._fh: BinaryIO | None = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, path: Path, *, within: Path | None) -> BinaryIO:
        """The file at path, opened for reading (or still open): see open_offered. Raises
        OSError."""
        if self._fh is not None and path == self._path:
            return self._fh
        self.close()
        self._fh, self._path = open_offered(path, within), path
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._path = None


def open_offered(path: Path, within: Path | None) -> BinaryIO:
    """An offered file opened for reading: from `within` (the folder it is offered from)
    through no symlink (scan.open_beneath), or without following a last-part link for a
    download's temp file (None). The caller still checks it is the very file indexed (its
    stamp). Raises OSError."""
    if within is None:
        return open(os.open(path, OPEN_FLAGS | os.O_NOFOLLOW), "rb")
    return open(open_beneath(within, path.relative_to(within).as_posix()), "rb")


def decode_batch(
    frames: list[bytes],
) -> tuple[list[protocol.Request], protocol.ProtocolError | None]:
    """The requests of a batch of frames up to the first one refused, and why it was."""
    out: list[protocol.Request] = []
    for body in frames:
        try:
            out.append(protocol.decode_request(body))
        except protocol.ProtocolError as exc:
            return out, exc
    return out, None

"""Chunk bytes from a shared file onto a connection: `os.sendfile` underneath asyncio in
clear, so Python never touches them; under TLS, and for a small span in clear, read once
and written once (this kernel has no kernel TLS). Either way paced by the upload limit,
and a reader that takes nothing for STALL_TIMEOUT is dropped."""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from p2pshare.services.server.ratelimit import RateLimiter

# A peer that reads nothing of a slice for this long is dropped.
STALL_TIMEOUT = 30.0
SEND_SLICE = 4 * 1024 * 1024
# Under TLS: bytes read per slice, and how much encrypted output may wait to be sent.
# asyncio's TLS encrypts a write into a memory buffer and hands the transport a copy of
# it: a large slice makes each of those buffers fresh memory, which the kernel must zero
# page by page, where slices this small keep reusing memory that is already warm.
TLS_SLICE = 256 * 1024
TLS_HIGH_WATER = 4 * 1024 * 1024
# In clear, a span up to this size is read and written rather than sent by loop.sendfile:
# copying a small span costs less than the Python of loop.sendfile's waits and checks,
# which every call pays, and a folder of small files is a call per file.
READ_SEND_MAX = 128 * 1024


class ByteSender:
    """Sends a span of an open file to one connection's writer."""

    def __init__(self, *, encrypt: bool, limiter: RateLimiter | None) -> None:
        self.encrypt = encrypt
        self.limiter = limiter

    async def send(
        self, writer: asyncio.StreamWriter, fh: BinaryIO, offset: int, length: int
    ) -> None:
        if self.encrypt or length <= READ_SEND_MAX:
            await self._send_read(writer, fh, offset, length)
            return
        loop = asyncio.get_running_loop()
        slice_size = self.limiter.slice_size if self.limiter else SEND_SLICE
        sent = 0
        while sent < length:
            n = min(slice_size, length - sent)
            if self.limiter:
                await self.limiter.acquire(n)
            if writer.transport.is_closing():
                raise ConnectionError("the peer closed the connection")
            try:
                async with asyncio.timeout(STALL_TIMEOUT):
                    done = await loop.sendfile(
                        writer.transport,
                        fh,
                        offset + sent,
                        n,
                    )
            except RuntimeError as exc:  # asyncio's word for a transport closed under us
                raise ConnectionError(str(exc)) from None
            if done < n:
                # The file shrank under us; the reply's length is a promise we cannot
                # keep, so the connection (not the server) has to go.
                raise ConnectionError("the file was truncated while being sent")
            sent += n

    async def _send_read(
        self, writer: asyncio.StreamWriter, fh: BinaryIO, offset: int, length: int
    ) -> None:
        """Under TLS the kernel cannot send the file for us (no kernel TLS here): each slice
        is read once, into a new bytes object (the transport may keep it until it has
        sent it, or encrypted it, so a reused buffer could change under it), and written
        once; under TLS encrypted by OpenSSL in records of the largest size TLS allows
        (16 KiB)."""
        slice_size = self.limiter.slice_size if self.limiter else TLS_SLICE
        fd = fh.fileno()
        sent = 0
        while sent < length:
            n = min(slice_size, length - sent)
            if self.limiter:
                await self.limiter.acquire(n)
            # Inline, as sendfile reads inside the kernel call on the clear path: a hop to
            # a thread and back for each slice costs more than the read it would move.
            data = os.pread(fd, n, offset + sent)
            if len(data) < n:
                raise ConnectionError("the file was truncated while being sent")
            if writer.transport.is_closing():
                raise ConnectionError("the peer closed the connection")
            writer.write(data)
            if writer.transport.get_write_buffer_size() > TLS_HIGH_WATER:
                async with asyncio.timeout(STALL_TIMEOUT):
                    await writer.drain()
            sent += n

"""One peer's share of a download: pipelined chunk requests on one connection, each chunk
verified from its predecessor's manifest entry as it arrives, then written once by the
job's writer thread."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from p2pshare.db import downloads as dbdl
from p2pshare.services import protocol
from p2pshare.services.block_writer import Block, Verdict, Whole
from p2pshare.services.peerclient import PeerClient
from p2pshare.services.sha256chain import INITIAL_STATE, ChainHasher

if TYPE_CHECKING:
    from p2pshare.services.download_job import DownloadJob

log = logging.getLogger("p2p.download")

HAVE_REFRESH_SECONDS = 2.0
# Requests in flight per peer: enough bytes to keep a fast link busy while the
# previous chunk is hashed and written.
PIPELINE_BYTES = 8 * 1024 * 1024
MIN_PIPELINE = 2
# ...but not so many small chunks that one peer takes the whole file while others wait.
MAX_PIPELINE = 16
# Received and hashed in blocks that stay in the CPU cache between the two, then written
# whole (block_writer.WRITE_PIECE); bench/recvpath.py found 1 MiB+ writes slow into ext4.
RECV_BLOCK = 256 * 1024
# Blocks between this thread and the writer: enough to ride out a slow write, little
# memory (1 MiB a source).
BLOCKS_IN_FLIGHT = 4
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0


class BadChunk(Exception):
    """A peer sent bytes that do not hash to the chunk's manifest entry."""


@dataclass
class SourceState:
    """One source peer of a download, its connections and its retry schedule."""

    source: dbdl.Source
    workers: list[PeerWorker] = field(default_factory=list)
    retry_at: float = 0.0
    backoff: float = RETRY_MIN_SECONDS
    last_error: str = ""

    def alive(self) -> list[PeerWorker]:
        self.workers = [w for w in self.workers if w.is_alive()]
        return self.workers


def peer_id(key: tuple[str, int]) -> str:
    """The picker's name for a source peer: 'address:port'."""
    return f"{key[0]}:{key[1]}"


class ChunkCheck:
    """Verifies chunk i alone: SHA-256 resumed from entry i-1, compared with entry i.

    For the last chunk the hash is finished and compared with the file's SHA-256,
    so every chunk verified proves the whole file without a second pass.
    """

    def __init__(self, entries: list[bytes], chunk_size: int) -> None:
        self.entries = entries
        self.chunk_size = chunk_size

    def start(self, index: int) -> ChainHasher:
        before = self.entries[index - 1] if index else INITIAL_STATE
        return ChainHasher(before, index * self.chunk_size)

    def matches(self, index: int, hasher: ChainHasher) -> bool:
        last = index == len(self.entries) - 1
        return (hasher.digest() if last else hasher.state()) == self.entries[index]


class PeerWorker(threading.Thread):
    """Fetches chunks of one file from one peer over one pipelined connection."""

    def __init__(self, job: DownloadJob, state: SourceState) -> None:
        src = state.source
        super().__init__(name=f"peer-{src.address}:{src.tcp_port}", daemon=True)
        self.job = job
        self.state = state
        self.key = (src.address, src.tcp_port)
        self.peer = peer_id(self.key)
        self.client: PeerClient | None = None
        self.pending: deque[tuple[int, bool]] = deque()
        spec = job.spec
        wanted = -(-PIPELINE_BYTES // max(spec.chunk_size, 1))
        self.depth = min(MAX_PIPELINE, max(MIN_PIPELINE, wanted))
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(BLOCKS_IN_FLIGHT):
            self.free.put(bytearray(min(RECV_BLOCK, max(spec.chunk_size, 1))))

    def interrupt(self) -> None:
        client = self.client
        if client is not None and client.sock is not None:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        job, st = self.job, self.state
        try:
            self._session()
            st.backoff = RETRY_MIN_SECONDS
            st.retry_at = time.time() + RETRY_MIN_SECONDS
        except BadChunk:
            pass  # recorded by chunk_bad; this peer is not asked again for this file
        except (OSError, protocol.ProtocolError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if not job.halt.is_set() and error != st.last_error:
                log.warning("download %d: peer %s: %s", job.spec.download_id, self.peer, error)
            st.last_error = error
            st.retry_at = time.time() + st.backoff
            st.backoff = min(RETRY_MAX_SECONDS, st.backoff * 2)
            if isinstance(exc, protocol.RemoteRefused):
                job.peer_bits(self.peer, b"\0" * ((job.count + 7) // 8))
        except Exception:
            log.exception("download %d: peer %s worker failed", job.spec.download_id, self.peer)
            st.retry_at = time.time() + RETRY_MAX_SECONDS
        finally:
            job.peer_lost(self.peer, [i for i, _ in self.pending])
            self.pending.clear()
            self.client = None

    def _session(self) -> None:
        job = self.job
        src = self.state.source
        link = job.tls.link(src.tls, src.fingerprint)  # raises CannotTalk
        with PeerClient(*self.key, key=job.settings.network_key, link=link) as client:
            self.client = client
            if job.halt.is_set():
                return
            job.peer_bits(self.peer, client.have(job.key, job.count))
            last_have = time.monotonic()
            while not job.halt.is_set() and self.key not in job.bad_sources:
                self._fill_pipeline(client)
                if self.pending:
                    self._receive(client, *self.pending[0])
                    self.pending.popleft()
                    continue
                if job.picker.finished:
                    return
                if time.monotonic() - last_have > HAVE_REFRESH_SECONDS:
                    job.peer_bits(self.peer, client.have(job.key, job.count))
                    last_have = time.monotonic()
                job.wait_for_work(0.25)

    def _fill_pipeline(self, client: PeerClient) -> None:
        asks = []
        # One endgame copy in flight a connection: each is held whole in memory until
        # verified, and a pipeline of them (three seeders, 4 MiB chunks) put the
        # downloader's peak RSS at the 100 MB goal.
        copying = any(duplicate for _, duplicate in self.pending)
        while len(self.pending) < self.depth:
            pick = self.job.pick(self.peer, duplicates=not copying)
            if pick is None:
                break
            copying = copying or pick[1]
            asks.append(protocol.ChunkRequest(self.job.key, pick[0], 0, 0))
            self.pending.append(pick)
        if asks:
            client.send(*asks)  # one segment for all: each send is a trip through the kernel

    def _free_block(self) -> bytearray:
        """A buffer the writer is done with; waiting here is the backpressure of a slow disk."""
        while True:
            try:
                return self.free.get(timeout=1.0)
            except queue.Empty:
                if self.job.halt.is_set():
                    raise ConnectionAbortedError("the download is ending") from None

    def _receive(self, client: PeerClient, index: int, duplicate: bool) -> None:
        """Receive and hash one chunk, block by block, each handed to the job's one writer
        (block_writer.py): a byte is copied once from the socket into a buffer, hashed
        there, and written from there, while this thread receives the next block."""
        job, spec = self.job, self.job.spec
        size = protocol.chunk_length(spec.size, spec.chunk_size, index)
        client.read_chunk_header(protocol.ChunkRequest(job.key, index, 0, 0), size)
        hasher = job.check.start(index)
        offset = index * spec.chunk_size
        if duplicate:
            self._receive_copy(client, index, size, hasher)
            return
        put = job.writer.put
        got = 0
        while got < size:
            buf = self._free_block()
            n = min(len(buf), size - got)
            view = memoryview(buf)[:n]
            client.read_exact_into(view)
            hasher.update(view)
            put(Block(index, buf, n, offset + got, self.free.put))
            got += n
        self._verdict(index, size, hasher)
        put(Verdict(partial(job.chunk_verified, self.peer, self.key, index, size)))

    def _receive_copy(self, client: PeerClient, index: int, size: int, hasher: ChainHasher) -> None:
        """An endgame copy is held back whole and written only once verified, so it can
        never mix with the bytes the first peer's copy is writing into the same place."""
        job = self.job
        whole = memoryview(bytearray(size))
        for got in range(0, size, RECV_BLOCK):
            part = whole[got : got + RECV_BLOCK]
            client.read_exact_into(part)
            hasher.update(part)
        self._verdict(index, size, hasher)
        verified = partial(job.chunk_verified, self.peer, self.key, index, size)
        job.writer.put(Whole(index, whole, index * job.spec.chunk_size, verified))

    def _verdict(self, index: int, size: int, hasher: ChainHasher) -> None:
        """Raises BadChunk (after recording it) if the chunk does not match its entry."""
        if not self.job.check.matches(index, hasher):
            self.job.chunk_bad(self.peer, self.key, index, size)
            raise BadChunk(f"chunk {index}")

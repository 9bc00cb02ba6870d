"""One connection to one source of a download: pipelined chunk requests, each chunk
received into one buffer, verified against its manifest entry and written from there by
this thread (writer.py). A download may be one big file or a set of small ones: the
worker asks for chunks by their place in the set (`JobPort.chunk`), and how deep its
pipeline is and whether its connection is kept for the next set is the download's
policy (`Pipeline`)."""

from __future__ import annotations

import contextlib
import logging
import mmap
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial

from p2pshare.db import jobs as dbjobs
from p2pshare.services import protocol
from p2pshare.services.downloader.pool import PoolKey
from p2pshare.services.downloader.port import JobPort
from p2pshare.services.net.client import PeerClient

log = logging.getLogger("p2p.download")

HAVE_REFRESH_SECONDS = 2.0
# A chunk is received into one buffer and hashed in one call: fewer, fuller recv and hash
# calls than small blocks (see writer.py). Chunks larger than
# this (files over 1 GiB) arrive in pieces of it, each written before the chunk's verdict,
# as only this connection writes that chunk (endgame copies are held whole).
RECV_PIECE = 4 * 1024 * 1024
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0


class BadChunk(Exception):
    """A peer sent bytes that do not hash to the chunk's manifest entry."""


@dataclass
class SourceState:
    """One source peer of a download, its connections and its retry schedule."""

    source: dbjobs.Source
    workers: list[PeerWorker] = field(default_factory=list)
    retry_at: float = 0.0
    backoff: float = RETRY_MIN_SECONDS
    # Why the last connection failed, until one gets an answer again.
    last_error: str = ""

    def alive(self) -> list[PeerWorker]:
        self.workers = [w for w in self.workers if w.is_alive()]
        return self.workers


def talk_error(exc: OSError | protocol.ProtocolError) -> str:
    """Why a peer could not be talked to, in words (`history` shows them)."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def peer_id(key: tuple[str, int]) -> str:
    """The picker's name for a source peer: 'address:port'."""
    return f"{key[0]}:{key[1]}"


class PeerWorker(threading.Thread):
    """Fetches chunks of one download from one peer over one pipelined connection."""

    def __init__(self, job: JobPort, state: SourceState) -> None:
        src = state.source
        super().__init__(name=f"peer-{src.address}:{src.tcp_port}", daemon=True)
        self.job = job
        self.state = state
        self.key = (src.address, src.tcp_port)
        self.peer = peer_id(self.key)
        self.client: PeerClient | None = None
        self.pending: deque[tuple[int, bool]] = deque()
        self.pending_bytes = 0
        self.answered = 0  # replies read, on any connection
        # An anonymous mapping, not a bytearray: malloc would serve a 4 MiB request from
        # its heap once one such block was freed (its mmap threshold rises to it), and
        # the heap keeps the pages; a mapping's pages go back when the worker ends.
        self._map = mmap.mmap(-1, min(RECV_PIECE, max(job.largest_chunk, 1)))
        self.buf = memoryview(self._map)

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
            error = talk_error(exc)
            if not job.halted() and error != st.last_error:
                log.warning("%s: peer %s: %s: %s", job.label, self.peer, type(exc).__name__, error)
            st.last_error = error
            st.retry_at = time.time() + st.backoff
            st.backoff = min(RETRY_MAX_SECONDS, st.backoff * 2)
            if isinstance(exc, protocol.RemoteRefused):
                job.peer_bits(self.peer, b"\0" * ((job.count + 7) // 8))
        except Exception:
            log.exception("%s: peer %s worker failed", job.label, self.peer)
            st.retry_at = time.time() + RETRY_MAX_SECONDS
        finally:
            job.peer_lost(self.peer, [i for i, _ in self.pending])
            self.pending.clear()
            self.client = None
            # A view still held by an exception's traceback keeps the mapping open: then
            # the garbage collector unmaps it once that is gone.
            with contextlib.suppress(BufferError):
                self.buf.release()
                self._map.close()

    def _session(self) -> None:
        job = self.job
        src = self.state.source
        link = job.link(src.tls, src.fingerprint)  # raises CannotTalk
        pool = job.pipeline.pool
        if pool is None:
            with PeerClient(*self.key, key=job.network_key, link=link) as client:
                self._talk(client)
            return
        pool_key: PoolKey = (src.address, src.tcp_port, src.fingerprint, src.tls)

        def connect() -> PeerClient:
            client = PeerClient(*self.key, key=job.network_key, link=link)
            client.connect()
            return client

        for attempt in range(2):
            client, reused = pool.take(pool_key, connect)
            try:
                self._talk(client)
            except BaseException as exc:
                client.close()
                # A pooled connection the peer closed while idle fails before its first
                # answer: once more on a new one, asking again for what was asked.
                talk = isinstance(exc, (OSError, protocol.ProtocolError))
                if talk and attempt == 0 and reused and not self.answered:
                    continue
                raise
            if self.pending:
                client.close()
            else:
                pool.give(pool_key, client)
            return

    def _talk(self, client: PeerClient) -> None:
        job = self.job
        self.client = client
        if job.halted():
            return
        if self.pending:  # asked on a pooled connection that failed unanswered
            client.send(*(self._request(g) for g, _ in self.pending))
        if job.have_key is not None:
            job.peer_bits(self.peer, client.have(*job.have_key))
        self.state.last_error = ""  # it answers: whatever failed before is over
        last_have = time.monotonic()
        while not job.halted() and not job.is_bad(self.key):
            self._fill_pipeline(client)
            if self.pending:
                g, duplicate = self.pending[0]
                size = self._receive(client, g, duplicate)
                self.pending.popleft()
                self.pending_bytes -= size
                continue
            if job.finished():
                return
            if job.have_key is not None and time.monotonic() - last_have > HAVE_REFRESH_SECONDS:
                job.peer_bits(self.peer, client.have(*job.have_key))
                last_have = time.monotonic()
            job.wait_for_work(0.25)

    def _request(self, g: int) -> protocol.ChunkRequest:
        chunk = self.job.chunk(g)
        return protocol.ChunkRequest(chunk.key, chunk.index, 0, 0)

    def _fill_pipeline(self, client: PeerClient) -> None:
        asks = []
        pipeline = self.job.pipeline
        # One endgame copy in flight a connection: a copy of a chunk larger than the
        # buffer is held whole in memory until verified, and a pipeline of them would hold
        # many such chunks at once.
        copying = any(duplicate for _, duplicate in self.pending)
        while len(self.pending) < pipeline.min_requests or (
            len(self.pending) < pipeline.max_requests and self.pending_bytes < pipeline.bytes
        ):
            pick = self.job.pick(self.peer, duplicates=not copying)
            if pick is None:
                break
            copying = copying or pick[1]
            request = self._request(pick[0])
            asks.append(request)
            self.pending.append(pick)
            self.pending_bytes += self.job.chunk(pick[0]).size
        if asks:
            client.send(*asks)  # one segment for all: each send is a trip through the kernel

    def _receive(self, client: PeerClient, g: int, duplicate: bool) -> int:
        """Receive, verify and write one chunk, a byte copied once from the socket into the
        buffer, hashed there and written from there; the last piece is written with the
        chunk's verdict, under one hold of the writer's lock (writer.py). Returns its size."""
        job = self.job
        chunk = job.chunk(g)
        size = chunk.size
        try:
            client.read_chunk_header(protocol.ChunkRequest(chunk.key, chunk.index, 0, 0), size)
        except protocol.RemoteRefused as exc:
            self.answered += 1
            if not job.chunk_refused(self.peer, g, str(exc)):
                raise
            return size
        self.answered += 1
        verified = partial(job.chunk_verified, self.peer, self.key, g, size)
        if size <= len(self.buf) or duplicate:
            # An endgame copy of a chunk larger than the buffer is held back whole and
            # written only once verified, so it can never mix with the pieces the first
            # peer's copy is writing into the same place.
            whole = self.buf[:size] if size <= len(self.buf) else memoryview(bytearray(size))
            client.read_exact_into(whole)
            if self._verdict(g, size, chunk.check.verify(chunk.index, whole)):
                job.write(g, whole, chunk.offset, verified)
            return size
        hasher = chunk.check.start(chunk.index)
        got = 0
        while True:
            view = self.buf[: min(len(self.buf), size - got)]
            client.read_exact_into(view)
            hasher.update(view)
            got += len(view)
            if got == size:
                break
            job.write(g, view, chunk.offset + got - len(view))
        if self._verdict(g, size, chunk.check.matches(chunk.index, hasher)):
            job.write(g, view, chunk.offset + got - len(view), verified)
        return size

    def _verdict(self, g: int, size: int, matches: bool) -> bool:
        """Whether the chunk matches its entry. Raises BadChunk (after recording it) if it
        does not and the download asks no more of this peer."""
        if matches:
            return True
        if self.job.chunk_bad(self.peer, self.key, g, size):
            raise BadChunk(f"chunk {g}")
        return False

"""One source's share of a batch of small downloads (small_batch.py): one pooled
connection, whole files asked for in one segment, each chunk verified against its
manifest entry as it lands, each file written once into its temp file and handed back
ready. What it cannot finish it gives back to the batch, which leaves it to full jobs."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from p2pshare.db import batch as dbbatch
from p2pshare.db import jobs as dbjobs
from p2pshare.db.engine import Database
from p2pshare.services import protocol
from p2pshare.services.downloader.pool import PeerPool, PoolKey
from p2pshare.services.downloader.port import ChunkCheck
from p2pshare.services.net.client import PeerClient
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.download")

# Requests in flight on one connection: enough to hide the round trip, few enough
# bytes that a slow peer does not sit on much.
PIPELINE_FILES = 64
PIPELINE_BYTES = 4 * 1024 * 1024


class Stopped(Exception):
    """The role is stopping: leave what is not published for the next start."""


@dataclass
class Ready:
    """A file verified and written into its temp file, not yet durable nor published."""

    spec: dbjobs.JobSpec
    temp: str
    source: dbjobs.SourceTally | None


class BatchPort(Protocol):
    """What a source's fetch may use of its batch: the role's shared pieces, read only,
    and four calls, each safe from any source's thread."""

    settings: Settings
    database: Database
    stop: threading.Event
    tls: NodeTls
    pool: PeerPool
    fsync_each: bool  # fsync each file as it is written (durable.py)

    def add_ready(self, item: Ready) -> None:
        """A file verified and in its temp file: publish it with the next group."""
        ...

    def give_back(self, specs: list[dbjobs.JobSpec], why: str) -> None:
        """Downloads this batch will not finish: full jobs run them."""
        ...

    def cannot_write(self, spec: dbjobs.JobSpec, exc: OSError) -> None:
        """Writing a file's temp file failed: give it back, saying why."""
        ...

    def source_done(self) -> None:
        """This source's thread is ending."""
        ...


@dataclass
class Arriving:
    """A file whose chunks are on their way, received into one buffer, each chunk verified
    against its manifest entry as it lands."""

    spec: dbjobs.JobSpec
    data: memoryview
    check: ChunkCheck
    chunks: int
    got: int = 0
    dropped: bool = False  # refused, failed or given back: its late chunks are discarded

    @classmethod
    def of(cls, spec: dbjobs.JobSpec) -> Arriving:
        entries = [bytes.fromhex(h) for h in spec.chunk_hashes]
        return cls(
            spec,
            memoryview(bytearray(spec.size)),
            ChunkCheck(entries, spec.chunk_size),
            len(entries),
        )


class SourceFetch:
    """One source's share of a batch, over one pooled connection, pipelined."""

    def __init__(
        self,
        batch: BatchPort,
        source: dbjobs.Source,
        specs: list[dbjobs.JobSpec],
        temps: dict[int, str],
    ) -> None:
        self.batch = batch
        self.source = source
        self.todo = deque(specs)
        self.temps = temps
        # One entry a chunk request in flight, in the order they were sent.
        self.pending: deque[tuple[Arriving, protocol.ChunkRequest]] = deque()
        self.peer = f"{source.address}:{source.tcp_port}"
        self.answered = 0  # replies read, on any connection
        self.in_flight = 0  # bytes of the files with a request in `pending`

    def run(self) -> None:
        try:
            with contextlib.suppress(Stopped):  # the role is stopping: nothing to give back
                self._run()
        except Exception:
            log.exception("small downloads from %s failed", self.peer)
            self._give_back_rest("internal error")
        finally:
            self.batch.source_done()

    def _run(self) -> None:
        batch, src = self.batch, self.source
        try:
            link = batch.tls.link(src.tls, src.fingerprint)
        except protocol.ProtocolError as exc:  # CannotTalk
            self._give_back_rest(f"peer {self.peer}: {exc}")
            return
        key: PoolKey = (src.address, src.tcp_port, src.fingerprint, src.tls)

        def connect() -> PeerClient:
            client = PeerClient(
                src.address, src.tcp_port, key=batch.settings.network_key, link=link
            )
            client.connect()
            return client

        for attempt in range(2):
            client: PeerClient | None = None
            reused = False
            try:
                client, reused = batch.pool.take(key, connect)
                self._fetch_all(client)
            except (OSError, protocol.ProtocolError) as exc:
                if client is not None:
                    client.close()
                # A pooled connection the peer closed while idle fails before its first
                # answer: once more on a new one. Anything else is the full jobs' to retry.
                if attempt == 0 and reused and not self.answered:
                    self.todo.extendleft(reversed(self._unfinished()))
                    self.pending.clear()
                    self.in_flight = 0
                    continue
                self._give_back_rest(f"peer {self.peer}: {type(exc).__name__}: {exc}")
                return
            batch.pool.give(key, client)
            return

    def _fetch_all(self, client: PeerClient) -> None:
        """Fetch every assigned file. Raises OSError, ProtocolError (except a refusal of
        one chunk, which leaves its file to a full job)."""
        while self.todo or self.pending:
            if self.batch.stop.is_set():
                raise Stopped
            self._fill(client)
            arriving, req = self.pending[0]
            spec = arriving.spec
            size = protocol.chunk_length(spec.size, spec.chunk_size, req.index)
            try:
                client.read_chunk_header(req, size)
            except protocol.RemoteRefused as exc:  # that file only; the connection stays
                self._answered()
                self._drop(arriving, f"peer {self.peer} refused {spec.name}: {exc}")
                continue
            start = req.index * spec.chunk_size
            view = arriving.data[start : start + size]
            client.read_exact_into(view)
            self._answered()
            if not arriving.dropped:
                self._arrived(arriving, req.index, view)

    def _fill(self, client: PeerClient) -> None:
        """Ask for whole files, all their chunks in one segment, while the pipeline has room."""
        asks = []
        while self.todo and len(self.pending) < PIPELINE_FILES and self.in_flight < PIPELINE_BYTES:
            arriving = Arriving.of(self.todo.popleft())
            spec = arriving.spec
            key = protocol.FileKey(spec.sha256, spec.chunk_size, spec.root)
            for index in range(arriving.chunks):
                req = protocol.ChunkRequest(key, index, 0, 0)
                self.pending.append((arriving, req))
                asks.append(req)
            self.in_flight += spec.size
        if asks:
            client.send(*asks)  # one segment for all of them

    def _answered(self) -> None:
        """The oldest request's reply was read (or refused)."""
        arriving, req = self.pending.popleft()
        self.answered += 1
        if req.index == arriving.chunks - 1:  # its file's last request (asked in order)
            self.in_flight -= arriving.spec.size

    def _arrived(self, arriving: Arriving, index: int, view: memoryview) -> None:
        spec, src = arriving.spec, self.source
        if not arriving.check.verify(index, view):
            bad = dbjobs.SourceTally(src.address, src.tcp_port, src.username, 0, len(view), 1)
            with self.batch.database.write() as s:
                dbbatch.record_bad(s, spec.download_id, bad, now=time.time())
            log.warning(
                "download %d: chunk %d of %s from %s failed verification; "
                "peer marked bad for this file",
                spec.download_id, index, spec.name, self.peer,
            )  # fmt: skip
            self._drop(arriving, "a peer sent bytes that fail verification")
            return
        arriving.got += 1
        if arriving.got < arriving.chunks:
            return
        temp = self.temps[spec.download_id]
        try:
            write_file(temp, arriving.data, fsync=self.batch.fsync_each)
        except OSError as exc:
            self.batch.cannot_write(spec, exc)
            return
        tally = dbjobs.SourceTally(
            src.address, src.tcp_port, src.username, arriving.chunks, spec.size, 0
        )
        self.batch.add_ready(Ready(spec, temp, tally))

    def _drop(self, arriving: Arriving, why: str) -> None:
        if not arriving.dropped:
            arriving.dropped = True
            self.batch.give_back([arriving.spec], why)

    def _unfinished(self) -> list[dbjobs.JobSpec]:
        """Files asked for and not yet complete, oldest first, each once."""
        seen: dict[int, dbjobs.JobSpec] = {}
        for arriving, _ in self.pending:
            if not arriving.dropped:
                seen.setdefault(arriving.spec.download_id, arriving.spec)
        return list(seen.values())

    def _give_back_rest(self, why: str) -> None:
        rest = self._unfinished() + list(self.todo)
        self.pending.clear()
        self.in_flight = 0
        self.todo.clear()
        self.batch.give_back(rest, why)


def write_file(path: str | Path, data: memoryview, *, fsync: bool) -> None:
    """The whole file, from the start, in one thread (never two writers on one file);
    fsync: durable before this returns (in the source's thread, beside its receiving)."""
    # As any program writes a file (the umask decides): it is published as it is.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)

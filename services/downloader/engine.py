"""The download engine: a set of files fetched chunk by chunk from the peers that hold them.

A download is a set of files, their chunks laid end to end (a big file is a set of one).
Peer workers (worker.py), one a connection, pick chunks through the pure `Picker`, ask
for them pipelined, verify each against its manifest entry, and hand it to the download
(`write`). How many connections it opens, how many chunks are in flight, what a verified
chunk becomes and when files are published is its policy, a subclass of `Download`:
`job.DownloadJob` for one big file (written in place, durable every flush, published
when whole; it waits, retries and moves to another offer), `small_batch.SmallBatch` for
hundreds of small ones (held whole, written once, published in groups; what it cannot
finish simply it gives back to be run as a job).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

from p2pshare.db import jobs as dbjobs
from p2pshare.db.engine import Database
from p2pshare.services import protocol
from p2pshare.services.downloader.picker import Picker
from p2pshare.services.downloader.port import Chunk, ChunkCheck, Pipeline
from p2pshare.services.net.tls import Link, NodeTls
from p2pshare.services.settings import Settings


@dataclass(frozen=True)
class Shared:
    """What a download uses of the role running it."""

    settings: Settings
    database: Database
    stop: threading.Event  # the role is stopping
    tls: NodeTls


@dataclass
class Part:
    """A file of a download: its chunks are the download's first..first+len(entries)-1."""

    spec: dbjobs.JobSpec
    first: int
    key: protocol.FileKey
    check: ChunkCheck

    @property
    def chunks(self) -> range:
        """Its chunks' places in the download."""
        return range(self.first, self.first + len(self.check.entries))


P = TypeVar("P", bound=Part)


class Download(Generic[P]):
    """What every policy shares: the files, the picker over their chunks, the sources
    found lying, and the calls of `port.JobPort` that do not depend on the policy."""

    # The file whose holdings a worker asks for and refreshes; None: the catalog's say
    # is enough (each source holds its files whole).
    have_key: tuple[protocol.FileKey, int] | None = None

    def __init__(
        self, shared: Shared, pipeline: Pipeline, label: str, download_ids: list[int]
    ) -> None:
        self.download_ids = download_ids
        self.left_over: set[int] = set()  # downloads it gives back, to be run as jobs
        self.settings = shared.settings
        self.network_key = shared.settings.network_key
        self.database = shared.database
        self.stop = shared.stop  # the role is stopping: leave the download resumable
        self.tls = shared.tls  # how to reach each source: in clear or by pinned TLS
        self.pipeline = pipeline
        self.label = label
        self.lock = threading.Condition()
        self.halt = threading.Event()  # this download is ending, for any reason
        self.parts: list[P] = []
        self.owner: list[int] = []  # chunk -> its file's place in `parts`
        self.count = 0
        self.largest_chunk = 0
        self.picker = Picker(0)
        self.bad_sources: set[tuple[str, int]] = set()

    def run(self) -> None:
        """Run to the end: every file published, failed, given back, or left resumable."""
        raise NotImplementedError

    def add_part(self, part_type: type[P], spec: dbjobs.JobSpec, *args: object) -> P:
        """Append a file (a `part_type` made of spec, first, key, check and `args`)."""
        check = ChunkCheck([bytes.fromhex(h) for h in spec.chunk_hashes], spec.chunk_size)
        key = protocol.FileKey(spec.sha256, spec.chunk_size, spec.root)
        part = part_type(spec, self.count, key, check, *args)
        self.parts.append(part)
        self.owner.extend([len(self.parts) - 1] * len(check.entries))
        self.count += len(check.entries)
        self.largest_chunk = max(self.largest_chunk, min(spec.size, spec.chunk_size))
        return part

    # ------------------------------------------------------------ the JobPort of workers

    def chunk(self, g: int) -> Chunk:
        part = self.parts[self.owner[g]]
        index = g - part.first
        spec = part.spec
        size = protocol.chunk_length(spec.size, spec.chunk_size, index)
        return Chunk(part.key, index, size, index * spec.chunk_size, part.check)

    def halted(self) -> bool:
        return self.halt.is_set()

    def is_bad(self, source: tuple[str, int]) -> bool:
        return source in self.bad_sources

    def link(self, tls: bool, fingerprint: str | None) -> Link:
        return self.tls.link(tls, fingerprint)

    def pick(self, peer: str, *, duplicates: bool = True) -> tuple[int, bool] | None:
        with self.lock:
            return self.picker.pick(peer, duplicates=duplicates)

    def finished(self) -> bool:
        with self.lock:
            return self.picker.finished

    def wait_for_work(self, timeout: float) -> None:
        with self.lock:
            self.lock.wait(timeout)

    def peer_lost(self, peer: str, pending: list[int]) -> None:
        with self.lock:
            for g in pending:
                self.picker.release(peer, g)
            self.lock.notify_all()

    def peer_bits(self, peer: str, bits: bytes | None) -> None:
        with self.lock:
            self.picker.set_peer(peer, bits)
            self.lock.notify_all()

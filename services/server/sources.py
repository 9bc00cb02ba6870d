"""Where the bytes of each file this node offers are, for the chunk server: cached until
the catalog version moves, loaded whole for a share of up to FULL_LOAD_FILES files, read
per batch of requests otherwise. A request for bytes not here is a `Refusal`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from p2pshare.db import node as dbnode
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.db.values import ContentKey
from p2pshare.services import protocol
from p2pshare.services.protocol import FileKey
from p2pshare.services.server.frames import Batch
from p2pshare.services.settings import Settings

# Where each file's bytes are is cached until the catalog version moves (every change of
# what this node offers bumps it in the same transaction). The database's change counter
# says when to read the version; this often it is read regardless.
VERSION_CHECK_SECONDS = 5.0
# A node sharing up to this many files loads where all of them are in one read (at most
# every FULL_LOAD_SECONDS, as its catalog changes) rather than a read per file asked:
# ~10 MB at the most, and a peer fetching a folder of small files costs no reads at all.
FULL_LOAD_FILES = 20_000
FULL_LOAD_SECONDS = 2.0
MAX_CACHED_SOURCES = FULL_LOAD_FILES + 4096


class Refusal(Exception):
    """A well-formed request we answer with an error reply; the connection stays open."""


class SourceCache:
    """The byte sources of offered files, by offer; used from the server's event loop."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self._sources: dict[FileKey, list[dbserving.ByteSource]] = {}
        self._watch = database.watch()
        self._version: int | None = None
        self._version_read = 0.0
        # The cache holds every file this node offers: a key missing from it is not here.
        self._complete = False
        self._full_load_at = -FULL_LOAD_SECONDS

    def close(self) -> None:
        self._watch.close()

    def forget(self, key: FileKey) -> None:
        """Read this offer's sources again next time (its file failed to open or changed)."""
        self._sources.pop(key, None)

    async def look_up(self, requests: list[protocol.Request], batch: Batch) -> None:
        """Find where the bytes of every file the batch asks about are, in one read: the
        files not in the cache, and those a `have` asks of that a download in progress
        holds part of (its bits move between catalog versions)."""
        self._check_version()
        asked = [
            req for req in requests if isinstance(req, protocol.ChunkRequest | protocol.HaveRequest)
        ]
        missing = not self._complete and any(req.file not in self._sources for req in asked)
        if missing and time.monotonic() - self._full_load_at >= FULL_LOAD_SECONDS:
            self._full_load_at = time.monotonic()
            # In a thread: tens of milliseconds for thousands of files, which the loop
            # spends serving other connections meanwhile.
            version, everything = await asyncio.to_thread(self._load_everything)
            if everything is not None and version == self._version:  # nothing moved since
                self._sources = {FileKey(*key): found for key, found in everything.items()}
                self._complete = True
                batch.fresh.update(req.file for req in asked)  # read just now
                return
        for req in asked:
            cached = self._sources.get(req.file)
            if (cached is None and not self._complete) or (
                cached is not None and isinstance(req, protocol.HaveRequest) and _partial(cached)
            ):
                batch.fresh.add(req.file)
        if not batch.fresh:
            return
        with self.database.read() as s:
            found = dbserving.byte_sources_many(s, batch.fresh)
        self._forget_if_full(len(found))
        self._sources.update((FileKey(*key), sources) for key, sources in found.items())

    def _load_everything(
        self,
    ) -> tuple[int, dict[ContentKey, list[dbserving.ByteSource]] | None]:
        """Every source this node offers and the catalog version they belong to, in one
        read transaction (None when it shares more than FULL_LOAD_FILES files)."""
        with self.database.read() as s:
            return dbnode.catalog_version(s), dbserving.all_byte_sources(s, FULL_LOAD_FILES)

    def _forget_if_full(self, adding: int) -> None:
        if len(self._sources) + adding > MAX_CACHED_SOURCES:
            self._sources.clear()
            self._complete = False

    def _check_version(self) -> None:
        """Forget every cached source when the catalog version moved. Read only after a
        commit anywhere in the node (or every VERSION_CHECK_SECONDS): between commits,
        nothing this node offers can have changed."""
        now = time.monotonic()
        if not self._watch.changed() and now - self._version_read < VERSION_CHECK_SECONDS:
            return
        with self.database.read() as s:
            version = dbnode.catalog_version(s)
        self._version_read = now
        if version != self._version:
            self._sources.clear()
            self._complete = False
            self._version = version

    def _byte_sources(self, key: FileKey, *, fresh: bool = False) -> list[dbserving.ByteSource]:
        cached = self._sources.get(key)
        if cached is not None and not fresh:
            return cached
        with self.database.read() as s:
            sources = dbserving.byte_sources(s, key)
        self._forget_if_full(1)
        self._sources[key] = sources
        return sources

    def have(self, key: FileKey, batch: Batch) -> bytes:
        cached = self._sources.get(key)
        # A partial download's bits are read again unless this batch just did.
        stale = cached is None or (key not in batch.fresh and _partial(cached))
        sources = self._byte_sources(key, fresh=stale)
        if not sources:
            raise Refusal("this node does not have that file")
        count = protocol.chunk_count(sources[0].size, key.chunk_size)
        if any(src.have is None for src in sources):
            return protocol.encode_have(None, count)
        bits = bytearray(len(sources[0].have or b""))
        for src in sources:
            bits = bytearray(a | b for a, b in zip(bits, src.have or b"", strict=False))
        return protocol.encode_have(bytes(bits), count)

    def for_chunk(self, key: FileKey, index: int) -> dbserving.ByteSource:
        for fresh in (False, True):
            for src in self._byte_sources(key, fresh=fresh):
                count = protocol.chunk_count(src.size, key.chunk_size)
                if index >= count:
                    raise Refusal(f"the file has {count} chunks, there is no chunk {index}")
                if protocol.bitfield_has(src.have, index):
                    return src
        raise Refusal(f"this node does not have chunk {index} of that file")

    def path(self, src: dbserving.ByteSource) -> Path:
        folder = self.folder(src)
        return Path(src.path) if folder is None else folder / src.path

    def folder(self, src: dbserving.ByteSource) -> Path | None:
        """The folder a source is offered from (None for a download's temp file)."""
        if src.root is None:
            return None
        return self.settings.share_dir if src.root == "share" else self.settings.download_dir


def _partial(sources: list[dbserving.ByteSource]) -> bool:
    """Does a download in progress hold any of the file here (bits that move)?"""
    return any(src.have is not None for src in sources)

"""The TCP side of the server role: catalogs, manifests, holdings and chunk bytes.

asyncio, because a node must hold many idle or slow connections cheaply and
still serve a genuine peer at full speed. Chunk bytes leave with
`loop.sendfile`, which is `os.sendfile` underneath: Python never touches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from p2pshare.db import node as dbnode
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.db.values import ContentKey, Stamp
from p2pshare.services import protocol
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.protocol import FileKey
from p2pshare.services.protocol.handshake import ServerHandshake, Stage
from p2pshare.services.server.frames import FrameReader
from p2pshare.services.server.ratelimit import RateLimiter
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.server")

MAX_CONNECTIONS = 1024
# A client must say something soon after connecting, and finish a frame it started.
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
FRAME_TIMEOUT = 10.0
# A peer that reads nothing of a slice for this long is dropped.
STALL_TIMEOUT = 30.0
SEND_SLICE = 4 * 1024 * 1024
# Under TLS: bytes read per slice, and how much encrypted output may wait to be sent.
TLS_SLICE = 2 * 1024 * 1024
TLS_HIGH_WATER = 4 * 1024 * 1024
UPLOAD_FLUSH_SECONDS = 0.5
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


@dataclass
class ConnStats:
    peer: str
    opened: float = field(default_factory=time.monotonic)
    chunks: int = 0
    bytes: int = 0


class ChunkServer:
    def __init__(
        self, settings: Settings, database: Database, stop: asyncio.Event, tls: NodeTls
    ) -> None:
        self.settings = settings
        self.database = database
        self.stop = stop
        self.key = settings.network_key
        self.tls = tls
        self.limiter = RateLimiter(settings.upload_limit) if settings.upload_limit else None
        self.writers: set[asyncio.StreamWriter] = set()
        self.served: list[dbserving.ServedChunk] = []
        self._catalog: tuple[int, bytes] | None = None
        self._sources: dict[FileKey, list[dbserving.ByteSource]] = {}
        self._watch = database.watch()
        self._version: int | None = None
        self._version_read = 0.0
        # The cache holds every file this node offers: a key missing from it is not here.
        self._complete = False
        self._full_load_at = -FULL_LOAD_SECONDS

    # ------------------------------------------------------------ lifecycle

    async def run(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        server = await asyncio.start_server(self._handle, sock=listener, limit=protocol.MAX_FRAME)
        flusher = asyncio.create_task(self._flush_uploads_forever())
        try:
            await self.stop.wait()
        finally:
            server.close()
            for writer in list(self.writers):
                writer.close()
            await asyncio.sleep(0.1)
            flusher.cancel()
            await self._flush_uploads()
            self._watch.close()

    async def _flush_uploads_forever(self) -> None:
        while True:
            await asyncio.sleep(UPLOAD_FLUSH_SECONDS)
            try:
                await self._flush_uploads()
            except Exception:  # keep serving; the rows are retried next time
                log.exception("could not record uploads")

    async def _flush_uploads(self) -> None:
        if not self.served:
            return
        batch, self.served = self.served, []

        def write() -> None:
            with self.database.write() as s:
                dbserving.record_uploads(s, batch)

        try:
            await asyncio.to_thread(write)
        except BaseException:
            self.served[:0] = batch
            raise

    # ------------------------------------------------------------ connections

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername", ("?", 0))[0])
        if len(self.writers) >= MAX_CONNECTIONS:
            log.warning("refused connection from %s: %d connections open", peer, MAX_CONNECTIONS)
            writer.write(protocol.encode_error("server busy"))
            writer.close()
            return
        self.writers.add(writer)
        stats = ConnStats(peer)
        try:
            await self._session(reader, writer, stats)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer closed; nothing to answer
        except asyncio.CancelledError:
            # The server is stopping with this connection open (a peer's downloader keeps
            # an idle one for its next batch) and its TLS close did not finish in time:
            # ending quietly is all there is to do.
            pass
        except TimeoutError:
            log.info("closed idle or stalled connection from %s", peer)
        except protocol.ProtocolError as exc:
            log.warning("dropped connection from %s: %s", peer, exc)
            self._try_write(writer, protocol.encode_error(str(exc)))
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self.writers.discard(writer)
            writer.close()
            if stats.chunks:
                took = time.monotonic() - stats.opened
                log.info(
                    "served %d chunks (%d bytes) to %s in %.1f s",
                    stats.chunks,
                    stats.bytes,
                    peer,
                    took,
                )

    @staticmethod
    def _try_write(writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(data)

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: ConnStats
    ) -> None:
        shake = ServerHandshake(
            key=self.key,
            encrypt=self.tls.encrypt,
            nonce=secrets.token_hex(protocol.NONCE_HEX // 2),
        )
        writer.write(shake.welcome())
        if shake.stage is Stage.TLS:
            if not await self._start_tls(writer, stats):
                return
            shake.tls_done(self.tls.identity.fingerprint)
        frames = FrameReader(reader)
        timeout = HANDSHAKE_TIMEOUT
        while not self.stop.is_set():
            # Every request already received is one batch: one database read finds the
            # bytes of all of them, one open serves a file's chunks asked in a row.
            # asyncio.timeout inside, not wait_for: wait_for wraps each call in a new
            # task, which per request was a large share of the server's CPU.
            received = await frames.batch(timeout, FRAME_TIMEOUT)
            timeout = IDLE_TIMEOUT
            requests, bad = decode_batch(received)
            looked_up = False
            with Batch() as shared:
                for req in requests:
                    reply = shake.on_request(req)  # raises WrongNetworkKey
                    if reply is not None:  # the answer to a key proof
                        writer.write(reply)
                        continue
                    if not looked_up:
                        await self._look_up(requests, shared)
                        looked_up = True
                    try:
                        await self._dispatch(req, writer, stats, shared)
                    except Refusal as exc:
                        log.info("refused %s from %s: %s", type(req).__name__, stats.peer, exc)
                        writer.write(protocol.encode_error(str(exc)))
                    if writer.transport.get_write_buffer_size():
                        async with asyncio.timeout(STALL_TIMEOUT):
                            await writer.drain()
            if bad is not None:
                raise bad  # after answering the good requests before it, as they came

    async def _start_tls(self, writer: asyncio.StreamWriter, stats: ConnStats) -> bool:
        """The TLS handshake that must follow our welcome. False (logged, in one line) when
        the client does not speak TLS or gives up."""
        clear = writer.transport
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await writer.start_tls(self.tls.server_context)
        except ssl.SSLError as exc:
            log.warning(
                "refused a connection from %s that does not speak TLS: this node encrypts "
                "(P2P_ENCRYPT) (%s)",
                stats.peer,
                exc.reason or exc,
            )
            return False
        except AttributeError:
            # Python 3.11's StreamWriter.start_tls, when the client hangs up right after its
            # handshake, is handed no transport and fails on it; give the writer back the
            # connection it had, so closing the writer closes it.
            writer._transport = clear  # type: ignore[attr-defined]  # noqa: SLF001
            log.info("connection from %s closed during the TLS handshake", stats.peer)
            return False
        return True

    async def _dispatch(
        self, req: protocol.Request, writer: asyncio.StreamWriter, stats: ConnStats, batch: Batch
    ) -> None:
        if isinstance(req, protocol.ChunkRequest):
            await self._send_chunk(req, writer, stats, batch)
        elif isinstance(req, protocol.HaveRequest):
            writer.write(self._have(req.file, batch))
        elif isinstance(req, protocol.CatalogRequest):
            payload = await self._catalog_payload()
            writer.write(protocol.encode_ok(len=len(payload)))
            writer.write(payload)
        elif isinstance(req, protocol.ManifestRequest):
            payload = await asyncio.to_thread(self._manifests, req.files)
            writer.write(protocol.encode_ok(len=len(payload)))
            writer.write(payload)

    # ------------------------------------------------------------ answers

    async def _catalog_payload(self) -> bytes:
        def build() -> tuple[int, bytes]:
            with self.database.read() as s:
                version = dbnode.catalog_version(s)
                if self._catalog and self._catalog[0] == version:
                    return self._catalog
                offers = dbserving.offers(s)
            entries = [
                protocol.CatalogEntry(
                    o.name, FileKey(o.sha256, o.chunk_size, o.root), o.size, o.have
                )
                for o in offers
            ]
            return version, protocol.encode_catalog(entries, version)

        self._catalog = await asyncio.to_thread(build)
        return self._catalog[1]

    def _manifests(self, keys: tuple[FileKey, ...]) -> bytes:
        with self.database.read() as s:
            found = dbserving.chunk_hashes(s, keys)
        return protocol.encode_manifests({FileKey(*k): v for k, v in found.items()})

    async def _look_up(self, requests: list[protocol.Request], batch: Batch) -> None:
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

    def _have(self, key: FileKey, batch: Batch) -> bytes:
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

    def _source_for_chunk(self, key: FileKey, index: int) -> dbserving.ByteSource:
        for fresh in (False, True):
            for src in self._byte_sources(key, fresh=fresh):
                count = protocol.chunk_count(src.size, key.chunk_size)
                if index >= count:
                    raise Refusal(f"the file has {count} chunks, there is no chunk {index}")
                if protocol.bitfield_has(src.have, index):
                    return src
        raise Refusal(f"this node does not have chunk {index} of that file")

    def _path(self, src: dbserving.ByteSource) -> Path:
        if src.root is None:
            return Path(src.path)
        base = self.settings.share_dir if src.root == "share" else self.settings.download_dir
        return base / src.path

    async def _send_chunk(
        self,
        req: protocol.ChunkRequest,
        writer: asyncio.StreamWriter,
        stats: ConnStats,
        batch: Batch,
    ) -> None:
        key = req.file
        src = self._source_for_chunk(key, req.index)
        chunk_len = protocol.chunk_length(src.size, key.chunk_size, req.index)
        length = req.length or chunk_len - req.offset
        if req.offset + length > chunk_len or length <= 0:
            raise Refusal(f"bytes {req.offset}+{length} lie outside chunk {req.index}")
        path = self._path(src)
        try:
            fh = batch.open(path)
        except OSError as exc:
            self._sources.pop(key, None)
            raise Refusal(f"cannot read the file: {exc.strerror}") from None
        started = time.monotonic()
        # The open file must be the very version indexed: not rewritten, and not swapped
        # for another file or a symlink leading outside the folder. Checked each request,
        # also when the batch opened it for the chunk before.
        if src.stamp is not None and Stamp.of(os.fstat(fh.fileno())) != src.stamp:
            self._sources.pop(key, None)
            batch.close()
            raise Refusal("the file changed since it was indexed")
        writer.write(
            protocol.encode_chunk_header(protocol.ChunkHeader(req.index, req.offset, length))
        )
        await self._send_bytes(writer, fh, req.index * key.chunk_size + req.offset, length)
        stats.chunks += 1
        stats.bytes += length
        self.served.append(
            dbserving.ServedChunk(
                time.time(),
                stats.peer,
                key.sha256,
                src.name,
                req.index,
                req.offset,
                length,
                time.monotonic() - started,
            )
        )

    async def _send_bytes(
        self, writer: asyncio.StreamWriter, fh: BinaryIO, offset: int, length: int
    ) -> None:
        if self.tls.encrypt:
            await self._send_encrypted(writer, fh, offset, length)
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

    async def _send_encrypted(
        self, writer: asyncio.StreamWriter, fh: BinaryIO, offset: int, length: int
    ) -> None:
        """Under TLS the kernel cannot send the file for us (no kernel TLS here): each slice
        is read once, into a new bytes object (the TLS transport may keep it until it has
        encrypted it, so a reused buffer could change under it), and written once,
        encrypted by OpenSSL in records of the largest size TLS allows (16 KiB)."""
        slice_size = self.limiter.slice_size if self.limiter else TLS_SLICE
        fd = fh.fileno()
        sent = 0
        while sent < length:
            n = min(slice_size, length - sent)
            if self.limiter:
                await self.limiter.acquire(n)
            # Inline, as sendfile reads inside the kernel call on the clear path: a thread
            # hop per slice was a third of the server's CPU under TLS.
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

    def open(self, path: Path) -> BinaryIO:
        """The file at path, opened for reading (or still open). Raises OSError."""
        if self._fh is not None and path == self._path:
            return self._fh
        self.close()
        self._fh, self._path = open(path, "rb"), path  # noqa: SIM115 - closed by close()
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._path = None


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


def _partial(sources: list[dbserving.ByteSource]) -> bool:
    """Does a download in progress hold any of the file here (bits that move)?"""
    return any(src.have is not None for src in sources)

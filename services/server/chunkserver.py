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
from typing import NamedTuple, cast

from sqlalchemy import Connection

from p2pshare.db import catalog_log
from p2pshare.db import index as dbindex
from p2pshare.db import node as dbnode
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.db.values import Stamp
from p2pshare.services import protocol
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.protocol import FileKey
from p2pshare.services.protocol.catalog import FlatEntry
from p2pshare.services.protocol.handshake import ServerHandshake, Stage
from p2pshare.services.server.frames import Batch, FrameReader, decode_batch
from p2pshare.services.server.ratelimit import RateLimiter
from p2pshare.services.server.sender import STALL_TIMEOUT, ByteSender
from p2pshare.services.server.served import ServedDurably
from p2pshare.services.server.slots import ConnectionSlots
from p2pshare.services.server.sources import Refusal, SourceCache
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.server")

# A whole catalog (protocol 2.0 peers) must inflate to at most MAX_CATALOG_BYTES: about
# 300,000 entries of typical names; beyond this a peer that old is told to upgrade.
LEGACY_CATALOG_ENTRIES = 250_000
# Before a client has proven the network key (or, without a key, asked its first
# request) it holds a slot for at most this long in all, TLS handshake included: an honest
# client takes milliseconds, so a slot held longer is a host holding slots for nothing.
PREAUTH_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
FRAME_TIMEOUT = 10.0
UPLOAD_FLUSH_SECONDS = 0.5


class PageSent(NamedTuple):
    """Where a page of catalog changes left off: what the next one goes on from."""

    epoch: str
    end: int
    reset: bool
    more: bool


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
        self.old_key = settings.network_secret
        self.tls = tls
        limiter = RateLimiter(settings.upload_limit) if settings.upload_limit else None
        self.sender = ByteSender(encrypt=tls.encrypt, limiter=limiter)
        self.writers: set[asyncio.StreamWriter] = set()
        self.slots = ConnectionSlots()
        self.served: list[dbserving.ServedChunk] = []
        self._catalog: tuple[int, bytes] | None = None
        self.sources = SourceCache(database, settings)
        self.served_durably = ServedDurably(database)

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
            self.sources.close()

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
        refused = self.slots.take(peer)
        if refused is not None:
            self._refuse(writer, peer, refused)
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
        except ssl.SSLError as exc:
            # Bytes that are not TLS inside the TLS stream (a broken peer, a meddling
            # wire, or data after the peer's close_notify): network input, one line.
            log.info("TLS connection from %s ended: %s", peer, exc.reason or exc)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self.slots.give_back(peer)
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

    def _refuse(self, writer: asyncio.StreamWriter, peer: str, reason: str) -> None:
        """Close a connection there is no slot for, saying why; logged once a while per
        host, as a host at its limit may keep trying."""
        count = self.slots.refusal_to_log(peer, time.monotonic())
        if count is not None:
            log.warning("refused %d connection(s) from %s: %s", count, peer, reason)
        self._try_write(writer, protocol.encode_error(reason))
        writer.close()

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
            old_key=self.old_key,
        )
        loop = asyncio.get_running_loop()
        preauth_ends = loop.time() + PREAUTH_TIMEOUT
        writer.write(shake.welcome())
        if shake.stage is Stage.TLS:
            if not await self._start_tls(writer, stats, preauth_ends):
                return
            shake.tls_done(self.tls.identity.fingerprint)
        frames = FrameReader(reader)
        first = True
        while not self.stop.is_set():
            # Every request already received is one batch: one database read finds the
            # bytes of all of them, one open serves a file's chunks asked in a row.
            # asyncio.timeout inside, not wait_for: wait_for wraps each call in a new
            # task, a cost every request would pay.
            if first:  # the first request (or key proof) within what is left of the limit
                left = preauth_ends - loop.time()
                received = await frames.batch(left, min(FRAME_TIMEOUT, left))
                first = False
            else:
                received = await frames.batch(IDLE_TIMEOUT, FRAME_TIMEOUT)
            requests, bad = decode_batch(received)
            looked_up = False
            with Batch() as shared:
                for req in requests:
                    reply = shake.on_request(req)  # raises WrongNetworkKey
                    if reply is not None:  # the answer to a key proof
                        writer.write(reply)
                        continue
                    if not looked_up:
                        await self.sources.look_up(requests, shared)
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

    async def _start_tls(
        self, writer: asyncio.StreamWriter, stats: ConnStats, deadline: float
    ) -> bool:
        """The TLS handshake that must follow our welcome, done by `deadline` (loop time).
        False (logged, in one line) when the client does not speak TLS or gives up."""
        clear = writer.transport
        try:
            async with asyncio.timeout_at(deadline):
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
            writer.write(self.sources.have(req.file, batch))
        elif isinstance(req, protocol.ChangesRequest):
            await self._send_changes(req, writer)
        elif isinstance(req, protocol.CatalogRequest):
            payload = await self._catalog_payload()
            writer.write(protocol.encode_ok(len=len(payload)))
            writer.write(payload)
        elif isinstance(req, protocol.ManifestRequest):
            payload = await asyncio.to_thread(self._manifests, req.files)
            writer.write(protocol.encode_ok(len=len(payload)))
            writer.write(payload)

    # ------------------------------------------------------------ answers

    async def _send_changes(
        self, req: protocol.ChangesRequest, writer: asyncio.StreamWriter
    ) -> None:
        """The catalog's changes since what the peer holds, page after page on the
        connection; the peer's reading paces it (drain). The next page is read and encoded
        while the last one drains, so the link never waits for the database, and at most
        two pages are in memory here, whatever the share's size."""
        page, data = await asyncio.to_thread(self._first_page, req)
        while True:
            writer.write(data)
            upcoming = asyncio.ensure_future(self._after(page)) if page.more else None
            try:
                async with asyncio.timeout(STALL_TIMEOUT):  # a peer that stops reading
                    await writer.drain()
            except BaseException:
                if upcoming is not None:
                    upcoming.cancel()
                raise
            if upcoming is None:
                return
            page, data = await upcoming

    async def _after(self, last: PageSent) -> tuple[PageSent, bytes]:
        return await asyncio.to_thread(self._next_page, last)

    def _first_page(self, req: protocol.ChangesRequest) -> tuple[PageSent, bytes]:
        with self.database.read() as conn:
            log_now = catalog_log.state(conn)
            # Changes answer only a peer that holds this very log up to a point it still
            # covers; any other gets the whole catalog (a reset).
            reset = req.epoch != log_now.epoch or not log_now.floor <= req.since <= log_now.version
            page = self._page(conn, log_now, 0 if reset else req.since, reset)
        self.served_durably(page[0].end)
        return page

    def _next_page(self, last: PageSent) -> tuple[PageSent, bytes]:
        with self.database.read() as conn:
            log_now = catalog_log.state(conn)
            if log_now.epoch != last.epoch:
                raise Refusal("this node's catalog log was replaced; ask again")
            page = self._page(conn, log_now, last.end, last.reset)
        self.served_durably(page[0].end)
        return page

    @staticmethod
    def _page(
        conn: Connection, log_now: catalog_log.LogState, after: int, reset: bool
    ) -> tuple[PageSent, bytes]:
        # Whole, there is nothing to remove: tombstones are left out.
        rows = catalog_log.page_rows(conn, after, protocol.PAGE_ENTRIES, removed=not reset)
        more = len(rows) == protocol.PAGE_ENTRIES
        end = rows[-1][0] if more else max(after, log_now.version)
        # An entry still offered has its content's row: only a tombstone's fields are NULL.
        entries = cast(
            list[FlatEntry],
            [
                (name, sha, size, cs, root, have)
                for _, removed, name, sha, size, cs, root, have in rows
                if not removed
            ],
        )
        gone = [(name, sha) for _, removed, name, sha, *_ in rows if removed]
        sent = PageSent(log_now.epoch, end, reset, more)
        return sent, protocol.encode_page_rows(
            log_now.epoch, after, end, reset, more, entries, gone
        )

    async def _catalog_payload(self) -> bytes:
        """The whole catalog in one message, for peers of protocol 2.0 (before catalogs
        by change)."""

        def build() -> tuple[int, bytes]:
            with self.database.read() as s:
                version = dbnode.catalog_version(s)
                if self._catalog and self._catalog[0] == version:
                    return self._catalog
                if dbindex.local_file_count(s) > LEGACY_CATALOG_ENTRIES:
                    raise Refusal(
                        f"this node offers more than {LEGACY_CATALOG_ENTRIES} files, more than "
                        "a whole catalog can hold; upgrade p2pshare to fetch it by changes"
                    )
                offers = dbserving.offers(s)
            entries = [
                protocol.CatalogEntry(
                    o.name, FileKey(o.sha256, o.chunk_size, o.root), o.size, o.have
                )
                for o in offers
            ]
            self.served_durably(version)
            return version, protocol.encode_catalog(entries, version)

        self._catalog = await asyncio.to_thread(build)
        return self._catalog[1]

    def _manifests(self, keys: tuple[FileKey, ...]) -> bytes:
        with self.database.read() as s:
            found = dbserving.chunk_hashes(s, keys)
        return protocol.encode_manifests({FileKey(*k): v for k, v in found.items()})

    async def _send_chunk(
        self,
        req: protocol.ChunkRequest,
        writer: asyncio.StreamWriter,
        stats: ConnStats,
        batch: Batch,
    ) -> None:
        key = req.file
        src = self.sources.for_chunk(key, req.index)
        chunk_len = protocol.chunk_length(src.size, key.chunk_size, req.index)
        length = req.length or chunk_len - req.offset
        if req.offset + length > chunk_len or length <= 0:
            raise Refusal(f"bytes {req.offset}+{length} lie outside chunk {req.index}")
        path = self.sources.path(src)
        try:
            fh = batch.open(path, within=self.sources.folder(src))
        except OSError as exc:
            self.sources.forget(key)
            raise Refusal(f"cannot read the file: {exc.strerror}") from None
        started = time.monotonic()
        # The open file must be the very version indexed: not rewritten, and not swapped
        # for another file or a symlink leading outside the folder. Checked each request,
        # also when the batch opened it for the chunk before.
        if src.stamp is not None and Stamp.of(os.fstat(fh.fileno())) != src.stamp:
            self.sources.forget(key)
            batch.close()
            raise Refusal("the file changed since it was indexed")
        writer.write(
            protocol.encode_chunk_header(protocol.ChunkHeader(req.index, req.offset, length))
        )
        await self.sender.send(writer, fh, req.index * key.chunk_size + req.offset, length)
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

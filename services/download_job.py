"""One download: chunks from every peer that holds any, verified, durable, then published.

Threads: one `PeerWorker` per source peer (pipelined requests, receive with
`recv_into` into a reused buffer, hash, `pwrite`), and the job's own loop,
which every FLUSH_SECONDS fsyncs the temp file once and then records the
newly verified chunks in one transaction. A chunk is recorded as held only
after the fsync that made it durable, so a restart after SIGKILL or a power
cut trusts exactly what is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from p2pshare.db import downloads as dbdl
from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database
from p2pshare.db.index import HashedFile
from p2pshare.services import protocol
from p2pshare.services.peerclient import PeerClient
from p2pshare.services.picker import Picker
from p2pshare.services.publish import PublishError, publish, safe_destination
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.download")

FLUSH_SECONDS = 0.5
SOURCE_REFRESH_SECONDS = 2.0
HAVE_REFRESH_SECONDS = 2.0
# Requests in flight per peer: enough bytes to keep a fast link busy while the
# previous chunk is hashed and written.
PIPELINE_BYTES = 8 * 1024 * 1024
MIN_PIPELINE = 2
# ...but not so many small chunks that one peer takes the whole file while others wait.
MAX_PIPELINE = 16
MAX_SOURCES = 16
CONNECTIONS_PER_SOURCE = 2
RECV_BLOCK = 4 * 1024 * 1024
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0
# Announce new chunks (reshare) at most this often.
CATALOG_BUMP_SECONDS = 1.0


class BadChunk(Exception):
    """A peer sent bytes that do not match the chunk's SHA-256."""


class JobFailed(Exception):
    """The download cannot finish; the message is the reason shown to the user."""


@dataclass
class Tally:
    chunks: int = 0
    bytes: int = 0
    bad_chunks: int = 0


@dataclass
class SourceState:
    source: dbdl.Source
    workers: list[PeerWorker] = field(default_factory=list)

    def alive(self) -> list[PeerWorker]:
        self.workers = [w for w in self.workers if w.is_alive()]
        return self.workers

    retry_at: float = 0.0
    backoff: float = RETRY_MIN_SECONDS
    last_error: str = ""


class DownloadJob:
    def __init__(
        self,
        spec: dbdl.JobSpec,
        settings: Settings,
        database: Database,
        stop: threading.Event,
        wait_timeout: float,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.database = database
        self.stop = stop  # the role is stopping: leave the download resumable
        self.halt = threading.Event()  # this job is ending, for any reason
        self.wait_timeout = wait_timeout
        self.key = protocol.FileKey(spec.sha256, spec.chunk_size)
        self.count = protocol.chunk_count(spec.size, spec.chunk_size)
        self.lock = threading.Condition()
        have = spec.have if len(spec.have) == (self.count + 7) // 8 else b""
        self.picker = Picker(
            self.count, protocol.bitfield_indices(have, self.count) if have else []
        )
        self.durable = bytearray(have) or protocol.bitfield_empty(self.count)
        self.verified: list[int] = []  # since the last flush, not yet fsynced
        self.tallies: dict[tuple[str, int], Tally] = {}
        self.new_bad: list[tuple[str, int]] = []
        self.bad_sources: set[tuple[str, int]] = set()
        self.received = 0
        # Chunk -> blocks being written right now, outside the lock; and chunks whose
        # verified endgame copy is being written whole (no other copy may write then).
        self.writing: dict[int, int] = {}
        self.sealed: set[int] = set()
        self.sources: dict[tuple[str, int], SourceState] = {}
        self.temp = settings.temp_dir / f"{spec.download_id}-{spec.sha256[:16]}.part"
        self.fd = -1
        self.waiting_since: float | None = None
        self.prefix = hashlib.sha256()
        self.prefix_upto = 0  # chunks folded into the whole-file hash
        self.prefix_stop = threading.Event()
        self.prefix_thread: threading.Thread | None = None

    # ------------------------------------------------------------ entry

    def run(self) -> None:
        """Run to the end: done, failed, cancelled, or left resumable when the role stops."""
        spec = self.spec
        try:
            if self._already_published():
                return
            self._open_temp()
            log.info(
                "download %d: %s (%d bytes, %d chunks, %d already here)",
                spec.download_id,
                spec.name,
                spec.size,
                self.count,
                self.count - self.picker.remaining,
            )
            self.prefix_thread = threading.Thread(
                target=self._prefix_hash_loop, name=f"hash-{spec.download_id}", daemon=True
            )
            self.prefix_thread.start()
            if not self._transfer():
                return  # stopped or cancelled
            self._finish()
        except JobFailed as exc:
            self._end("failed", str(exc))
        except Exception as exc:
            log.exception("download %d crashed", spec.download_id)
            self._end("failed", f"internal error: {exc}")
        finally:
            self._halt_workers()
            self._stop_prefix_hasher()
            if self.fd >= 0:
                os.close(self.fd)

    # ------------------------------------------------------------ temp file

    def _open_temp(self) -> None:
        if len(self.spec.chunk_hashes) != self.count:
            raise JobFailed("the chunk hashes of this file are not known here")
        self.settings.temp_dir.mkdir(parents=True, exist_ok=True)
        fresh = not self.temp.exists() or self.temp.stat().st_size != self.spec.size
        self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o600)
        if fresh and self.picker.remaining != self.count:
            # The temp file is gone or wrong: nothing recorded can be trusted.
            log.warning(
                "download %d: temp file missing or wrong size; starting over", self.spec.download_id
            )
            self.picker = Picker(self.count)
            self.durable = protocol.bitfield_empty(self.count)
        try:
            os.ftruncate(self.fd, self.spec.size)
            if self.spec.size:
                os.posix_fallocate(self.fd, 0, self.spec.size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise JobFailed(
                    f"not enough disk space for {self.spec.size} bytes in {self.settings.temp_dir}"
                ) from None
            raise
        with self.database.write() as s:
            dbdl.start_job(s, self.spec.download_id, str(self.temp), now=time.time())

    # ------------------------------------------------------------ main loop

    def _transfer(self) -> bool:
        """Fetch until every chunk is durable. False when stopped or cancelled."""
        next_refresh = 0.0
        last_bump = 0.0
        while True:
            now = time.time()
            if now >= next_refresh:
                self._refresh_sources(now)
                next_refresh = now + SOURCE_REFRESH_SECONDS
            with self.lock:
                self.lock.wait_for(
                    lambda: self.picker.finished or self.stop.is_set(), FLUSH_SECONDS
                )
            status, grew = self._flush(now)
            if status == "cancelled" or status not in dbdl.UNFINISHED:
                log.info("download %d cancelled", self.spec.download_id)
                self._discard_temp()
                return False
            if grew and time.time() - last_bump >= CATALOG_BUMP_SECONDS:
                with self.database.write() as s:
                    dbnode.bump_catalog_version(s, now=time.time())
                last_bump = time.time()
            if self.stop.is_set():
                return False
            if self.picker.finished and not self.verified:
                return True

    def _state(self, now: float) -> tuple[str, str | None]:
        missing = self.picker.unavailable()
        if not missing:
            self.waiting_since = None
            return "active", None
        if self.waiting_since is None:
            self.waiting_since = now
        if not self.sources:
            reason = "no online peer has this file"
        else:
            listed = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            reason = (
                f"no online peer holds chunk{'s' if len(missing) > 1 else ''} {listed} "
                f"({len(missing)} of {self.count})"
            )
        if now - self.waiting_since > self.wait_timeout:
            raise JobFailed(f"{reason} for {self.wait_timeout:.0f} s")
        return ("waiting" if self.picker.in_flight() == 0 else "active"), reason

    def _flush(self, now: float) -> tuple[str, bool]:
        """fsync what was verified, then record it. Returns (status in the db, grew)."""
        with self.lock:
            batch, self.verified = self.verified, []
            tallies, self.tallies = self.tallies, {}
            bad, self.new_bad = self.new_bad, []
            received, self.received = self.received, 0
        if batch:
            os.fdatasync(self.fd)  # one fsync per batch, never per chunk
            for i in batch:
                protocol.bitfield_set(self.durable, i)
        state, reason = self._state(now)
        done_bytes = sum(
            protocol.chunk_length(self.spec.size, self.spec.chunk_size, i)
            for i in protocol.bitfield_indices(bytes(self.durable), self.count)
        )
        progress = dbdl.Progress(
            have=bytes(self.durable),
            bytes_done=done_bytes,
            new_bytes_received=received,
            new_bad_chunks=sum(t.bad_chunks for t in tallies.values()),
            tallies=[
                dbdl.SourceTally(a, p, self._username(a, p), t.chunks, t.bytes, t.bad_chunks)
                for (a, p), t in tallies.items()
            ],
            new_bad_peers=bad,
            status=state,
            reason=reason,
        )
        with self.database.write() as s:
            status = dbdl.record_progress(s, self.spec.download_id, progress, now=now)
        return status, bool(batch)

    def _username(self, address: str, port: int) -> str:
        st = self.sources.get((address, port))
        return st.source.username if st else ""

    def _refresh_sources(self, now: float) -> None:
        with self.database.read() as s:
            listed = dbdl.sources_for(s, self.spec.file_id)
        gone = set(self.sources) - {(src.address, src.tcp_port) for src in listed}
        for key in gone:  # expired peers: what only they held is unavailable now
            st = self.sources[key]
            if not st.alive():
                del self.sources[key]
                with self.lock:
                    self.picker.drop_peer(self._peer_id(key))
        for src in listed:
            key = (src.address, src.tcp_port)
            if key in self.bad_sources:
                continue
            st = self.sources.get(key)
            if st is None:
                if len(self.sources) >= MAX_SOURCES:
                    continue
                st = self.sources[key] = SourceState(src)
                with self.lock:
                    self.picker.set_peer(self._peer_id(key), src.bitfield)
            st.source = src
            # Two connections to a peer let one receive while the other hashes and
            # writes: the heavy calls release the GIL, so they run on two cores.
            wanted = CONNECTIONS_PER_SOURCE if len(listed) <= 2 else 1
            if len(st.alive()) < wanted and now >= st.retry_at:
                for _ in range(wanted - len(st.workers)):
                    worker = PeerWorker(self, st)
                    st.workers.append(worker)
                    worker.start()

    @staticmethod
    def _peer_id(key: tuple[str, int]) -> str:
        return f"{key[0]}:{key[1]}"

    # ------------------------------------------------------------ called by workers

    def pick(self, peer: str) -> tuple[int, bool] | None:
        with self.lock:
            return self.picker.pick(peer)

    def wait_for_work(self, timeout: float) -> None:
        with self.lock:
            self.lock.wait(timeout)

    def write_block(self, index: int, data: memoryview, offset: int) -> bool:
        """Write part of a chunk as it arrives. False when another peer's verified copy of
        the chunk is being written or is done: then this copy must not touch the file."""
        with self.lock:
            if self.halt.is_set() or index in self.sealed or self.picker.is_done(index):
                return False
            self.writing[index] = self.writing.get(index, 0) + 1
        try:
            os.pwrite(self.fd, data, offset)  # outside the lock: peers write in parallel
        finally:
            with self.lock:
                left = self.writing.pop(index) - 1
                if left:
                    self.writing[index] = left
                else:
                    self.lock.notify_all()
        return True

    def chunk_verified(
        self,
        peer: str,
        key: tuple[str, int],
        index: int,
        size: int,
        *,
        on_disk: bool,
        whole: memoryview | None = None,
    ) -> None:
        """A chunk matched its hash. `on_disk`: every block of it was written as it came;
        `whole`: its bytes, held back to be written now (an endgame copy)."""
        with self.lock:
            self.received += size
            if self.halt.is_set():
                return
            if whole is not None and not self.picker.is_done(index) and index not in self.sealed:
                # Let blocks of another copy in flight land first, then write ours over them.
                self.sealed.add(index)
                self.lock.wait_for(lambda: index not in self.writing)
                os.pwrite(self.fd, whole, index * self.spec.chunk_size)
                self.sealed.discard(index)
                on_disk = True
            if on_disk and self.picker.complete(peer, index):
                self.verified.append(index)
                tally = self.tallies.setdefault(key, Tally())
                tally.chunks += 1
                tally.bytes += size
            else:
                self.picker.release(peer, index)  # another copy won, or is being written
            self.lock.notify_all()

    def chunk_bad(self, peer: str, key: tuple[str, int], index: int, size: int) -> None:
        with self.lock:
            self.received += size
            self.picker.release(peer, index)
            self.picker.drop_peer(peer)
            self.tallies.setdefault(key, Tally()).bad_chunks += 1
            self.new_bad.append(key)
            self.bad_sources.add(key)
            self.lock.notify_all()
        log.warning(
            "download %d: chunk %d from %s failed verification; peer marked bad for this file",
            self.spec.download_id,
            index,
            peer,
        )

    def peer_lost(self, peer: str, pending: list[int]) -> None:
        with self.lock:
            for index in pending:
                self.picker.release(peer, index)
            self.lock.notify_all()

    def peer_bits(self, peer: str, bits: bytes | None) -> None:
        with self.lock:
            self.picker.set_peer(peer, bits)
            self.lock.notify_all()

    # ------------------------------------------------------------ the end

    def _prefix_hash_loop(self) -> None:
        """Fold verified chunks at the front into the whole-file hash as they arrive, in
        a thread of its own, so the check after the last chunk has little left to read."""
        try:
            while not self.prefix_stop.is_set():
                with self.lock:
                    self.lock.wait_for(
                        lambda: self.prefix_stop.is_set() or self._prefix_ready(), 0.5
                    )
                self._advance_prefix_hash()
        except (OSError, JobFailed):
            pass  # _finish hashes again from where this stopped, and reports

    def _prefix_ready(self) -> bool:
        return self.prefix_upto < self.count and self.picker.is_done(self.prefix_upto)

    def _advance_prefix_hash(self) -> None:
        """Hash verified chunks from prefix_upto on, up to the first one not here yet."""
        buf = bytearray(min(RECV_BLOCK, max(self.spec.chunk_size, 1)))
        view = memoryview(buf)
        while self._prefix_ready() and not self.prefix_stop.is_set():
            i = self.prefix_upto
            offset = i * self.spec.chunk_size
            left = protocol.chunk_length(self.spec.size, self.spec.chunk_size, i)
            part = self.prefix.copy()  # committed only once the whole chunk is in
            while left:
                got = os.preadv(self.fd, [view[: min(len(buf), left)]], offset)
                if got <= 0:
                    raise JobFailed("the temp file is shorter than it should be")
                part.update(view[:got])
                offset += got
                left -= got
            self.prefix = part
            self.prefix_upto += 1

    def _finish(self) -> None:
        self._halt_workers()
        self._stop_prefix_hasher()
        self._advance_prefix_hash()
        if self.prefix_upto != self.count:
            raise JobFailed("the temp file lost verified chunks")
        if self.prefix.hexdigest() != self.spec.sha256:
            self._discard_temp()
            raise JobFailed(
                "the finished file does not match its SHA-256; the chunk list "
                "peers gave disagrees with the file's hash"
            )
        os.fsync(self.fd)

        def remember(path: Path) -> None:
            with self.database.write() as s:
                dbdl.set_saved_as(s, self.spec.download_id, self._relative(path))

        try:
            dest = safe_destination(self.settings.download_dir, self.spec.name)
            final = publish(self.temp, dest, remember)
        except PublishError as exc:
            self._discard_temp()
            raise JobFailed(str(exc)) from None
        self._record_done(final)

    def _record_done(self, final: Path) -> None:
        st = final.stat()  # after the temp name is gone: unlinking it moves ctime
        hashed = HashedFile(
            st.st_size,
            st.st_mtime_ns,
            self.spec.sha256,
            self.spec.chunk_size,
            self.spec.chunk_hashes,
            [
                protocol.chunk_length(self.spec.size, self.spec.chunk_size, i)
                for i in range(self.count)
            ],
            ctime_ns=st.st_ctime_ns,
            inode=st.st_ino,
        )
        with self.database.write() as s:
            dbdl.finish_download(
                s,
                self.spec.download_id,
                status="done",
                reason=None,
                now=time.time(),
                published=(self._relative(final), hashed),
            )
            dbnode.bump_catalog_version(s, now=time.time())
        log.info(
            "download %d done: %s (%d bytes, sha256 %s)",
            self.spec.download_id,
            final,
            self.spec.size,
            self.spec.sha256[:12],
        )

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.settings.download_dir.resolve()).as_posix()

    def _already_published(self) -> bool:
        """A crash between publishing and recording it: finish the record, fetch nothing."""
        saved = self.spec.saved_as
        if not saved:
            return False
        path = self.settings.download_dir.resolve() / saved
        if self.temp.exists() and path.exists() and os.path.samefile(self.temp, path):
            self.temp.unlink()
        elif self.temp.exists() or not path.exists():
            return False
        if path.stat().st_size != self.spec.size or _sha256_of(path) != self.spec.sha256:
            return False  # that name now holds something else; publish anew
        self._record_done(path)
        return True

    def _discard_temp(self) -> None:
        self._halt_workers()
        self.temp.unlink(missing_ok=True)

    def _end(self, status: str, reason: str) -> None:
        log.warning("download %d %s: %s", self.spec.download_id, status, reason)
        self._discard_temp()
        with self.database.write() as s:
            dbdl.finish_download(
                s, self.spec.download_id, status=status, reason=reason, now=time.time()
            )

    def _stop_prefix_hasher(self) -> None:
        self.prefix_stop.set()
        with self.lock:
            self.lock.notify_all()
        if self.prefix_thread is not None:
            self.prefix_thread.join()
            self.prefix_thread = None
        self.prefix_stop.clear()

    def _halt_workers(self) -> None:
        """Stop the peer workers; when this returns, none writes to the temp file."""
        with self.lock:
            self.halt.set()  # under the lock: no block starts writing after this
            self.lock.notify_all()
        workers = [w for st in self.sources.values() for w in st.workers]
        for w in workers:
            w.interrupt()
        for w in workers:
            w.join(timeout=2.0)
        with self.lock:
            self.lock.wait_for(lambda: not self.writing)


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class PeerWorker(threading.Thread):
    """Fetches chunks of one file from one peer over one pipelined connection."""

    def __init__(self, job: DownloadJob, state: SourceState) -> None:
        src = state.source
        super().__init__(name=f"peer-{src.address}:{src.tcp_port}", daemon=True)
        self.job = job
        self.state = state
        self.key = (src.address, src.tcp_port)
        self.peer = DownloadJob._peer_id(self.key)
        self.client: PeerClient | None = None
        self.pending: deque[tuple[int, bool]] = deque()
        spec = job.spec
        wanted = -(-PIPELINE_BYTES // max(spec.chunk_size, 1))
        self.depth = min(MAX_PIPELINE, max(MIN_PIPELINE, wanted))
        self.block = bytearray(min(RECV_BLOCK, max(spec.chunk_size, 1)))

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
        with PeerClient(*self.key, key=job.settings.network_key) as client:
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
        while len(self.pending) < self.depth:
            pick = self.job.pick(self.peer)
            if pick is None:
                return
            client.send(protocol.ChunkRequest(self.job.key, pick[0], 0, 0))
            self.pending.append(pick)

    def _receive(self, client: PeerClient, index: int, duplicate: bool) -> None:
        job, spec = self.job, self.job.spec
        size = protocol.chunk_length(spec.size, spec.chunk_size, index)
        client.read_chunk_header(protocol.ChunkRequest(job.key, index, 0, 0), size)
        digest = hashlib.sha256()
        offset = index * spec.chunk_size
        # An endgame copy is held back whole and written only once verified, so it can
        # never mix with the bytes the first peer is writing into the same place.
        whole = memoryview(bytearray(size)) if duplicate else None
        view = memoryview(self.block)
        on_disk = whole is None
        got = 0
        while got < size:
            n = min(len(self.block), size - got)
            part = whole[got : got + n] if whole is not None else view[:n]
            client.read_exact_into(part)
            digest.update(part)
            if on_disk and not job.write_block(index, part, offset + got):
                on_disk = False  # another copy won; read the rest, write nothing
            got += n
        if digest.hexdigest() != spec.chunk_hashes[index]:
            job.chunk_bad(self.peer, self.key, index, size)
            raise BadChunk(f"chunk {index}")
        job.chunk_verified(self.peer, self.key, index, size, on_disk=on_disk, whole=whole)

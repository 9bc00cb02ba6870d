"""One download: chunks from every peer that holds any, verified, durable, then published.

Threads: one `PeerWorker` per connection to a source (worker.py: pipelined
requests, each chunk received into one buffer, verified against the chained manifest
and written from there, one write at a time through the job's `BlockWriter`), and the
job's own loop here, which picks sources, decides when
the download waits or fails, and every FLUSH_SECONDS makes the verified chunks
durable (progress.py). When the last chunk is durable the file is proven whole
and published (finish.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time

from p2pshare.db import downloads as dbdl
from p2pshare.db import jobs as dbjobs
from p2pshare.db import offer_switch as dbswitch
from p2pshare.db.status import Status
from p2pshare.services import protocol
from p2pshare.services.downloader.engine import Download, Part, Shared
from p2pshare.services.downloader.finish import CannotPublish, Finisher, JobFailed
from p2pshare.services.downloader.manifests import fetch_manifests_now
from p2pshare.services.downloader.picker import Picker
from p2pshare.services.downloader.port import Pipeline
from p2pshare.services.downloader.progress import DurableProgress, Ledger
from p2pshare.services.downloader.tempfiles import reserve_space, temp_name
from p2pshare.services.downloader.worker import PeerWorker, SourceState, peer_id
from p2pshare.services.downloader.writer import BlockWriter, Verdict
from p2pshare.services.settings import Settings
from p2pshare.services.units import human_bytes

log = logging.getLogger("p2p.download")

FLUSH_SECONDS = 0.5
SOURCE_REFRESH_SECONDS = 2.0
MAX_SOURCES = 16
# Requests in flight per connection: enough bytes to keep a fast link busy while the
# previous chunk is hashed and written, but not so many small chunks that one peer takes
# the whole file while others wait.
ONE_FILE = Pipeline(bytes=8 * 1024 * 1024, min_requests=2, max_requests=16)
# Connections to each source when there are only one or two: each connection's thread
# receives, hashes and writes, so two keep both cores busy (writer.py).
FEW_SOURCES_CONNECTIONS = 2

__all__ = ["DownloadJob", "JobFailed"]


class DownloadJob(Download[Part]):
    """A download of one big file (see engine.py); its peer workers see it only as a
    `port.JobPort`."""

    def __init__(self, spec: dbjobs.JobSpec, shared: Shared) -> None:
        did = spec.download_id
        super().__init__(shared, ONE_FILE, f"download {did}", [did])
        settings = self.settings
        self.spec = spec
        self.wait_timeout = settings.wait_timeout
        self.key = self.add_part(Part, spec).key
        # Of its size: with its manifest not known here the job fails (_open_temp).
        self.count = protocol.chunk_count(spec.size, spec.chunk_size)
        self.have_key = (self.key, self.count)
        have = spec.have if len(spec.have) == (self.count + 7) // 8 else b""
        self.picker = Picker(
            self.count, protocol.bitfield_indices(have, self.count) if have else []
        )
        self.durable = DurableProgress(spec, self.count, have)
        self.ledger = Ledger()  # under self.lock
        self.writer = BlockWriter(
            # Chunks are marked done only under the writer's lock (chunk_verified runs
            # there), so it may read the picker's state without the job's.
            is_done=lambda i: self.picker.is_done(i),
            halted=self.halt.is_set,
            failed=self._write_failed,
        )
        self.sources: dict[tuple[str, int], SourceState] = {}
        self.one_cpu = one_cpu()
        self.temp = settings.temp_dir / temp_name(spec.download_id, spec.sha256)
        self.fd = -1
        self.waiting_since: float | None = None
        self.failure: JobFailed | None = None  # set by a peer thread: the job must end
        self.finisher = Finisher(spec, settings, self.database)

    # ------------------------------------------------------------ entry

    def run(self) -> None:
        """Run to the end: done, failed, cancelled, moved to another offer, or left
        resumable when the role stops."""
        spec = self.spec
        try:
            if self.finisher.already_published(self.temp):
                return
            check_download_folder(self.settings, self.spec.size, self.spec.download_id)
            self._open_temp()
            self.writer.open(self.fd)
            log.info(
                "download %d: %s (%d bytes, %d chunks, %d already here)",
                spec.download_id,
                spec.name,
                spec.size,
                self.count,
                self.count - self.picker.remaining,
            )
            if not self._transfer():
                return  # stopped, cancelled or switched
            self._halt_workers()
            self.finisher.publish(self.temp, self.fd)
        except CannotPublish as exc:
            self._hold(str(exc))
        except JobFailed as exc:
            self._end(Status.FAILED, str(exc))
        except Exception as exc:
            log.exception("download %d crashed", spec.download_id)
            self._end(Status.FAILED, f"internal error: {exc}")
        finally:
            self._halt_workers()
            if self.fd >= 0:
                os.close(self.fd)

    # ------------------------------------------------------------ temp file

    def _open_temp(self) -> None:
        if len(self.spec.chunk_hashes) != self.count:
            raise JobFailed("the manifest of this file is not known here")
        self.settings.temp_dir.mkdir(parents=True, exist_ok=True)
        fresh = not self.temp.exists() or self.temp.stat().st_size != self.spec.size
        # As any program writes a file (the umask decides): it is published as it is.
        self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o666)
        if fresh and self.picker.remaining != self.count:
            # The temp file is gone or wrong: nothing recorded can be trusted.
            log.warning(
                "download %d: temp file missing or wrong size; starting over", self.spec.download_id
            )
            self.picker = Picker(self.count)
            self.durable.reset()
        try:
            os.ftruncate(self.fd, self.spec.size)
            if self.spec.size:
                reserve_space(self.fd, self.spec.size, self.settings.temp_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full() from None
            raise
        with self.database.write() as s:
            dbjobs.start_job(s, self.spec.download_id, str(self.temp), now=time.time())

    def _disk_full(self) -> JobFailed:
        return JobFailed(
            f"not enough disk space for {self.spec.size} bytes in {self.settings.temp_dir}"
        )

    # ------------------------------------------------------------ main loop

    def _transfer(self) -> bool:
        """Fetch until every chunk is durable. False when stopped, cancelled or switched."""
        next_refresh = 0.0
        while True:
            now = time.time()
            refreshed = now >= next_refresh
            if refreshed:
                self._refresh_sources(now)
                next_refresh = now + SOURCE_REFRESH_SECONDS
            with self.lock:
                self.lock.wait_for(
                    lambda: self.picker.finished or self.stop.is_set(), FLUSH_SECONDS
                )
            status = self._flush(now)
            if status == Status.PAUSED:
                log.info("download %d paused", self.spec.download_id)
                return False  # the temp file and its verified chunks stay for the resume
            if status not in dbdl.UNFINISHED:
                log.info("download %d %s", self.spec.download_id, status)
                self._discard_temp()
                return False
            if self.failure is not None:
                raise self.failure
            if self.stop.is_set():
                return False
            if self.picker.finished and not self.ledger.verified:
                return True
            if refreshed and self.waiting_since is not None and self._switch_offer():
                return False

    def _switch_offer(self) -> bool:
        """Every peer of this offer is gone or lied: move to another offer of the same SHA-256
        if live peers make one (the downloader starts the job again on it)."""
        if any(key not in self.bad_sources for key in self.sources):
            return False
        self._halt_workers()
        self._flush(time.time())
        with self.database.read() as s:
            lacking = dbswitch.offers_to_hash(s, self.spec.download_id)
        if lacking:  # manifests come when a download needs them: this one does now
            fetch_manifests_now(self.database, self.settings, self.tls, lacking, self.stop)
        with self.database.write() as s:
            change = dbswitch.switch_offer(s, self.spec.download_id)
        if change is None:
            self.halt.clear()  # nothing to switch to: carry on waiting
            return False
        if change.ended:
            raise JobFailed(change.reason)
        log.warning("download %d: %s", self.spec.download_id, change.reason)
        if change.sha256 != self.spec.sha256:
            self._carry_temp(change.sha256, change.size)
        return True

    def _carry_temp(self, sha256: str, size: int) -> None:
        """Another version: its temp file is the old one under its new name, at its new
        size, so the chunks both versions share stay (a crash before this only costs them)."""
        os.ftruncate(self.fd, size)
        os.fdatasync(self.fd)
        os.replace(self.temp, self.settings.temp_dir / temp_name(self.spec.download_id, sha256))

    def _state(self, now: float) -> tuple[str, str | None]:
        missing = self.picker.unavailable()
        blocked = self._unreachable()
        usable = any(key not in self.bad_sources and key not in blocked for key in self.sources)
        if not missing and (usable or not blocked):
            self.waiting_since = None
            # Still named while others serve: a peer with another key is worth knowing of.
            return Status.ACTIVE, cannot_talk(blocked) if blocked else None
        if self.waiting_since is None:
            self.waiting_since = now
        if not self.sources:
            reason = "no online peer has this file"
        elif blocked and not usable:
            reason = cannot_talk(blocked)
        else:
            listed = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            reason = (
                f"no online peer holds chunk{'s' if len(missing) > 1 else ''} {listed} "
                f"({len(missing)} of {self.count})"
            )
        if now - self.waiting_since > self.wait_timeout:
            raise JobFailed(f"{reason} for {self.wait_timeout:.0f} s")
        return (Status.WAITING if self.picker.in_flight() == 0 else Status.ACTIVE), reason

    def _unreachable(self) -> dict[tuple[str, int], str]:
        """Sources whose last connection failed (refused, another key, another
        encryption), as `name (address:port): why`, until one answers again."""
        return {
            key: f"{st.source.username or 'a peer'} ({peer_id(key)}): {st.last_error}"
            for key, st in self.sources.items()
            if st.last_error and key not in self.bad_sources
        }

    def _flush(self, now: float) -> str:
        """Make what was verified durable and record it (the new chunks are offered onward
        by the same write: db/catalog_log.py). Returns the download's status in the db."""
        with self.lock:
            batch, self.ledger = self.ledger, Ledger()
        usernames = {key: st.source.username for key, st in self.sources.items()}
        status = self.durable.flush(
            self.database, self.fd, batch, self._state(now), usernames, now=now
        )
        return status

    def _refresh_sources(self, now: float) -> None:
        with self.database.read() as s:
            listed = dbjobs.sources_for(s, self.spec.file_id)
        gone = set(self.sources) - {(src.address, src.tcp_port) for src in listed}
        for key in gone:  # expired peers: what only they held is unavailable now
            if not self.sources[key].alive():
                del self.sources[key]
                with self.lock:
                    self.picker.drop_peer(peer_id(key))
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
                    self.picker.set_peer(peer_id(key), src.bitfield)
            st.source = src
            wanted = self._connections(src, len(listed))
            if len(st.alive()) < wanted and now >= st.retry_at and not self.halt.is_set():
                for _ in range(wanted - len(st.workers)):
                    worker = PeerWorker(self, st)
                    st.workers.append(worker)
                    worker.start()

    def _connections(self, src: dbjobs.Source, sources: int) -> int:
        """Connections to open to one source: two while there are one or two sources, so
        two threads receive, hash and write (under TLS also decrypt) on two cores; one
        each beyond that, where the sources' threads already keep the cores busy, and one
        on a process allowed a single CPU, where a second thread only takes turns."""
        return FEW_SOURCES_CONNECTIONS if sources <= 2 and not self.one_cpu else 1

    # ------------------------------------------------------------ the JobPort of workers

    def chunk_refused(self, peer: str, g: int, why: str) -> bool:
        return False  # the peer holds less than it said: its bits are asked anew

    def write(self, index: int, data: memoryview, offset: int, then: Verdict | None = None) -> bool:
        return self.writer.write(index, data, offset, then)

    def chunk_verified(
        self, peer: str, key: tuple[str, int], index: int, size: int, on_disk: bool = True
    ) -> None:
        """A chunk matched its manifest entry; runs under the writer's lock, right after
        its last bytes were written. `on_disk` False: they were not (another copy won,
        the job is halting, or a write failed)."""
        with self.lock:
            self.ledger.received += size
            if self.halt.is_set():
                return
            if on_disk and self.picker.complete(peer, index):
                self.ledger.good(key, index, size)
            else:
                self.picker.release(peer, index)  # another copy won
            self.lock.notify_all()

    def _write_failed(self, exc: OSError) -> None:
        """A write into the temp file failed: no peer can fix that, so the job ends."""
        with self.lock:
            if self.failure is None:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                self.failure = (
                    self._disk_full() if full else JobFailed(f"cannot write the temp file: {exc}")
                )
            self.halt.set()
            self.lock.notify_all()

    def chunk_bad(self, peer: str, key: tuple[str, int], index: int, size: int) -> bool:
        with self.lock:
            self.ledger.received += size
            self.picker.release(peer, index)
            self.picker.drop_peer(peer)
            self.ledger.bad(key)
            self.bad_sources.add(key)
            self.lock.notify_all()
        log.warning(
            "download %d: chunk %d from %s failed verification; peer marked bad for this file",
            self.spec.download_id,
            index,
            peer,
        )
        return True

    # ------------------------------------------------------------ the end

    def _discard_temp(self) -> None:
        self._halt_workers()
        self.temp.unlink(missing_ok=True)

    def _hold(self, why: str) -> None:
        """Whole and verified, but the download folder cannot take it: keep the temp file
        and pause, so a resume once the folder is fixed publishes it, fetching nothing."""
        did = self.spec.download_id
        reason = f"{why}; the verified file is kept: p2pctl resume {did} puts it there"
        log.warning("download %d paused: %s", did, reason)
        with self.database.write() as s:
            dbjobs.hold_download(s, did, reason)

    def _end(self, status: str, reason: str) -> None:
        log.warning("download %d %s: %s", self.spec.download_id, status, reason)
        self._discard_temp()
        with self.database.write() as s:
            dbjobs.finish_download(
                s, self.spec.download_id, status=status, reason=reason, now=time.time()
            )

    def _halt_workers(self) -> None:
        """Stop the peer workers; when this returns, none writes to the temp file."""
        with self.lock:
            self.halt.set()  # the writer checks it under its own lock: no write starts after
            self.lock.notify_all()
        workers = [w for st in self.sources.values() for w in st.workers]
        for w in workers:
            w.interrupt()
        for w in workers:
            w.join(timeout=2.0)
        self.writer.drain()  # a write under way in a worker that did not end has ended


def check_download_folder(settings: Settings, size: int, download_id: int) -> None:
    """Before fetching anything: can the download folder take the finished file? A file
    fetched whole only to find the folder read-only or full costs the whole transfer.
    Raises JobFailed."""
    folder = settings.download_dir
    probe = folder / f".p2p-probe-{download_id}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        settings.temp_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # left by a crash: it was writable
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
        # Into a folder on temp/'s file system the file is linked, taking no more room
        # (temp/ reserved it); into another one it is copied.
        if os.stat(folder).st_dev == os.stat(settings.temp_dir).st_dev:
            return
        st = os.statvfs(folder)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise JobFailed(f"the download folder {folder} is full: {exc.strerror}") from None
        raise JobFailed(f"cannot write into the download folder {folder}: {exc.strerror}") from None
    free = st.f_bavail * st.f_frsize
    if free < size:
        raise JobFailed(
            f"the download folder {folder} is full: {human_bytes(free)} free, "
            f"{human_bytes(size)} needed"
        )


def cannot_talk(blocked: dict[tuple[str, int], str]) -> str:
    """The reason a download gives for the sources it cannot talk to (three at most)."""
    named = sorted(blocked.values())
    more = f"; and {len(named) - 3} more" if len(named) > 3 else ""
    return f"cannot talk to {'; '.join(named[:3])}{more}"


def one_cpu() -> bool:
    """Is this process allowed a single CPU (taskset, a cgroup's cpuset)?"""
    try:
        return len(os.sched_getaffinity(0)) == 1
    except (AttributeError, OSError):  # not Linux: assume several
        return False

"""Many small files at once: the engine's policy (engine.py) for hundreds of downloads
of a few chunks, where a job's connections, holdings exchange, progress flushes and
one-file publish would be the whole cost of each. A batch
- reads every download's spec and sources in one query each, and starts them all in
  one transaction;
- each file is asked of one source (the bytes spread evenly), over one connection a
  source kept in the role's PeerPool for the next batch, many requests pipelined in
  one segment, each chunk verified against its manifest entry as it lands and the file
  written once, whole, into its own temp file;
- the verified files are made durable, published and recorded in groups: one sync of
  the filesystem, one transaction naming where each goes, the links, one sync, one
  transaction recording them done. A crash at any moment loses at most the files of
  the group in flight, and a resume fetches only those.

Whatever a batch cannot finish simply (no source now, a refusal, a lying peer, a
failed connection, a disk error) it leaves unfinished and names in `left_over`; the
downloader runs those as full jobs, whose waiting, retries, failures and switching
to other offers are the one place those rules live.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from p2pshare.db import batch as dbbatch
from p2pshare.db import jobs as dbjobs
from p2pshare.db.status import Status
from p2pshare.services import protocol
from p2pshare.services.downloader.durable import (
    folders_up_to,
    fsync_folders,
    sync_filesystem,
    syncfs_persists,
    write_file,
)
from p2pshare.services.downloader.engine import Download, Part, Shared
from p2pshare.services.downloader.finish import JobFailed, hashed_file
from p2pshare.services.downloader.job import check_download_folder
from p2pshare.services.downloader.picker import Picker
from p2pshare.services.downloader.pool import PeerPool
from p2pshare.services.downloader.port import Pipeline
from p2pshare.services.downloader.publish import PublishError, copy_names, publish, safe_folder
from p2pshare.services.downloader.tempfiles import temp_name
from p2pshare.services.downloader.worker import PeerWorker, SourceState, peer_id
from p2pshare.services.downloader.writer import Verdict

log = logging.getLogger("p2p.download")

# A batch takes files up to this size and this many chunks (a 1 MiB file has four at the
# default chunk sizes): each is received whole into memory from one source, every chunk
# verified against its manifest entry as it lands. More chunks are worth a full job's
# spreading over every source.
SMALL_MAX = 1024 * 1024
SMALL_MAX_CHUNKS = 4
BATCH_FILES = 1000
# A group is published when this many files are ready or this long after its first.
GROUP_FILES = 256
GROUP_SECONDS = 0.25
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Requests in flight on one connection: enough to hide the round trip, few enough
# bytes that a slow peer does not sit on much.
PIPELINE_CHUNKS = 64
PIPELINE_BYTES = 4 * 1024 * 1024


def batchable(chunks: int, size: int) -> bool:
    """Can a batch run this download (a file of a few chunks, small enough to hold whole)?"""
    return chunks <= SMALL_MAX_CHUNKS and size <= SMALL_MAX


@dataclass
class BatchFile(Part):
    """A file of the batch and what has come of it."""

    temp: str = ""
    data: bytearray | None = None  # chunks so far, for a file of several
    got: int = 0
    source: tuple[str, int] | None = None  # who sent its last chunk
    dropped: bool = False  # given back: its late chunks are discarded
    ready: bool = False


class SmallBatch(Download[BatchFile]):
    """Runs a batch of small downloads to the end (see the module's docstring); its peer
    workers see it as a `port.JobPort` over the chunks of all its files."""

    def __init__(self, download_ids: list[int], shared: Shared, pool: PeerPool) -> None:
        pipeline = Pipeline(PIPELINE_BYTES, 1, PIPELINE_CHUNKS, pool)
        super().__init__(shared, pipeline, "a batch of small downloads", download_ids)
        self.ready: list[BatchFile] = []  # verified and in their temp files, under lock
        self.unresolved = 0  # files neither ready nor given back, under lock
        self.usernames: dict[tuple[str, int], str] = {}
        self._download_root: str | None = None  # resolved once a batch, ending in "/"
        # Each file fsynced as it is written, where one syncfs a group persists nothing
        # (durable.py); decided once a batch, by the temp folder's file system.
        self.fsync_each = False

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("a batch of %d small downloads failed", len(self.download_ids))
            self.left_over.update(self.download_ids)
        finally:
            self.halt.set()

    # ------------------------------------------------------------ the batch

    def _run(self) -> None:
        with self.database.read() as s:
            specs = dbbatch.job_specs(s, self.download_ids)
            sources = dbbatch.sources_for_files(s, [sp.file_id for sp in specs])
        todo = []
        for spec in specs:
            count = protocol.chunk_count(spec.size, spec.chunk_size)
            usable = batchable(count, spec.size) and len(spec.chunk_hashes) == count
            if usable and spec.saved_as is None and (sources[spec.file_id] or not spec.size):
                todo.append(spec)
            else:  # waiting for a source, or a crash mid-publish: the full job's cases
                self.left_over.add(spec.download_id)
        try:  # before fetching anything; each full job then fails with its own reason
            check_download_folder(
                self.settings, sum(sp.size for sp in todo), min(self.download_ids)
            )
        except JobFailed as exc:
            self.give_back(todo, str(exc))
            return
        temp_dir = str(self.settings.temp_dir)
        temps = {
            sp.download_id: os.path.join(temp_dir, temp_name(sp.download_id, sp.sha256))
            for sp in todo
        }
        with self.database.write() as s:
            started = set(dbbatch.start_batch(s, temps, now=time.time()))
        todo = [sp for sp in todo if sp.download_id in started]
        if not todo:
            return
        self.settings.temp_dir.mkdir(parents=True, exist_ok=True)
        self.fsync_each = not syncfs_persists(self.settings.temp_dir)
        for spec in todo:
            if not spec.size:
                self._write_empty(spec, temps[spec.download_id])
        by_source = assign_sources([sp for sp in todo if sp.size], sources)
        log.info(
            "batch of %d small download(s) from %d source(s)%s",
            len(todo), len(by_source),
            f"; {len(self.left_over)} left to full jobs" if self.left_over else "",
        )  # fmt: skip
        workers = self._start_workers(by_source, temps)
        try:
            self._publish_as_ready(workers)
        finally:
            self.halt.set()
            with self.lock:
                self.lock.notify_all()
            for worker in workers:
                worker.join()

    def _start_workers(
        self, by_source: dict[dbjobs.Source, list[dbjobs.JobSpec]], temps: dict[int, str]
    ) -> list[PeerWorker]:
        """Lay the files' chunks end to end, each source holding those of its own files,
        and start a worker a source."""
        held: dict[str, list[BatchFile]] = {}
        for src, assigned in by_source.items():
            key = (src.address, src.tcp_port)
            self.usernames[key] = src.username
            mine = held[peer_id(key)] = []
            for spec in assigned:
                mine.append(self.add_part(BatchFile, spec, temps[spec.download_id]))
        self.unresolved = sum(not f.ready for f in self.parts)
        self.picker = Picker(self.count)
        for peer, files in held.items():
            bits = protocol.bitfield_empty(self.count)
            for g in (g for f in files for g in f.chunks):
                protocol.bitfield_set(bits, g)
            self.picker.set_peer(peer, bytes(bits))
        workers = [PeerWorker(self, SourceState(src)) for src in by_source]
        for worker in workers:
            worker.start()
        return workers

    def _write_empty(self, spec: dbjobs.JobSpec, temp: str) -> None:
        if spec.sha256 != EMPTY_SHA256:  # a catalog cannot offer this; be sure
            self.left_over.add(spec.download_id)
            return
        try:
            write_file(temp, memoryview(b""), fsync=self.fsync_each)
        except OSError as exc:
            self.cannot_write(spec, exc)
            return
        empty = self.add_part(BatchFile, spec, temp)
        empty.ready = True
        self.ready.append(empty)

    def give_back(self, specs: list[dbjobs.JobSpec], why: str) -> None:
        """Downloads this batch will not finish: the full job runs them."""
        if specs:
            self.left_over.update(sp.download_id for sp in specs)
            log.info("%d small download(s) left to full jobs: %s", len(specs), why)

    def cannot_write(self, spec: dbjobs.JobSpec, exc: OSError) -> None:
        self.give_back([spec], f"cannot write the temp file: {exc.strerror or exc}")

    def _drop(self, f: BatchFile) -> bool:
        """Under the lock: the file leaves the batch, none of its chunks asked again.
        False when it had left already or is ready."""
        if f.dropped or f.ready:
            return False
        f.dropped = True
        f.data = None
        self.unresolved -= 1
        for g in f.chunks:
            if not self.picker.is_done(g):
                self.picker.complete("", g)
        self.lock.notify_all()
        return True

    # ------------------------------------------------------------ the JobPort of workers

    def write(self, g: int, data: memoryview, offset: int, then: Verdict | None = None) -> bool:
        """A verified chunk (the batch's chunks fit the worker's buffer, so each comes
        whole with its verdict): kept until its file is whole, which is then written
        once, from this worker's thread."""
        with self.lock:
            f = self.parts[self.owner[g]]
            keep = not (f.dropped or self.halted() or self.picker.is_done(g))
            chunks = len(f.check.entries)
            if keep and chunks > 1:
                if f.data is None:
                    f.data = bytearray(f.spec.size)
                f.data[offset : offset + len(data)] = data
            if keep:
                f.got += 1
            if then is not None:
                then(keep)
            whole = keep and f.got == chunks
        if not whole:
            return keep
        try:
            whole_file = data if f.data is None else memoryview(f.data)
            write_file(f.temp, whole_file, fsync=self.fsync_each)
        except OSError as exc:
            with self.lock:
                self._drop(f)
            self.cannot_write(f.spec, exc)
            return False
        with self.lock:
            f.data = None
            f.ready = True
            self.unresolved -= 1
            self.ready.append(f)
            if len(self.ready) >= GROUP_FILES or not self.unresolved:
                self.lock.notify_all()
        return True

    def chunk_verified(
        self, peer: str, key: tuple[str, int], g: int, size: int, on_disk: bool = True
    ) -> None:
        """Runs under the lock, inside `write`: the chunk is kept (`on_disk`) or dropped."""
        if on_disk:
            self.picker.complete(peer, g)
            self.parts[self.owner[g]].source = key
        else:
            self.picker.release(peer, g)

    def chunk_bad(self, peer: str, key: tuple[str, int], g: int, size: int) -> bool:
        f = self.parts[self.owner[g]]
        bad = dbjobs.SourceTally(*key, self.usernames.get(key, ""), 0, size, 1)
        with self.database.write() as s:
            dbbatch.record_bad(s, f.spec.download_id, bad, now=time.time())
        log.warning(
            "download %d: chunk %d of %s from %s failed verification; "
            "peer marked bad for this file",
            f.spec.download_id, g - f.first, f.spec.name, peer,
        )  # fmt: skip
        with self.lock:
            self.picker.release(peer, g)
            dropped = self._drop(f)
        if dropped:
            self.give_back([f.spec], "a peer sent bytes that fail verification")
        return False  # its other files may still come from it

    def chunk_refused(self, peer: str, g: int, why: str) -> bool:
        f = self.parts[self.owner[g]]
        with self.lock:
            self.picker.release(peer, g)
            dropped = self._drop(f)
        if dropped:
            self.give_back([f.spec], f"peer {peer} refused {f.spec.name}: {why}")
        return True

    def peer_lost(self, peer: str, pending: list[int]) -> None:
        """A source's worker ended: what it did not send goes to full jobs."""
        super().peer_lost(peer, pending)
        with self.lock:
            self.picker.drop_peer(peer)
            lost = {self.owner[g] for g in self.picker.unavailable()}
            files = [self.parts[i] for i in sorted(lost) if self._drop(self.parts[i])]
        if files and not self.halted():
            self.give_back([f.spec for f in files], f"peer {peer} did not send them")

    # ------------------------------------------------------------ publishing

    def _publish_as_ready(self, workers: list[PeerWorker]) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(
                    lambda: (
                        len(self.ready) >= GROUP_FILES or not self.unresolved or self.stop.is_set()
                    ),
                    GROUP_SECONDS,
                )
                group, self.ready = self.ready, []
                # Workers all ended with files unresolved: a bug's safety net.
                alive = any(w.is_alive() for w in workers)
                left = [] if alive else [f.spec for f in self.parts if self._drop(f)]
                finished = not self.unresolved
            if self.stop.is_set():
                return  # what is not published is left for the next start
            self.give_back(left, "their source's connection ended")
            if group:
                self._publish(group)
            if finished and not group:
                return

    def _publish(self, group: list[BatchFile]) -> None:
        """Durable, then named, then linked, then durable again, then recorded: the order
        Finisher.publish keeps for one file, paid once for the whole group (a file at a
        time where the file system does not honour syncfs: durable.py)."""
        if not self.fsync_each:  # else each file was fsynced as it was written
            sync_filesystem(self.settings.temp_dir)
        # Strings, not Paths, from here on: pathlib's parsing, hashing and relative_to
        # cost a small file more than its link, stat and unlink.
        chosen: dict[int, tuple[str, str]] = {}  # download id -> (real folder, free name)
        failed: dict[int, str] = {}
        taken: set[str] = set()
        checked: dict[str, str] = {}  # for this group only: folders move
        for item in group:
            try:
                folder = safe_folder(self.settings.download_dir, item.spec.name, checked=checked)
            except PublishError as exc:
                failed[item.spec.download_id] = str(exc)
                continue
            filename = item.spec.name.rsplit("/", 1)[-1]
            name = next(
                (
                    path
                    for path in (f"{folder}/{n}" for n in copy_names(filename))
                    if path not in taken and not _exists(path)
                ),
                None,
            )
            if name is None:
                failed[item.spec.download_id] = f"too many files named like {filename} exist"
                continue
            taken.add(name)
            chosen[item.spec.download_id] = (folder, name)
        with self.database.write(durable=True) as s:  # before the links: see Finisher.publish
            names = {i: self._relative(n) for i, (_, n) in chosen.items()}
            recorded = dbbatch.set_saved_as_many(s, names)
        published: list[tuple[BatchFile, str]] = []
        for item in group:
            if item.spec.download_id not in recorded:
                if item.spec.download_id not in failed:  # paused or cancelled meanwhile
                    _unlink(item.temp)
                continue
            folder, name = chosen[item.spec.download_id]
            try:
                os.link(item.temp, name)  # never replaces a name taken meanwhile
                published.append((item, name))
            except OSError:
                final = self._publish_alone(item, folder)
                if final is not None:
                    published.append((item, final))
        if syncfs_persists(self.settings.download_dir):
            sync_filesystem(self.settings.download_dir)
        else:
            fsync_folders(folders_up_to(self._root(), (final for _, final in published)))
        for item, _ in published:
            _unlink(item.temp)
        done = [self._fetched(item, final) for item, final in published]
        now = time.time()
        with self.database.write(durable=True) as s:
            dbbatch.finish_batch(s, done, now=now)
            for download_id, reason in failed.items():
                dbjobs.finish_download(s, download_id, status=Status.FAILED, reason=reason, now=now)
        for item in group:
            if item.spec.download_id in failed:
                _unlink(item.temp)
                log.warning(
                    "download %d failed: %s", item.spec.download_id, failed[item.spec.download_id]
                )
        log.info("%d small file(s) published, %d failed", len(done), len(failed))

    def _publish_alone(self, item: BatchFile, folder: str) -> str | None:
        """The name was taken meanwhile, or the download folder is on another filesystem:
        the one-file path, with its own choice of name, copy and fsyncs."""

        def remember(path: Path) -> None:
            with self.database.write(durable=True) as s:
                dbbatch.set_saved_as_many(s, {item.spec.download_id: self._relative(str(path))})

        dest = Path(folder, item.spec.name.rsplit("/", 1)[-1])
        try:
            return str(publish(Path(item.temp), dest, remember))
        except PublishError as exc:
            self.give_back([item.spec], str(exc))
            return None

    def _fetched(self, item: BatchFile, final: str) -> dbbatch.Fetched:
        src, size = item.source, item.spec.size
        tally = None  # an empty file, fetched from nobody
        if src is not None:
            tally = dbjobs.SourceTally(*src, self.usernames.get(src, ""), item.got, size, 0)
        hashed = hashed_file(item.spec, os.stat(final))
        return dbbatch.Fetched(item.spec.download_id, self._relative(final), hashed, tally)

    def _relative(self, path: str) -> str:
        """A published file's name under the download folder, '/'-separated (safe_folder
        placed it there: below the folder's real path)."""
        root = self._root()
        if not path.startswith(root):
            raise ValueError(f"{path} is not in the download folder {root}")
        return path[len(root) :]

    def _root(self) -> str:
        """The download folder's real path, ending in "/" (resolved once a batch)."""
        if self._download_root is None:
            self._download_root = str(self.settings.download_dir.resolve()).rstrip("/") + "/"
        return self._download_root


def assign_sources(
    specs: list[dbjobs.JobSpec], sources: dict[int, list[dbjobs.Source]]
) -> dict[dbjobs.Source, list[dbjobs.JobSpec]]:
    """Each file to one of the sources holding it, the bytes spread evenly: biggest
    first, each to the holder with the fewest bytes so far."""
    load: dict[tuple[str, int], int] = {}
    out: dict[dbjobs.Source, list[dbjobs.JobSpec]] = {}
    for spec in sorted(specs, key=lambda sp: -sp.size):
        holders = sources[spec.file_id]
        src = min(
            holders, key=lambda s: (load.get((s.address, s.tcp_port), 0), s.address, s.tcp_port)
        )
        key = (src.address, src.tcp_port)
        load[key] = load.get(key, 0) + spec.size
        out.setdefault(src, []).append(spec)
    return out


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _exists(path: str) -> bool:
    """Is the name taken, by anything, a dangling symlink too (one lstat)?"""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: taken, as far as publishing goes
    return True

"""Keep `files`, `chunks` and `local_files` in step with the share and download folders.

A whole scan (scandir + stat, merged with the index in name order) finds added, changed
and removed files; only files whose stamp changed are hashed again, so a restart over
many unchanged files costs one stat each. Between whole scans a watch (watch.py) names
what changed, and `step_changes` looks at those names only. A file is hashed only once
it has settled: unchanged for SETTLE_SECONDS, so a copy in progress is not announced
half-done.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from p2pshare.db import index as dbindex
from p2pshare.db.engine import Database
from p2pshare.services.hashing.files import FileChanged, hash_file
from p2pshare.services.private import without_secrets
from p2pshare.services.server.index_writer import WriterProcess
from p2pshare.services.server.repair import screen_published
from p2pshare.services.server.scan import FoundFile, scan_names, walk_tree
from p2pshare.services.server.watch import FolderWatch
from p2pshare.services.settings import Settings, chunk_size_for

log = logging.getLogger("p2p.index")

SETTLE_SECONDS = 0.5
# Commit hashed files in batches so a first index of 100,000 files is not 100,000 commits,
# yet each transaction stays short (a few tens of milliseconds for 2,000 small files).
BATCH_FILES = 2000
BATCH_SECONDS = 0.5
# A batch this large (a first index, a folder copied in) starts a writer process for the
# rest of the pass; a smaller one, a change, is written here, sparing the process's start.
WRITER_ROWS = 1000
# Its batches may be larger: each one's new `files` rows land all over the index of their
# SHA-256s, so a commit writes about as many pages whether it holds 2,000 files or 6,000
# (the write lock is held a little longer).
WRITER_BATCH_FILES = 6000
# A whole scan reads the index this many rows at a time, each page in a read of its own.
KNOWN_PAGE = 5000
# A batch up to this size logs a line per file; a larger one (a first index, a folder
# copied in) one line for all: 10,000 lines cost the role and supervisord more than
# the inserts they describe.
LOG_EACH_UP_TO = 20


# The kernel stamps ctime from a coarse clock, a few milliseconds behind time.time_ns().
CTIME_SLACK_NS = 50_000_000


def _arrived_since(path: Path, since_ns: int) -> bool:
    """Was the file at path linked or created (its ctime) after since_ns? A file published
    into the download folder after the scan passed its folder is not a file gone."""
    try:
        return os.lstat(path).st_ctime_ns >= since_ns - CTIME_SLACK_NS
    except OSError:
        return False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while. A whole scan makes several objects
    per file (the scan's and the index's per-name maps, then what hashing makes, alive
    until its batch is written), none in a cycle: the collector's passes over them all cost
    CPU in proportion to the share and find nothing to free."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# A file to hash: its name, what the scan found, and the file id its name had (None: new).
Todo = tuple[str, FoundFile, int | None]


@dataclass(frozen=True)
class Root:
    label: str  # 'share' or 'download'
    path: Path
    exclude: tuple[Path, ...]


@dataclass
class IndexStats:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    waiting: int = 0
    # Wall-clock time at which the first file still settling will have settled.
    settles_at: float | None = None
    # Seconds spent looking (scan, reading the index, comparing), hashing left out: what
    # a rescan of an unchanged share costs, for the scan loop's pacing.
    looked_seconds: float = 0.0

    @property
    def touched(self) -> int:
        return self.added + self.changed + self.removed


@dataclass
class ShareIndexer:
    database: Database
    settings: Settings
    # Paths already reported as skipped, so each gets one log line, not one per scan.
    _reported: set[str] = field(default_factory=set)
    # Per root, names to look at again (still settling, or changed while hashed), as only
    # a watch's events would otherwise bring them back.
    _pending: dict[str, set[str]] = field(default_factory=dict)
    watch: FolderWatch | None = None

    def roots(self) -> list[Root]:
        """The folders to index; one nested in the other is indexed once, under its own root."""
        share, download = self.settings.share_dir, self.settings.download_dir
        private = self.settings.private_paths()
        if share == download:
            return [Root("share", share, private)]
        return [
            Root("share", share, (*private, download)),
            Root("download", download, (*private, share)),
        ]

    def start_watching(self) -> FolderWatch | None:
        """Watch every folder the scans meet from now on (inotify); None where it cannot."""
        if self.watch is None:
            self.watch = FolderWatch.open()
        return self.watch

    @property
    def pending(self) -> bool:
        """Names wait to be looked at again (see IndexStats.settles_at for when)."""
        return any(self._pending.values())

    def step(self, *, now: float | None = None) -> IndexStats:
        """Scan every root once and bring the database in step. Returns what changed."""
        stats = IndexStats()
        self._pending.clear()  # the whole scan looks at them all
        with _collector_paused():
            for root in self.roots():
                self._index_root(root, stats, now=time.time() if now is None else now)
        self._log(stats)
        return stats

    def step_changes(
        self, names: Mapping[str, Collection[str]], *, now: float | None = None
    ) -> IndexStats:
        """Bring in step only these relative names (per root label: files, or folders with
        their trees) and those pending from the last step; what a watch reports changed."""
        stats = IndexStats()
        wanted = {label: set(found) for label, found in names.items()}
        for label, waiting in self._pending.items():
            wanted.setdefault(label, set()).update(waiting)
        self._pending.clear()
        for root in self.roots():
            if wanted.get(root.label):
                self._index_names(
                    root, wanted[root.label], stats, now=time.time() if now is None else now
                )
        self._log(stats)
        return stats

    def _log(self, stats: IndexStats) -> None:
        if stats.touched:
            log.info(
                "index: %d added, %d changed, %d removed, %d unchanged",
                stats.added,
                stats.changed,
                stats.removed,
                stats.unchanged,
            )

    def _on_folder(self, root: Root) -> Callable[[str, str], None] | None:
        watch = self.watch
        if watch is None:
            return None
        return lambda path, prefix: watch.watch(root.label, path, prefix)

    def _index_root(self, root: Root, stats: IndexStats, *, now: float) -> None:
        """The whole tree merged with the index, both in name order, a folder and a page of
        rows at a time: memory holds a batch, whatever the share's size."""
        started = time.monotonic()
        scan_started_ns = time.time_ns()
        skipped: dict[str, str] = {}
        with self.database.read() as s:
            # The downloader links a file, then records it: one it is publishing is its
            # to record, not this scan's to hash again (and bump the catalog for).
            publishing = dbindex.publishing_names(s) if root.label == "download" else set()
        found = without_secrets(
            walk_tree(
                root.path, exclude=root.exclude, on_folder=self._on_folder(root), skipped=skipped
            ),
            self.settings,
            skipped,
        )
        todo = self._merged(root, found, publishing, scan_started_ns, stats, now)
        busy = self._hash_and_record(root, self._screened(root, todo), stats)
        stats.looked_seconds += time.monotonic() - started - busy
        self._report_skips(skipped)

    def _known_in_order(self, label: str) -> Iterator[tuple[str, dbindex.IndexedStat]]:
        after: str | None = None
        while True:
            with self.database.read() as s:
                page = dbindex.indexed_stats_page(s, label, after, KNOWN_PAGE)
            yield from page
            if len(page) < KNOWN_PAGE:
                return
            after = page[-1][0]

    def _merged(
        self,
        root: Root,
        found: Iterator[tuple[str, FoundFile]],
        publishing: set[str],
        scan_started_ns: int,
        stats: IndexStats,
        now: float,
    ) -> Iterator[Todo]:
        """The files to hash, from the scan and the index both in name order (Python orders
        str by code point, SQLite by UTF-8 bytes: the same order); removes on the way the
        indexed names the scan did not find."""
        gone: list[tuple[str, int]] = []
        known = self._known_in_order(root.label)
        row = next(known, None)
        for name, file in found:
            while row is not None and row[0] < name:
                gone.append((row[0], row[1].file_id))
                row = next(known, None)
            if len(gone) >= BATCH_FILES:
                self._remove(root, gone, scan_started_ns, stats)
                gone = []
            old = None
            if row is not None and row[0] == name:
                old, row = row[1], next(known, None)
            if self._to_hash(root, name, file, old, publishing, stats, now):
                yield name, file, None if old is None else old.file_id
        while row is not None:
            gone.append((row[0], row[1].file_id))
            row = next(known, None)
        self._remove(root, gone, scan_started_ns, stats)

    def _index_names(self, root: Root, names: set[str], stats: IndexStats, *, now: float) -> None:
        started = time.monotonic()
        scan_started_ns = time.time_ns()
        scan = scan_names(root.path, names, exclude=root.exclude, on_folder=self._on_folder(root))
        scan.files = dict(without_secrets(scan.files.items(), self.settings, scan.skipped))
        self._report_skips(scan.skipped)
        with self.database.read() as s:
            # The same names (and trees) as the look: what it did not find is gone.
            known = dbindex.indexed_stats_of(s, root.label, names)
            publishing = dbindex.publishing_names(s) if root.label == "download" else set()
        gone = [(name, old.file_id) for name, old in known.items() if name not in scan.files]
        self._remove(root, gone, scan_started_ns, stats)
        todo = [
            (name, file, None if old is None else old.file_id)
            for name, file in sorted(scan.files.items())
            for old in (known.get(name),)
            if self._to_hash(root, name, file, old, publishing, stats, now)
        ]
        busy = self._hash_and_record(root, self._screened(root, iter(todo)), stats)
        stats.looked_seconds += time.monotonic() - started - busy

    def _to_hash(
        self,
        root: Root,
        name: str,
        found: FoundFile,
        old: dbindex.IndexedStat | None,
        publishing: set[str],
        stats: IndexStats,
        now: float,
    ) -> bool:
        """Is this file (and the index's row of its name, if any) one to hash now?"""
        if old is None and name in publishing:
            return False
        if old is not None and old.stamp == found.stamp:
            stats.unchanged += 1
            return False
        if now - found.stamp.mtime_ns / 1e9 < SETTLE_SECONDS:
            self._wait_for(root, name, stats)
            settles = found.stamp.mtime_ns / 1e9 + SETTLE_SECONDS
            stats.settles_at = min(stats.settles_at or settles, settles)
            return False
        return True

    def _remove(
        self, root: Root, gone: list[tuple[str, int]], scan_started_ns: int, stats: IndexStats
    ) -> None:
        """Forget these indexed names (with their file ids), but for one recorded after the
        scan passed its folder: that one arrived, it is not gone."""
        gone = [
            (name, fid)
            for name, fid in gone
            if not _arrived_since(root.path / name, scan_started_ns)
        ]
        if not gone:
            return
        with self.database.write() as s:
            stats.removed += dbindex.remove_local_files(s, root.label, [n for n, _ in gone])
            dbindex.delete_orphan_files(s, {fid for _, fid in gone})

    def _screened(self, root: Root, todo: Iterator[Todo]) -> Iterator[Todo]:
        """A download's file is offered only intact (repair.screen_published), a batch at a
        time; the share's files as they come."""
        if root.label != "download":
            yield from todo
            return
        while chunk := list(itertools.islice(todo, BATCH_FILES)):
            by_name = {item[0]: item for item in chunk}
            kept = screen_published(self.database, root.path, [(n, f) for n, f, _ in chunk])
            yield from (by_name[name] for name, _ in kept)

    def _wait_for(self, root: Root, name: str, stats: IndexStats) -> None:
        stats.waiting += 1
        self._pending.setdefault(root.label, set()).add(name)

    def _hash_and_record(self, root: Root, todo: Iterator[Todo], stats: IndexStats) -> float:
        """Hash the files to do and record them, a batch at a time; returns the seconds this
        thread spent on it (hashing, and waiting for the writes), which are not looking.

        Each batch is recorded while the next is hashed, from a thread of its own: one that
        waits while a writer process (index_writer.py) records a batch of WRITER_ROWS or
        more (and every batch after it, in order), or records a smaller one itself. One
        batch waits at most, so memory stays a batch or two whatever the share's size."""
        busy = [0.0]
        writers: list[WriterProcess] = []
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="index-write") as thread:
                pending: Future[None] | None = None
                for batch, replaced in self._hashed_batches(root, todo, stats, busy, writers):
                    if not writers and len(batch) >= WRITER_ROWS:
                        # Started now, it gets going while this thread hashes the next batch.
                        writers.append(WriterProcess(self.database.path))
                    waited = time.monotonic()
                    if pending is not None:
                        pending.result()  # raises what the write raised
                    pending = thread.submit(self._flush, root, batch, replaced, writers)
                    busy[0] += time.monotonic() - waited
                waited = time.monotonic()
                if pending is not None:
                    pending.result()
                busy[0] += time.monotonic() - waited
        finally:
            for writer in writers:
                writer.close()
        return busy[0]

    def _hashed_batches(
        self,
        root: Root,
        todo: Iterator[Todo],
        stats: IndexStats,
        busy: list[float],
        writers: list[WriterProcess],
    ) -> Iterator[tuple[list[tuple[str, dbindex.HashedFile]], set[int]]]:
        """Hash the files to do; yields (batch, the file ids of the contents it replaces,
        which may be left orphaned) every BATCH_FILES (WRITER_BATCH_FILES once a writer
        process records them) or BATCH_SECONDS."""
        batch: list[tuple[str, dbindex.HashedFile]] = []
        replaced: set[int] = set()
        override = self.settings.chunk_size
        started = time.monotonic()
        for name, found, old_id in todo:
            stamp = found.stamp
            hashing = time.monotonic()
            try:
                hashed = hash_file(
                    found.location,
                    chunk_size_for(stamp.size, override),
                    expect=stamp,
                    device=found.device,
                )
            except FileChanged:
                self._wait_for(root, name, stats)
                continue
            except OSError as exc:
                self._report_skips({found.location: f"cannot be read ({exc.strerror})"})
                continue
            finally:
                busy[0] += time.monotonic() - hashing
            batch.append((name, hashed))
            if old_id is None:
                stats.added += 1
            else:
                stats.changed += 1
                replaced.add(old_id)
            limit = WRITER_BATCH_FILES if writers else BATCH_FILES
            if len(batch) >= limit or time.monotonic() - started > BATCH_SECONDS:
                yield batch, replaced
                batch, replaced, started = [], set(), time.monotonic()
        if batch:
            yield batch, replaced

    def _flush(
        self,
        root: Root,
        batch: list[tuple[str, dbindex.HashedFile]],
        replaced: set[int],
        writers: list[WriterProcess],
    ) -> None:
        if not batch:
            return
        now = time.time()
        if writers and not replaced:
            self.database.write_count += 1
            writers[0].record(root.label, batch, now=now)
        else:
            with self.database.write() as s:
                dbindex.record_local_files(s, root.label, batch, now=now)
                if replaced:  # only a changed file can leave its old content unreferenced
                    dbindex.delete_orphan_files(s, replaced)
        if len(batch) > LOG_EACH_UP_TO:
            log.info(
                "indexed %d files in %s (%d bytes), %s ... %s",
                len(batch),
                root.label,
                sum(h.size for _, h in batch),
                batch[0][0],
                batch[-1][0],
            )
            return
        for name, hashed in batch:
            log.info(
                "indexed %s/%s (%d bytes, sha256 %s)",
                root.label,
                name,
                hashed.size,
                hashed.sha256[:12],
            )

    def _report_skips(self, skipped: dict[str, str]) -> None:
        for path, reason in skipped.items():
            if path not in self._reported:
                self._reported.add(path)
                log.warning("skipped %s: %s", path, reason)

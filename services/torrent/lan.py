"""A torrent's files taken from p2pshare peers that hold the same content (hints.py).

Each such file is fetched by the downloader's own verified job (`DownloadJob`: chunks
from every peer that holds them, each checked against the SHA-256 chain of the offer's
manifest, durable in batches, resumable), run here in p2p-torrent against the torrent's
download row, so its progress, its sources (`download_sources`, with the peers'
usernames), pause and cancel are the torrent's. Only its end differs: the proven file
goes into the torrent's temp folder at its path in the torrent, not into the download
folder, because it is proven to be *that content*, not yet to be the torrent's. The
torrent then proves it (fetch.py): its SHA-1 pieces, or a magnet's info dictionary
rebuilt from it; what fails is left to BitTorrent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2pshare.db import jobs as dbjobs
from p2pshare.db import torrents as dbt
from p2pshare.db.engine import Database
from p2pshare.db.status import Status
from p2pshare.services.downloader.engine import Shared
from p2pshare.services.downloader.job import DownloadJob
from p2pshare.services.downloader.manifests import fetch_manifests_now
from p2pshare.services.downloader.progress import DurableProgress, Ledger
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.settings import Settings
from p2pshare.services.torrent import hints
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.torrent.hints import FileHint, Hints
from p2pshare.services.torrent.pieces import pieces_match, stream_pieces
from p2pshare.services.torrent.publishing import temp_folder

log = logging.getLogger("p2p.torrent")

# A job fetching from p2pshare peers notices the stop flag within its flush interval.
LAN_STOP_SECONDS = 5.0


def lan_spec(
    offer: dbt.LanOffer, download_id: int, hint: FileHint, have: bytes = b""
) -> dbjobs.JobSpec:
    """The download job of one torrent file from p2pshare peers, on the torrent's row."""
    return dbjobs.JobSpec(
        download_id, offer.file_id, hint.path, offer.sha256, offer.size, offer.chunk_size,
        offer.root, offer.entries, have, None, None, Status.ACTIVE,
    )  # fmt: skip


class _Offset(DurableProgress):
    """The torrent's progress: this file's verified chunks after the files done before it.
    A peer that lied is marked bad for the offer (the torrent's row names no file)."""

    def __init__(self, spec: dbjobs.JobSpec, count: int, have: bytes, before: int) -> None:
        super().__init__(spec, count, have)
        self.before = before

    def bytes_done(self) -> int:
        return self.before + super().bytes_done()

    def take_bad(self, database: Database, batch: Ledger, *, now: float) -> list[tuple[str, int]]:
        if batch.new_bad:
            with database.write() as s:
                dbt.mark_lan_bad(s, self.spec.file_id, batch.new_bad, now=now)
        return []


class _IntoTemp:
    """The job's ending: the proven file renamed into the torrent's temp folder."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.done = False

    def already_published(self, temp: Path) -> bool:
        return False  # a file already moved is found by LanRun before any job starts

    def publish(self, temp: Path, fd: int) -> None:
        os.fsync(fd)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, self.dest)
        self.done = True


class LanLeg(DownloadJob):
    """One file of a torrent from p2pshare peers (see the module's docstring)."""

    def __init__(
        self, spec: dbjobs.JobSpec, shared: Shared, dest: Path, *, before: int, note: str
    ) -> None:
        super().__init__(spec, shared)
        have = spec.have if len(spec.have) == (self.count + 7) // 8 else b""
        self.durable = _Offset(spec, self.count, have, before)
        self.into = _IntoTemp(dest)
        self.finisher = self.into  # type: ignore[assignment]
        self.note = note
        self.failed: str | None = None

    def _state(self, now: float) -> tuple[str, str | None]:
        status, reason = super()._state(now)
        return status, reason or self.note

    def _end(self, status: str, reason: str) -> None:
        """A file the LAN cannot give (its peers went, or lied): BitTorrent fetches it;
        the torrent's row goes on."""
        self._discard_temp()
        self.failed = reason
        log.warning("download %d: %s from p2pshare peers: %s", self.spec.download_id,
                    self.spec.name, reason)  # fmt: skip


@dataclass
class LanRun:
    """The files of one torrent download taken from p2pshare peers, one after another, in
    a thread of their own; when that is every file of the torrent, proven against it there
    too (a GiB of SHA-1 is no work for the session's alert loop)."""

    download_id: int
    info_hash: str
    metainfo: bytes | None  # the .torrent; None for a magnet whose metadata is not known
    hints: Hints
    temp: Path  # the torrent's temp folder
    planned: list[tuple[FileHint, dbt.LanOffer]]
    got: list[str] = field(default_factory=list)  # paths proven by their manifest, in temp
    fetched: list[str] = field(default_factory=list)  # of those, the ones this run fetched
    failed: list[str] = field(default_factory=list)
    stopped: bool = False  # paused, cancelled or the role stopping: nothing more done
    proof: bytes | None = None  # every file came, and the torrent proves them: its metainfo
    unproven: str | None = None  # every file came, and the torrent refused them: why
    thread: threading.Thread | None = None

    def start(self, settings: Settings, database: Database, stop: threading.Event,
              tls: NodeTls) -> None:  # fmt: skip
        self.thread = threading.Thread(
            target=self.run, args=(settings, database, stop, tls),
            name=f"torrent-lan-{self.download_id}", daemon=True,
        )  # fmt: skip
        self.thread.start()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def run(self, settings: Settings, database: Database, stop: threading.Event,
            tls: NodeTls) -> None:  # fmt: skip
        try:
            self._run(settings, database, stop, tls)
        except Exception as exc:  # a bug here must not end the role: BitTorrent takes over
            log.exception("download %d: taking files from p2pshare peers failed", self.download_id)
            self.failed.append(f"internal error: {exc}")

    def _run(self, settings: Settings, database: Database, stop: threading.Event,
             tls: NodeTls) -> None:  # fmt: skip
        before = 0
        for n, (hint, offer) in enumerate(self.planned, 1):
            dest = self.temp / hint.path
            if _holds(dest, hint.size):  # fetched before a restart or a pause
                self.got.append(hint.path)
                before += hint.size
                continue
            if dest.exists():  # libtorrent's, partly written before a restart: its to finish
                continue
            note = (
                f"from {offer.peers} p2pshare peer{'s' if offer.peers != 1 else ''} "
                f"(file {n} of {len(self.planned)} held on the LAN)"
            )
            with database.write() as s:
                # The row's bitfield is the chunks of the file last fetched into it, fsynced:
                # a paused file's, whose temp file (named by the download and content) is
                # still there, resumes from it (DownloadJob starts over if it is gone).
                have = dbt.record_torrent_source(s, self.download_id, note)
            spec = lan_spec(offer, self.download_id, hint, have)
            shared = Shared(settings, database, stop, tls)
            leg = LanLeg(spec, shared, dest, before=before, note=note)
            started = time.monotonic()
            leg.run()
            if leg.into.done:
                self.got.append(hint.path)
                self.fetched.append(hint.path)
                before += hint.size
                log.info("download %d: %s from p2pshare peers in %.1f s", self.download_id,
                         hint.path, time.monotonic() - started)  # fmt: skip
            elif leg.failed is not None:
                self.failed.append(hint.path)
            else:
                self.stopped = True
                return
        if len(self.got) == len(self.hints.files):
            self.check_whole()

    def check_whole(self) -> None:
        """Every file of the torrent came from p2pshare peers: prove them against the
        torrent, or remove them (a wrong hint: BitTorrent fetches the torrent's own)."""
        paths = [self.temp / h.path for h in self.hints.files]
        try:
            self.proof = prove(self.info_hash, self.metainfo, self.hints, paths)
        except OSError as exc:
            self.unproven = f"cannot read what arrived: {exc}"
        if self.proof is None:
            self.unproven = self.unproven or "the torrent's hashes do not match the SHA-256 hint"
            # What this run fetched goes; a file found here already may be libtorrent's own
            # work from before a restart, which its check keeps what it can of.
            for path in self.fetched:
                (self.temp / path).unlink(missing_ok=True)
            log.warning("download %d: the files p2pshare peers sent are not the torrent's (%s); "
                        "fetching it by BitTorrent", self.download_id, self.unproven)  # fmt: skip


def prove(info_hash: str, metainfo: bytes | None, hinted: Hints, paths: list[Path]) -> bytes | None:
    """The torrent's metainfo when these files are exactly its content: every SHA-1 piece
    of a .torrent matches, or a magnet's info dictionary rebuilt from the file hashes to
    its info-hash. None otherwise, or when only libtorrent can tell (a v2-only torrent,
    pad files). Raises OSError."""
    if metainfo is not None:
        meta = mi.parse_torrent(metainfo)
        if meta.pieces is None or meta.padded:
            return None
        return metainfo if pieces_match(paths, meta.piece_size, meta.pieces) else None
    if len(hinted.files) != 1:
        return None
    pieces = b"".join(stream_pieces(paths, hinted.piece_size))
    info = hints.rebuilt_info(hinted.files[0], hinted.piece_size, pieces)
    return b"d4:info" + mi.bencode(info) + b"e" if hints.proves(info_hash, info) else None


def _holds(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


class LanFirst:
    """A torrent's downloads while p2pshare peers send the files they hold of it: fetch.py
    offers each download here first (`start`) and takes it back when its run ended."""

    def __init__(
        self, settings: Settings, database: Database, stop: threading.Event, tls: NodeTls | None
    ) -> None:
        self.settings, self.database, self.stop, self.tls = settings, database, stop, tls
        self.runs: dict[int, LanRun] = {}  # downloads whose files p2pshare peers are sending
        self.tried: set[int] = set()  # asked p2pshare peers already (this run)
        self.served: dict[int, int] = {}  # files p2pshare peers sent, per download

    def hints_of(self, job: dbt.TorrentJob) -> hints.Hints:
        """The SHA-256 hints the .torrent or magnet link carries (a malformed one is
        logged once and ignored)."""
        try:
            found = (
                hints.from_torrent(job.metainfo)
                if job.metainfo is not None
                else hints.from_magnet(job.magnet or "")
            )
        except mi.MetainfoError:
            return hints.Hints()  # add() says why the torrent itself is refused
        if found.warning:
            log.warning("download %d: %s", job.download_id, found.warning)
        return found

    def start(self, job: dbt.TorrentJob) -> bool:
        """Start taking the torrent's files that p2pshare peers hold (same SHA-256 and
        size) from them; False when none does (or this run asked them already)."""
        did = job.download_id
        if self.tls is None or did in self.tried:
            return False
        self.tried.add(did)
        hinted = self.hints_of(job)
        if not hinted.files:
            return False
        wanted = [(h.sha256, h.size) for h in hinted.files]
        with self.database.read() as s:
            lacking = dbt.lan_unhashed(s, wanted)
        if lacking:  # manifests come when a download needs one: this one does
            fetch_manifests_now(self.database, self.settings, self.tls, lacking, self.stop)
        with self.database.read() as s:
            offers = dbt.lan_offers(s, wanted)
        planned = [(h, offers[h.sha256]) for h in hinted.files if h.sha256 in offers]
        if not planned:
            log.info("download %d: no p2pshare peer holds any of its %d files; BitTorrent "
                     "fetches them", did, len(hinted.files))  # fmt: skip
            return False
        temp = temp_folder(self.settings, did)
        try:
            temp.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False  # add() meets it again and fails the download with the reason
        with self.database.write() as s:
            dbt.start_torrent_job(s, did, str(temp), now=time.time())
            if job.metainfo is None and job.size == 0:  # a magnet: the hint's, until proven
                one, piece = hinted.files[0], hinted.piece_size
                dbt.record_torrent_metadata(s, did, name=one.path, size=one.size, files=1,
                                            piece_size=piece, metainfo=None)  # fmt: skip
        run = LanRun(did, job.info_hash, job.metainfo, hinted, temp, planned)
        run.start(self.settings, self.database, self.stop, self.tls)
        self.runs[did] = run
        log.info("download %d: %d of its %d files from p2pshare peers first", did,
                 len(planned), len(hinted.files))  # fmt: skip
        return True

    def ended(self) -> bool:
        """Whether p2pshare peers are done with some download (sync takes it on)."""
        return any(not run.alive() for run in self.runs.values())

    def source_note(self, did: int, files: int) -> str | None:
        """What a download finished by libtorrent says of its sources."""
        served = self.served.pop(did, 0)
        if not served:
            return None
        return f"{served} of {files} files from p2pshare peers, the rest by BitTorrent"

    def ended_runs(self) -> list[LanRun]:
        """The runs that ended since last asked, no longer counted as sending."""
        ended = [run for run in self.runs.values() if not run.alive()]
        for run in ended:
            del self.runs[run.download_id]
        return ended

    def close(self) -> None:
        """Wait for the runs' jobs, which see the role's stop flag and leave their files
        resumable."""
        for run in self.runs.values():
            if run.thread is not None:
                run.thread.join(timeout=LAN_STOP_SECONDS)

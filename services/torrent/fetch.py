"""p2p-torrent's downloads: `p2pctl download 'magnet:?...'` or `p2pctl download x.torrent`,
fetched through the role's one libtorrent session.

Each download is fetched into a folder of its own in the node's partial area
($P2P_HOME/temp/torrent-ID: not the download folder, which the server indexes and shares
as files appear). Only when libtorrent reports every wanted piece received and verified
(each piece is checked against its hash as it lands; a failure is counted in the
download's bad_chunks and fetched again) are its files published into the download
folder, each as any download is (hard-linked at its name or a numbered one, never over
an existing file, never outside the folder), then indexed, so the node shares them.
Paused downloads leave the session and keep their folder; cancelled ones lose it.

A download whose files p2pshare peers hold goes to them first (lan.py); publishing a
finished download's files is publishing.py.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from p2pshare.db import downloads as dbdl
from p2pshare.db import jobs as dbjobs
from p2pshare.db import torrents as dbt
from p2pshare.db.engine import Database
from p2pshare.db.status import Status
from p2pshare.db.values import HashedFile
from p2pshare.services.downloader.publish import PublishError
from p2pshare.services.hashing.files import FileChanged
from p2pshare.services.net.tls import NodeTls
from p2pshare.services.settings import Settings
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.torrent.lan import LanFirst, LanRun
from p2pshare.services.torrent.publishing import (
    TEMP_PREFIX,
    TorrentFailed,
    publish_tree,
    temp_folder,
)

log = logging.getLogger("p2p.torrent")

# A peer named with --peer (or x.pe) is dialled again this often while none is connected:
# it may start after the download was queued.
REDIAL_SECONDS = 5.0
# connect_peer's flags for a peer named by hand: it may speak encryption, and it is dialled
# over TCP. libtorrent's default also flags uTP, and a peer without uTP redialled while the
# uTP attempt times out is never tried over TCP at all (seen with a TCP-only peer).
PEX_ENCRYPTION = 1
# libtorrent's blocks: what download_sources.chunks counts for a BitTorrent download.
BLOCK_SIZE = 16 * 1024


@dataclass
class Fetching:
    """A download in the session."""

    job: dbt.TorrentJob
    handle: Any
    temp: Path
    received: int = 0  # total_payload_download already recorded
    hash_failures: int = 0  # not yet recorded
    # Bytes received per peer since the last flush, block by block (from
    # block_finished alerts: a peer that finished with us disconnects before any poll).
    peer_bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    metadata: bool = False
    last_piece: tuple[int, int] | None = None  # its index and size, once the metadata is known
    dialled: float = 0.0
    failed: str | None = None


def peer_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def metainfo_of(lt: ModuleType, handle: Any) -> bytes | None:
    """The .torrent of a handle whose metadata is known (the info dictionary as peers sent it)."""
    info = handle.torrent_file()
    if info is None:
        return None
    return b"d4:info" + bytes(info.info_section()) + b"e"


def file_layout(info: Any) -> Any:
    """A torrent's file_storage: layout() from libtorrent 2.1 (files() is deprecated there)."""
    return info.layout() if hasattr(info, "layout") else info.files()


class Fetcher:
    """The BitTorrent downloads in the session, kept in step with the database."""

    def __init__(
        self,
        lt: ModuleType,
        settings: Settings,
        database: Database,
        session: Any,
        *,
        stop: threading.Event | None = None,
        tls: NodeTls | None = None,
    ):
        self.lt, self.settings, self.database, self.session = lt, settings, database, session
        self.fetching: dict[int, Fetching] = {}
        # Taking files from p2pshare peers (lan.py) needs the role's stop flag and TLS.
        self.stop = stop or threading.Event()
        self.lan = LanFirst(settings, database, self.stop, tls)

    # ------------------------------------------------------------ following the queue

    def sync(self) -> None:
        """Add queued downloads, take paused ones out (keeping their folder), drop cancelled
        ones with their folder, dial peers named since a download started."""
        with self.database.read() as s:
            jobs = {j.download_id: j for j in dbt.torrent_jobs(s)}
        for run in self.lan.ended_runs():
            did = run.download_id
            if self.after_lan(run, jobs.get(did)):
                jobs.pop(did)  # done (or failed) now: the snapshot above is stale
        if self.stop.is_set():
            # The role is stopping (a run from p2pshare peers ended for that reason): start
            # nothing new; every download resumes from its folder next run.
            return
        for did in list(self.fetching):
            job = jobs.get(did)
            if job is None or job.status == Status.PAUSED:
                self.drop(did, keep=job is not None)
                continue
            f = self.fetching[did]
            named = [p for p in job.peers if p not in f.job.peers]
            if named:  # `p2pctl download` of the same torrent again, with --peer
                f.job = replace(f.job, peers=job.peers)
                self.dial(f, named)
        for did, job in jobs.items():
            busy = did in self.fetching or did in self.lan.runs
            if not busy and job.status in dbdl.UNFINISHED:
                self.add(job)
        self.sweep(set(jobs) | set(self.lan.runs))

    def add(self, job: dbt.TorrentJob) -> None:
        if self.lan.start(job):
            return  # p2pshare peers first; libtorrent, if needed, when they are done
        lt = self.lt
        temp = temp_folder(self.settings, job.download_id)
        try:
            if job.metainfo is not None:
                mi.parse_torrent(job.metainfo)  # queued by p2pctl, checked again: a path
                params = lt.add_torrent_params()
                params.ti = lt.torrent_info(lt.bdecode(job.metainfo))
            else:
                assert job.magnet is not None
                params = lt.parse_magnet_uri(job.magnet)
            temp.mkdir(parents=True, exist_ok=True)
        except mi.MetainfoError as exc:
            self.fail(job.download_id, f"the torrent is refused: {exc}")
            return
        except (RuntimeError, ValueError, OSError) as exc:
            self.fail(job.download_id, f"libtorrent cannot take it: {exc}")
            return
        params.save_path = str(temp)
        flags = params.flags
        flags &= ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        params.flags = flags
        try:
            handle = self.session.add_torrent(params)
        except RuntimeError as exc:  # the same torrent is in the session: seeded here
            self.fail(job.download_id, f"libtorrent cannot take it: {exc}")
            return
        f = Fetching(job, handle, temp)
        self.fetching[job.download_id] = f
        with self.database.write() as s:
            dbt.start_torrent_job(s, job.download_id, str(temp), now=time.time())
        self.dial(f)
        if handle.status().has_metadata:
            self.got_metadata(f)
        log.info("fetching %s (download %d, %s)", job.name, job.download_id, job.info_hash)

    def dial(self, f: Fetching, peers: list[str] | None = None) -> None:
        """Connect to the peers named (all the download's by default)."""
        f.dialled = time.monotonic()
        for peer in f.job.peers if peers is None else peers:
            try:
                f.handle.connect_peer(peer_address(peer), 0, PEX_ENCRYPTION)
            except (RuntimeError, ValueError) as exc:
                log.warning("cannot dial %s for %s: %s", peer, f.job.name, exc)

    def drop(self, download_id: int, *, keep: bool) -> None:
        """Take a download out of the session: paused (its folder stays) or cancelled (the
        sweep removes its folder)."""
        f = self.fetching.pop(download_id)
        self.session.remove_torrent(f.handle)
        verb = "paused" if keep else "stopped"
        log.info("%s %s (download %d)", verb, f.job.name, download_id)

    def sweep(self, keeping: set[int]) -> None:
        """Remove the temp folders no unfinished or paused download owns (cancelled ones)."""
        try:
            found = [p for p in self.settings.temp_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
        except OSError:
            return
        for path in found:
            owner = path.name[len(TEMP_PREFIX) :]
            if owner.isdigit() and (int(owner) in keeping or int(owner) in self.fetching):
                continue
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, which no unfinished download owns", path.name)

    def fail(self, download_id: int, reason: str) -> None:
        log.warning("download %d failed: %s", download_id, reason)
        f = self.fetching.pop(download_id, None)
        if f is not None:
            self.session.remove_torrent(f.handle)
        with self.database.write() as s:
            dbt.finish_torrent_job(
                s, download_id, status=Status.FAILED, reason=reason, now=time.time()
            )
        shutil.rmtree(temp_folder(self.settings, download_id), ignore_errors=True)

    # ------------------------------------------------------------ p2pshare peers first

    def after_lan(self, run: LanRun, job: dbt.TorrentJob | None) -> bool:
        """p2pshare peers are done with a download: publish it when they sent all of it and
        the torrent proved it, else hand it to libtorrent (which checks what they sent).
        Returns whether the download ended here (done, or failed publishing)."""
        did = run.download_id
        if run.stopped or job is None or job.status not in dbdl.UNFINISHED:
            self.lan.tried.discard(did)  # paused or stopped: ask them again on resuming
            return False
        self.lan.served[did] = 0 if run.unproven else len(run.got)
        if run.proof is None:
            self.add(job)
            return False
        meta = mi.parse_torrent(run.proof)
        if job.metainfo is None:  # a magnet: its metadata, rebuilt and proven
            with self.database.write() as s:
                dbt.record_torrent_metadata(
                    s, did, name=meta.name, size=meta.size, files=len(meta.files),
                    piece_size=meta.piece_size, metainfo=run.proof,
                )  # fmt: skip
        files = [(PurePosixPath(path), size) for path, size in meta.files]
        # Only what this run fetched is proven by its offer's manifest: a file found in the
        # folder may be libtorrent's, the torrent's content whatever the hint said.
        proven = {PurePosixPath(h.path): o for h, o in run.planned if h.path in run.fetched}
        try:
            saved_as, published = publish_tree(self.settings, run.temp, files, proven)
        except (PublishError, OSError, TorrentFailed, FileChanged) as exc:
            self.fail(did, str(exc) if isinstance(exc, PublishError | TorrentFailed)
                      else f"cannot publish it: {exc}")  # fmt: skip
            return True
        note = "from p2pshare peers; BitTorrent not used"
        # Durable before the temp folder goes: its links are how a resume after a power
        # cut would know the files are published already (publish_tree).
        with self.database.write(durable=True) as s:
            dbt.finish_torrent_job(s, did, status=Status.DONE, reason=note, now=time.time(),
                                   saved_as=saved_as, published=published)  # fmt: skip
        shutil.rmtree(run.temp, ignore_errors=True)
        log.info("finished %s (download %d) %s: saved as %s", meta.name, did, note, saved_as)
        return True

    # ------------------------------------------------------------ alerts

    def by_handle(self, handle: Any) -> Fetching | None:
        for f in self.fetching.values():
            if f.handle == handle:
                return f
        return None

    def on_alert(self, alert: Any) -> bool:
        """Take an alert about one of the downloads; False when it is not about one."""
        lt = self.lt
        handle = getattr(alert, "handle", None)
        f = self.by_handle(handle) if handle is not None else None
        if f is None:
            return False
        if isinstance(alert, lt.block_finished_alert):
            self.count_block(f, alert)
        elif isinstance(alert, lt.hash_failed_alert):
            f.hash_failures += 1
            log.warning("%s: piece %d failed its hash check", f.job.name, alert.piece_index)
        elif isinstance(alert, lt.metadata_received_alert):
            self.got_metadata(f)
        elif isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
            f.failed = f"libtorrent: {alert.message()}"
        elif isinstance(alert, lt.metadata_failed_alert):
            log.warning("%s: %s", f.job.name, alert.message())
        return True

    def got_metadata(self, f: Fetching) -> None:
        """Check a torrent's paths as soon as they are known (a magnet's, from peers)."""
        if f.metadata:
            return
        f.metadata = True
        meta_bytes = f.job.metainfo or metainfo_of(self.lt, f.handle)
        if meta_bytes is None:
            return
        try:
            meta = mi.parse_torrent(meta_bytes)
        except mi.MetainfoError as exc:
            f.failed = f"the torrent is refused: {exc}"
            return
        name = f"{meta.name}/" if meta.folder else meta.name
        with self.database.write() as s:
            dbt.record_torrent_metadata(
                s,
                f.job.download_id,
                name=name,
                size=meta.size,
                files=len(meta.files),
                piece_size=meta.piece_size,
                metainfo=meta_bytes if f.job.metainfo is None else None,
            )
        f.job = replace(f.job, name=name, size=meta.size, metainfo=meta_bytes)

    # ------------------------------------------------------------ progress

    def flush(self) -> None:
        """Record each download's progress; publish the ones libtorrent has finished."""
        for did, f in list(self.fetching.items()):
            if f.failed is not None:
                self.fail(did, f.failed)
                continue
            st = f.handle.status()
            status = self.record(f, st)
            if status not in dbdl.UNFINISHED:
                continue  # paused or cancelled meanwhile: the next sync takes it out
            if st.has_metadata and st.is_finished and st.total_wanted_done == st.total_wanted:
                self.finish(f)
            elif st.num_peers == 0 and time.monotonic() - f.dialled > REDIAL_SECONDS:
                self.dial(f)

    def record(self, f: Fetching, st: Any) -> str:
        total = int(st.total_payload_download)
        new_received, f.received = max(0, total - f.received), total
        tallies = self.tallies(f)
        failures, f.hash_failures = f.hash_failures, 0
        peers = int(st.num_peers)
        if not st.has_metadata:
            state, reason = Status.WAITING, f"fetching the torrent's metadata ({peers} peers)"
        elif peers == 0:
            state, reason = Status.WAITING, "no BitTorrent peer connected yet"
        else:
            state, reason = Status.ACTIVE, None
        progress = dbjobs.Progress(
            b"", int(st.total_wanted_done), new_received, failures, tallies, [], state, reason
        )
        with self.database.write() as s:
            return dbjobs.record_progress(s, f.job.download_id, progress, now=time.time())

    def count_block(self, f: Fetching, alert: Any) -> None:
        """One alert a 16 KiB block: kept to plain arithmetic (a GiB is 65,536 of them)."""
        ip, port = alert.endpoint if isinstance(alert.endpoint, tuple) else (alert.ip, 0)
        size = BLOCK_SIZE
        if f.last_piece is None:
            info = f.handle.torrent_file()
            if info is not None:
                f.last_piece = (info.num_pieces() - 1, info.piece_size(info.num_pieces() - 1))
        if f.last_piece is not None and alert.piece_index == f.last_piece[0]:
            size = min(BLOCK_SIZE, f.last_piece[1] - alert.block_index * BLOCK_SIZE)
        key = (str(ip), int(port))
        f.peer_bytes[key] = f.peer_bytes.get(key, 0) + size

    def tallies(self, f: Fetching) -> list[dbjobs.SourceTally]:
        """What each peer sent since the last flush (chunks: 16 KiB blocks)."""
        out = [
            dbjobs.SourceTally(ip, port, "", -(-n // BLOCK_SIZE), n, 0)
            for (ip, port), n in f.peer_bytes.items()
        ]
        f.peer_bytes = {}
        return out

    # ------------------------------------------------------------ publishing

    def finish(self, f: Fetching) -> None:
        """Publish a finished download's files into the download folder and index them."""
        did = f.job.download_id
        info = f.handle.torrent_file()
        self.fetching.pop(did)
        self.session.remove_torrent(f.handle)  # libtorrent writes nothing more there
        try:
            saved_as, published = self.publish_files(f, info)
        except (PublishError, OSError, TorrentFailed, FileChanged) as exc:
            reason = str(exc) if isinstance(exc, PublishError | TorrentFailed) else (
                f"cannot publish it: {exc}"
            )  # fmt: skip
            self.fail(did, reason)
            return
        with self.database.write(durable=True) as s:  # before the temp folder goes, as above
            dbt.finish_torrent_job(
                s, did, status=Status.DONE, reason=self.lan.source_note(did, len(published)),
                now=time.time(), saved_as=saved_as, published=published,
            )  # fmt: skip
        shutil.rmtree(f.temp, ignore_errors=True)
        log.info("finished %s (download %d): saved as %s", f.job.name, did, saved_as)

    def publish_files(self, f: Fetching, info: Any) -> tuple[str, list[tuple[str, HashedFile]]]:
        """A finished torrent's files into the download folder (see publish_tree).
        Raises PublishError, OSError, TorrentFailed, FileChanged."""
        fs = file_layout(info)
        files = [
            (PurePosixPath(*Path(fs.file_path(i)).parts), int(fs.file_size(i)))
            for i in range(fs.num_files())
            if not fs.file_flags(i) & fs.flag_pad_file
        ]
        return publish_tree(self.settings, f.temp, files)

    def close(self) -> None:
        """Take every download out of the session; each resumes from its folder next run
        (p2pshare peers' jobs see the role's stop flag and leave theirs resumable)."""
        for f in self.fetching.values():
            self.session.remove_torrent(f.handle)
        self.fetching.clear()
        self.lan.close()

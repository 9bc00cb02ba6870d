"""The end of a download: the verified temp file published into the download folder and
recorded as a local file, so this node shares it onward."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from p2pshare.db import jobs as dbjobs
from p2pshare.db.engine import Database
from p2pshare.db.status import Status
from p2pshare.db.values import HashedFile
from p2pshare.services import protocol
from p2pshare.services.downloader.publish import PublishError, publish, safe_destination
from p2pshare.services.settings import Settings

log = logging.getLogger("p2p.download")

# Seconds: mtimes come from a coarse file system clock, requested_at from time.time().
CLOCK_SLACK = 2.0


class JobFailed(Exception):
    """The download cannot finish; the message is the reason shown to the user."""


class CannotPublish(Exception):
    """The verified file cannot go into the download folder now (full, unwritable); the
    temp file is kept, and the message says why."""


class Finisher:
    def __init__(self, spec: dbjobs.JobSpec, settings: Settings, database: Database) -> None:
        self.spec = spec
        self.settings = settings
        self.database = database

    def publish(self, temp: Path, fd: int) -> None:
        """Every chunk verified against the chained manifest proves the file's SHA-256, so the
        temp file is published as it is: no second pass. Raises CannotPublish."""
        os.fsync(fd)

        def remember(path: Path) -> None:
            # Durable before the name is taken: after a power cut that kept the link, a
            # restart must find the download's name, or it fetches the file all over again
            # as "name (1)".
            with self.database.write(durable=True) as s:
                dbjobs.set_saved_as(s, self.spec.download_id, self._relative(path))

        try:
            dest = safe_destination(self.settings.download_dir, self.spec.name)
            final = publish(temp, dest, remember)
        except PublishError as exc:
            # Every byte of it is verified: fetching it again would not fix the folder.
            raise CannotPublish(str(exc)) from None
        self.record_done(final)

    def record_done(self, final: Path) -> None:
        spec = self.spec
        hashed = hashed_file(spec, final.stat())
        with self.database.write(durable=True) as s:  # "done" is what p2pctl reports next
            dbjobs.finish_download(
                s,
                spec.download_id,
                status=Status.DONE,
                reason=None,
                now=time.time(),
                published=(self._relative(final), hashed),
            )
        log.info(
            "download %d done: %s (%d bytes, sha256 %s)",
            spec.download_id,
            final,
            spec.size,
            spec.sha256[:12],
        )

    def already_published(self, temp: Path) -> bool:
        """A crash between publishing and recording it: finish the record, fetch nothing."""
        saved = self.spec.saved_as
        if not saved:
            return False
        path = self.settings.download_dir.resolve() / saved
        if temp.exists() and path.exists() and os.path.samefile(temp, path):
            temp.unlink()
        elif temp.exists() or not path.exists():
            return False
        # Rare (a crash in a window of milliseconds), so a full read is fine here.
        st = path.stat()
        if st.st_size != self.spec.size or _sha256_of(path) != self.spec.sha256:
            if st.st_mtime >= self.spec.requested_at - CLOCK_SLACK:
                self._remove_damaged(path)  # publish anew under its own name
            return False  # else that name holds someone else's file: publish beside it
        self.record_done(path)
        return True

    def _remove_damaged(self, path: Path) -> None:
        """The file this download linked at its recorded name, damaged since (a power cut on
        a file system that lost its bytes): never offered, never left beside the good copy.
        Out of sight first (the indexer skips hidden names), then gone."""
        aside = path.with_name(f".{path.name}.p2p-damaged")
        try:
            os.replace(path, aside)
            aside.unlink()
        except OSError as exc:
            log.warning("cannot remove the damaged %s: %s", path, exc.strerror)
            return
        log.warning(
            "download %d: its published file %s was damaged (a power cut?); fetching it again",
            self.spec.download_id,
            path,
        )

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.settings.download_dir.resolve()).as_posix()


def hashed_file(spec: dbjobs.JobSpec, st: os.stat_result) -> HashedFile:
    """A published file as the index records it; `st` taken after the temp name is gone
    (unlinking it moves ctime)."""
    count = protocol.chunk_count(spec.size, spec.chunk_size)
    return HashedFile(
        st.st_size, st.st_mtime_ns, spec.sha256, spec.chunk_size, spec.chunk_hashes,
        [protocol.chunk_length(spec.size, spec.chunk_size, i) for i in range(count)],
        spec.root, ctime_ns=st.st_ctime_ns, inode=st.st_ino,
    )  # fmt: skip


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()

"""The indexer's check of the download folder: a file a download published is offered only
while it is what the download recorded.

A file the downloader published is indexed when it is recorded done. If the indexer later
finds it with another size, or (its stamp having moved) another SHA-256, while its mtime
is no later than the download's end, nobody changed it on purpose: something (a power
cut on a file system that lost its bytes, a disk) damaged it. It is then not offered:
it is moved aside and removed, the download fails with a sentence saying so, and a new
download in the same request fetches it again. The indexer's first scan at start sees
every such file, since each one's stamp no longer matches its index row.

A file changed after its download ended (a later mtime) is the user's: indexed as it is,
as any file of the download folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from p2pshare.db import repair as dbrepair
from p2pshare.db.engine import Database
from p2pshare.services.server.scan import FoundFile

log = logging.getLogger("p2p.index")

# A file's mtime is set by its last write, before its download is recorded done; later
# than this past the end is a change the user made. Seconds, for coarse file system clocks.
USER_CHANGE_AFTER = 2.0


def screen_published(
    database: Database, folder: Path, todo: list[tuple[str, FoundFile]]
) -> list[tuple[str, FoundFile]]:
    """`todo` (names of the download folder to hash and index) without the published files
    found damaged, each of which is repaired here."""
    with database.read() as s:
        published = dbrepair.published_downloads(s, [name for name, _ in todo])
    if not published:
        return todo
    keep = []
    for name, found in todo:
        p = published.get(name)
        why = damage(found, p) if p is not None else None
        if p is None or why is None:
            keep.append((name, found))
        else:
            refetch(database, folder, p, found, why)
    return keep


def damage(found: FoundFile, p: dbrepair.Published) -> str | None:
    """How the file differs from what its download recorded; None if it does not, or if
    the user changed it since."""
    if found.stamp.mtime_ns / 1e9 > p.finished_at + USER_CHANGE_AFTER:
        return None
    if found.stamp.size != p.size:
        return f"{found.stamp.size} bytes, not {p.size}"
    try:
        with open(found.path, "rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None  # unreadable: the indexer reports it and offers nothing
    return None if sha == p.sha256 else f"sha256 {sha[:12]}, not {p.sha256[:12]}"


def refetch(
    database: Database, folder: Path, p: dbrepair.Published, found: FoundFile, why: str
) -> None:
    """Out of sight first (a hidden name is never indexed), then recorded, then removed: a
    crash at any step leaves nothing damaged on offer and the download to run again."""
    aside = found.path.with_name(f".{found.path.name}.p2p-damaged")
    try:
        os.replace(found.path, aside)
    except OSError as exc:
        log.warning("cannot move aside the damaged %s: %s", found.path, exc.strerror)
        return
    reason = f"its file {p.saved_as} was damaged after it was published ({why})"
    with database.write(durable=True) as s:
        new_id = dbrepair.refetch_damaged(s, p, reason, now=time.time())
    aside.unlink(missing_ok=True)
    log.warning(
        "download %d: %s; not offered, fetching it again as download %d",
        p.download_id,
        reason,
        new_id,
    )

"""The browser share: this node's own indexed files, folder by folder, read-only.

A file is served only if the index lists it (`local_files`), its real path lies inside
its folder once every symlink is resolved, and the open file still is what the index
hashed (size, mtime, ctime, inode): never a path outside the share and download
folders, never bytes nobody verified.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from p2pshare.db.reports import LocalFileRow
from p2pshare.services.settings import Settings
from p2pshare.services.web import ranges
from p2pshare.services.web.context import client_of

log = logging.getLogger("p2p.web")

# URL segment -> local_files.root, and the folder each stands for.
ROOTS = {"shared": "share", "downloads": "download"}
READ_BLOCK = 256 * 1024


class NotShared(Exception):
    """The path names nothing this node shares; the message is one sentence."""


class Changed(Exception):
    """The file changed since it was indexed; its bytes are not the verified ones."""


@dataclass(frozen=True)
class Entry:
    name: str  # one path segment
    folder: bool
    size: int  # file bytes, or the folder's total
    files: int  # 1 for a file, the count under a folder


def root_dir(settings: Settings, root: str) -> Path:
    return settings.share_dir if root == "share" else settings.download_dir


def listing(files: list[LocalFileRow], root: str, prefix: str) -> list[Entry]:
    """The folders and files directly under `prefix` ('' or 'a/b/') of one root, folders
    first. Raises NotShared when no indexed file lies under it."""
    folders: dict[str, list[int]] = {}
    entries: list[Entry] = []
    for f in files:
        if f.root != root or not f.name.startswith(prefix):
            continue
        rest = f.name[len(prefix) :]
        head, slash, _ = rest.partition("/")
        if slash:
            folders.setdefault(head, []).append(f.size)
        else:
            entries.append(Entry(head, False, f.size, 1))
    if prefix and not folders and not entries:
        raise NotShared("No shared folder has that name.")
    out = [Entry(n, True, sum(s), len(s)) for n, s in sorted(folders.items())]
    return out + sorted(entries, key=lambda e: e.name)


def open_verified(settings: Settings, row: LocalFileRow) -> tuple[int, os.stat_result]:
    """An open descriptor on the indexed file and its stat. Raises NotShared, Changed."""
    base = root_dir(settings, row.root).resolve()
    try:
        target = (base / row.name).resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotShared("That file is no longer in its folder.") from None
    if not target.is_relative_to(base) or target == base:
        raise NotShared("That file lies outside the shared folders, so it is not served.")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise NotShared("That file cannot be opened.") from None
    st = os.fstat(fd)
    stale = (
        not stat.S_ISREG(st.st_mode)
        or st.st_size != row.size
        or st.st_mtime_ns != row.mtime_ns
        or (row.inode and st.st_ino != row.inode)
        or (row.ctime_ns and st.st_ctime_ns != row.ctime_ns)
    )
    if stale:
        os.close(fd)
        raise Changed("That file changed since it was indexed; try again in a few seconds.")
    return fd, st


async def read_span(fd: int, start: int, length: int) -> AsyncIterator[bytes]:
    """The bytes start..start+length of `fd`, in blocks read off the event loop; closes fd."""
    try:
        offset, left = start, length
        while left > 0:
            block = await anyio.to_thread.run_sync(os.pread, fd, min(READ_BLOCK, left), offset)
            if not block:
                return  # truncated under us; the client sees a short body and retries
            offset += len(block)
            left -= len(block)
            yield block
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the real one per RFC 6266 / 5987."""
    base = name.rsplit("/", 1)[-1]
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in base
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(base, safe='')}"


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def file_response(request: Request, settings: Settings, row: LocalFileRow) -> Response:
    """The bytes of one shared file (or the span a Range header asks for), streamed from a
    descriptor opened and checked by `open_verified`; a refusal is an HTTPException."""
    try:
        fd, st = open_verified(settings, row)
    except NotShared as exc:
        raise HTTPException(404, str(exc)) from None
    except Changed as exc:
        raise HTTPException(409, str(exc)) from None
    etag = f'"{row.sha256}"'
    headers = {
        "accept-ranges": "bytes",
        "etag": etag,
        "content-disposition": content_disposition(row.name),
        "content-type": mimetypes.guess_type(row.name)[0] or "application/octet-stream",
    }
    if_range = request.headers.get("if-range")
    header = request.headers.get("range") if if_range in (None, etag) else None
    try:
        span = ranges.parse_range(header, st.st_size)
    except ranges.Unsatisfiable:
        _close(fd)
        return Response(b"", status_code=416, headers={"content-range": f"bytes */{st.st_size}"})
    status = 200 if span is None else 206
    start, length = (0, st.st_size) if span is None else (span.start, span.length)
    if span is not None:
        headers["content-range"] = span.content_range(st.st_size)
    headers["content-length"] = str(length)
    if request.method == "HEAD":
        _close(fd)
        return Response(b"", status_code=status, headers=headers)
    log.info(
        "share: %s %s (%d bytes from %d) to %s",
        row.root,
        row.name,
        length,
        start,
        client_of(request),
    )
    return StreamingResponse(read_span(fd, start, length), status_code=status, headers=headers)

"""A download's temp file: its name in the temp folder, and its space reserved up front."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def temp_name(download_id: int, sha256: str) -> str:
    """The temp file of a download of that content: its id first, for the downloader's sweep."""
    return f"{download_id}-{sha256[:16]}.part"


def reserve_space(fd: int, size: int, folder: Path) -> None:
    """Make sure a whole file of `size` fits before fetching any of it. Raises OSError
    (ENOSPC)."""
    if not on_tmpfs(folder):
        os.posix_fallocate(fd, 0, size)  # cheap: unwritten extents
        return
    # On tmpfs fallocate zero-fills memory that the download then overwrites, a cost
    # as large as the hashing's. Check the free space instead; a write
    # that still finds it full fails the job the same way (writer.py).
    st = os.fstatvfs(fd)
    allocated = os.fstat(fd).st_blocks * 512
    if st.f_bavail * st.f_frsize < size - allocated:
        raise OSError(errno.ENOSPC, "no space left on the temp folder's filesystem")


def on_tmpfs(folder: Path) -> bool:
    """Is `folder` on tmpfs (memory), by the longest mount point above it?"""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    real = str(folder.resolve())
    best, fstype = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype == "tmpfs"

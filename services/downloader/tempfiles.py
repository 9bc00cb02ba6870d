"""A download's temp file: its name in the temp folder, and its space reserved up front."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from p2pshare.services.downloader.durable import TMPFS_MAGIC, fs_type


def temp_name(download_id: int, sha256: str) -> str:
    """The temp file of a download of that content: its id first, for the downloader's sweep."""
    return f"{download_id}-{sha256[:16]}.part"


def reserve_space(fd: int, size: int, folder: Path) -> None:
    """Make sure a whole file of `size` fits before fetching any of it. Raises OSError
    (ENOSPC)."""
    if fs_type(folder) != TMPFS_MAGIC:
        os.posix_fallocate(fd, 0, size)  # cheap: unwritten extents
        return
    # On tmpfs fallocate zero-fills memory that the download then overwrites, a cost
    # as large as the hashing's. Check the free space instead; a write
    # that still finds it full fails the job the same way (writer.py).
    st = os.fstatvfs(fd)
    allocated = os.fstat(fd).st_blocks * 512
    if st.f_bavail * st.f_frsize < size - allocated:
        raise OSError(errno.ENOSPC, "no space left on the temp folder's filesystem")

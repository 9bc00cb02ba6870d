"""Making written files durable: one `syncfs` for a group where the file system honours it,
an fsync a file (and a folder) where it does not.

`syncfs(2)` commits every dirty page and inode of one file system in one journal commit:
for a group of hundreds of small files that is far cheaper than an fsync each on ext4,
xfs or btrfs. But the kernel does not pass it on to FUSE file systems (ntfs-3g, mergerfs,
sshfs, rclone, LazyFS: virtiofs aside): there it returns 0 and persists nothing, and a
power cut empties every file of the group. So the file system decides, by its `statfs`
type: the ones known to honour `syncfs` get it, every other one an fsync per file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

# statfs f_type of the file systems whose sync_fs commits what syncfs(2) asks for
# (linux/magic.h). tmpfs and ramfs keep nothing across a power cut whatever is called;
# a batch there keeps its one cheap syncfs. Anything not named here (FUSE's 0x65735546,
# NFS, SMB, ...) is synced file by file.
TMPFS_MAGIC = 0x01021994
SYNCFS_HONOURED = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0xF2F52010: "f2fs",
    0x2FC12FC1: "zfs",
    0xCA451A4E: "bcachefs",
    0x794C7630: "overlayfs",  # syncs its upper file system (ovl_sync_fs, Linux 4.19+)
    TMPFS_MAGIC: "tmpfs",
    0x858458F6: "ramfs",
}
FUSE_SUPER_MAGIC = 0x65735546
# struct statfs is 120 bytes on 64-bit Linux, f_type its first word on every architecture.
STATFS_BUFFER = 256


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    return fn  # type: ignore[no-any-return]


_SYNCFS = _libc_function("syncfs")
_STATFS = _libc_function("statfs")
_honoured: dict[int, bool] = {}  # st_dev -> does syncfs persist there


def fs_type(folder: str | Path) -> int | None:
    """The statfs f_type of the file system holding `folder` (None: unknown)."""
    if _STATFS is None:
        return None
    buf = ctypes.create_string_buffer(STATFS_BUFFER)
    if _STATFS(os.fsencode(folder), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def syncfs_persists(folder: str | Path) -> bool:
    """Does one syncfs(2) on `folder` make everything written to its file system durable?"""
    if _SYNCFS is None:
        return False
    dev = os.stat(folder).st_dev
    if dev not in _honoured:
        _honoured[dev] = fs_type(folder) in SYNCFS_HONOURED
    return _honoured[dev]


def sync_filesystem(folder: str | Path) -> None:
    """syncfs(2) on the file system holding `folder`. Raises OSError. Only where
    syncfs_persists says it does anything."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err or errno.EIO))
    finally:
        os.close(fd)


def fsync_folders(folders: Iterable[str]) -> None:
    """fsync each folder once: the names linked or created in it are durable. Raises OSError."""
    for folder in set(folders):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def folders_up_to(root: str, files: Iterable[str]) -> set[str]:
    """Each file's folder and every folder above it up to `root` (real paths): each holds
    the name of the one below it, which may have just been made."""
    top = root.rstrip("/")
    out: set[str] = set()
    for path in files:
        folder = os.path.dirname(path)
        while folder not in out and len(folder) >= len(top):
            out.add(folder)
            folder = os.path.dirname(folder)
    return out


def write_file(path: str | Path, data: memoryview, *, fsync: bool) -> None:
    """The whole file, from the start, in one thread (never two writers on one file);
    fsync: durable before this returns (in the source's thread, beside its receiving)."""
    # As any program writes a file (the umask decides): it is published as it is.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)

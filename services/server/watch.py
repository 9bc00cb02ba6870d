"""inotify on every shared folder: which names changed, so the indexer looks at those only.

A rescan stats every shared file; with a watch, a change is seen as it happens and costs
what changed, and the whole share is rescanned only now and then (role.index_loop says
how often), for what a watch cannot see (another host writing to a network file system).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pshare.db.watch import inotify_instance

log = logging.getLogger("p2p.index")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

# What can change a file's content, stamp or presence. IN_MODIFY as well as
# IN_CLOSE_WRITE: a file written through a handle kept open (a log, a VM image) is
# otherwise seen only by the next whole rescan; unread repeats of it coalesce in the kernel.
MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
)  # fmt: skip
READ_BYTES = 256 * 1024


# File systems whose files other hosts change: inotify reports only what this host does,
# so a share on one is rescanned as without a watch (mount types as /proc/self/mounts
# names them; FUSE ones by their subtype).
REMOTE_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre",
     "davfs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs"}
)  # fmt: skip
MOUNTS = "/proc/self/mounts"
OCTAL = re.compile(r"\\([0-7]{3})")


def remote_file_system(path: Path, mounts: str = MOUNTS) -> str | None:
    """The type of the network file system holding path, or None (local, or unknown)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces and the like in a mount point are octal escapes (\040).
        point = OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in REMOTE_TYPES else None


@dataclass
class Changes:
    """What the events read so far name: per root label, relative names (of files or
    folders) to look at again; `lost` when the kernel dropped events or a folder could
    not be watched, so only a whole rescan is sure to see everything."""

    names: dict[str, set[str]] = field(default_factory=dict)
    lost: bool = False

    def __bool__(self) -> bool:
        return self.lost or any(self.names.values())

    def add(self, label: str, name: str) -> None:
        self.names.setdefault(label, set()).add(name)


class FolderWatch:
    """One inotify instance watching folders; `fd` is readable when events wait."""

    def __init__(self, fd: int, add: Any) -> None:
        self.fd = fd
        self._add = add
        # wd -> (root label, the folder's names' prefix: '' or 'a/b/')
        self._folders: dict[int, tuple[str, str]] = {}
        self.full = False  # a folder could not be watched (the per-user limit)

    @classmethod
    def open(cls) -> FolderWatch | None:
        """None where inotify is missing (not Linux) or no instance is left: then the
        indexer rescans the whole share, paced, as without a watch."""
        try:
            instance = inotify_instance()
        except OSError as exc:
            log.warning(
                "cannot watch the shared folders (%s): rescanning them instead", exc.strerror
            )
            return None
        return None if instance is None else cls(*instance)

    @property
    def folders(self) -> int:
        return len(self._folders)

    def watch(self, label: str, path: str, prefix: str) -> None:
        """Watch the folder at path, whose names are `prefix` + name under root `label`.
        Watching a folder again (each rescan does) costs one system call and no memory."""
        wd = self._add(self.fd, os.fsencode(path), MASK)
        if wd >= 0:
            self._folders[wd] = (label, prefix)
            return
        err = ctypes.get_errno()
        if err == errno.ENOSPC and not self.full:
            self.full = True
            log.warning(
                "cannot watch more folders (fs.inotify.max_user_watches is reached): "
                "the share is rescanned instead; raise that limit to see changes at once"
            )
        # ENOENT/ENOTDIR: gone since the scan read it; its parent's event says so.

    def read(self, changes: Changes) -> None:
        """Add the names the pending events are about to `changes`; returns when none wait."""
        while True:
            try:
                data = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                return
            offset = 0
            while offset + EVENT.size <= len(data):
                wd, mask, _, length = EVENT.unpack_from(data, offset)
                raw = data[offset + EVENT.size : offset + EVENT.size + length]
                offset += EVENT.size + length
                self._event(wd, mask, raw.rstrip(b"\0"), changes)

    def _event(self, wd: int, mask: int, raw: bytes, changes: Changes) -> None:
        if mask & IN_Q_OVERFLOW:
            changes.lost = True
            return
        folder = self._folders.get(wd)
        if folder is None:
            return
        label, prefix = folder
        if not prefix and mask & (IN_IGNORED | IN_MOVE_SELF):
            # A shared folder itself went (or moved): a folder made in its place is seen
            # by a whole scan, which watches it again.
            changes.lost = True
        if mask & IN_IGNORED:  # the folder is gone (or unmounted): its watch with it
            del self._folders[wd]
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            # Its parent's event names it. A moved folder keeps its watch (and its old
            # prefix) until the look at its new name watches it again: the same watch,
            # given its new prefix; events under the old prefix meanwhile find nothing.
            return
        name = os.fsdecode(raw)
        if not name or name.startswith("."):
            return  # hidden names are never shared: no look for an editor's temp file
        changes.add(label, prefix + name)

    def close(self) -> None:
        os.close(self.fd)

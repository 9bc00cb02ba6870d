"""Walk a shared folder and list the files that may be offered, and why others are not."""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from p2pshare.db.values import Stamp
from p2pshare.services.protocol import ProtocolError, check_name


class FoundFile(NamedTuple):
    """A regular file the scan met. A tuple, the cheapest object to make: a scan of a large
    share makes one per file (a Path per file once cost a third of a rescan)."""

    location: str  # the absolute path as scandir gave it
    stamp: Stamp

    @property
    def path(self) -> Path:
        return Path(self.location)


@dataclass
class ScanResult:
    files: dict[str, FoundFile] = field(default_factory=dict)
    # Absolute path -> one sentence saying why it is not offered.
    skipped: dict[str, str] = field(default_factory=dict)
    # Relative name -> why it cannot be shared, or None: every name met in this scan, for
    # the next scan to reuse (see scan_tree's `checked`).
    checked: dict[str, str | None] = field(default_factory=dict)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _bad_name(name: str) -> str | None:
    """Why a relative name cannot go on the network (peers would refuse it), or None."""
    try:
        check_name(name)
    except ProtocolError as exc:
        return f"its name cannot be shared: {exc}"
    return None


def scan_tree(
    root: Path,
    *,
    exclude: Collection[Path] = (),
    checked: Mapping[str, str | None] | None = None,
) -> ScanResult:
    """Every regular file under root, recursively, by '/'-separated relative name.

    Skipped (and listed in `skipped`): symlinks leading outside root or to
    folders, FIFOs, sockets, devices, unreadable folders, names that are not
    UTF-8. Hidden names (starting with '.') and `exclude` paths are left out
    silently: editors and copy tools write their temporary files that way.
    `checked` is a previous scan's `checked`: a name's verdict depends on the name
    alone, so a rescan of a large share checks only the names it has not met.
    """
    result = ScanResult()
    known = checked or {}
    verdicts, files = result.checked, result.files
    real_root = os.path.realpath(root)
    # Normalised once: scandir then gives normalised absolute paths to compare as they are.
    top = os.path.abspath(root)
    excluded = {os.path.abspath(p) for p in exclude}
    me = os.geteuid()
    stack = [(top, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if folder == top and isinstance(exc, FileNotFoundError):
                return result
            result.skipped[folder] = f"folder cannot be read ({exc.strerror})"
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.path in excluded:
                continue
            name = prefix + entry.name
            reason = known[name] if name in known else _bad_name(name)
            verdicts[name] = reason
            if reason is not None:
                result.skipped[entry.path] = reason
                continue
            # The common case inline, without a call per file: a regular file (scandir's
            # d_type says so without a system call) that this process may read, as its
            # mode bits show (access() would be another system call per file).
            if entry.is_file(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    pass  # gone or unreadable since scandir: _visit says which
                else:
                    mode = st.st_mode
                    if stat.S_ISREG(mode) and (
                        mode & stat.S_IROTH or (mode & stat.S_IRUSR and st.st_uid == me) or not me
                    ):
                        files[name] = FoundFile(entry.path, Stamp.of(st))
                        continue
            reason = _visit(entry, name, real_root, stack, result)
            if reason is not None:
                result.skipped[entry.path] = reason
    return result


def _visit(
    entry: os.DirEntry[str],
    name: str,
    real_root: str,
    stack: list[tuple[str, str]],
    result: ScanResult,
) -> str | None:
    """Add one entry to the scan; returns why it is skipped, or None."""
    try:
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not _is_within(target, real_root):
                return "symlink leads outside the shared folder"
            st = os.stat(entry.path)
            if stat.S_ISDIR(st.st_mode):
                # Followed folder links can loop or duplicate the tree.
                return "symlink to a folder is not followed"
        else:
            st = entry.stat(follow_symlinks=False)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        stack.append((entry.path, name + "/"))
        return None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if not os.access(entry.path, os.R_OK):
        return "cannot be read (permission denied)"
    result.files[name] = FoundFile(entry.path, Stamp.of(st))
    return None

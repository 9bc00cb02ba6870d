"""Walk a shared folder and list the files that may be offered, and why others are not."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
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
    start: str = "",
    on_folder: Callable[[str, str], None] | None = None,
    result: ScanResult | None = None,
) -> ScanResult:
    """Every regular file under root, recursively, by '/'-separated relative name.

    Skipped (and listed in `skipped`): symlinks leading outside root or to
    folders, FIFOs, sockets, devices, unreadable folders, names that are not
    UTF-8. Hidden names (starting with '.') and `exclude` paths are left out
    silently: editors and copy tools write their temporary files that way.
    `checked` is a previous scan's `checked`: a name's verdict depends on the name
    alone, so a rescan of a large share checks only the names it has not met.
    `start` (a folder's relative name) scans that folder's tree only; `on_folder` is
    called with each folder's path and its names' prefix ('' or 'a/b/') before it is read;
    `result` is added to rather than a new one made.
    """
    result = ScanResult() if result is None else result
    known = checked or {}
    verdicts, files = result.checked, result.files
    real_root = os.path.realpath(root)
    # Normalised once: scandir then gives normalised absolute paths to compare as they are.
    top = os.path.abspath(root)
    excluded = {os.path.abspath(p) for p in exclude}
    me = os.geteuid()
    stack = [(os.path.join(top, start) if start else top, start + "/" if start else "")]
    while stack:
        folder, prefix = stack.pop()
        if on_folder is not None:
            on_folder(folder, prefix)  # before reading it: what arrives after is an event
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
            reason = _visit(entry.path, name, entry.is_symlink(), real_root, stack, result)
            if reason is not None:
                result.skipped[entry.path] = reason
    return result


def walk_tree(
    root: Path,
    *,
    exclude: Collection[Path] = (),
    on_folder: Callable[[str, str], None] | None = None,
    skipped: dict[str, str] | None = None,
) -> Iterator[tuple[str, FoundFile]]:
    """scan_tree's files one at a time, in the order SQLite sorts their names (UTF-8 byte
    order, which is code point order: a folder's files come where 'folder/' sorts among its
    siblings), so a whole scan can be merged with the index read in name order. It holds
    one folder's entries per level, not the share: a million files cost what a folder
    does. Skips go into `skipped`, as scan_tree's do."""
    skipped = {} if skipped is None else skipped
    real_root = os.path.realpath(root)
    top = os.path.abspath(root)
    excluded = {os.path.abspath(p) for p in exclude}
    me = os.geteuid()
    first = _sorted_entries(top, "", top, excluded, on_folder, skipped)
    stack: list[tuple[Iterator[tuple[str, os.DirEntry[str]]], str]] = [(iter(first), "")]
    while stack:
        entries, prefix = stack[-1]
        item = next(entries, None)
        if item is None:
            stack.pop()
            continue
        entry = item[1]
        name = prefix + entry.name
        reason = _bad_name(name)
        if reason is not None:
            skipped[entry.path] = reason
            continue
        if entry.is_file(follow_symlinks=False):  # the common case inline, as in scan_tree
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                pass
            else:
                mode = st.st_mode
                if stat.S_ISREG(mode) and (
                    mode & stat.S_IROTH or (mode & stat.S_IRUSR and st.st_uid == me) or not me
                ):
                    yield name, FoundFile(entry.path, Stamp.of(st))
                    continue
        folders: list[tuple[str, str]] = []
        one = ScanResult()
        reason = _visit(entry.path, name, entry.is_symlink(), real_root, folders, one)
        if reason is not None:
            skipped[entry.path] = reason
        elif folders:
            path, sub = folders[0]
            inner = _sorted_entries(path, sub, top, excluded, on_folder, skipped)
            stack.append((iter(inner), sub))
        else:
            yield from one.files.items()


def _sorted_entries(
    folder: str,
    prefix: str,
    top: str,
    excluded: set[str],
    on_folder: Callable[[str, str], None] | None,
    skipped: dict[str, str],
) -> list[tuple[str, os.DirEntry[str]]]:
    """A folder's entries to look at (not hidden, not excluded), by the key their names sort
    under: a folder's is its name and '/'."""
    if on_folder is not None:
        on_folder(folder, prefix)  # before reading it: what arrives after is an event
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        if not (folder == top and isinstance(exc, FileNotFoundError)):
            skipped[folder] = f"folder cannot be read ({exc.strerror})"
        return []
    keyed = []
    for entry in entries:
        if entry.name.startswith(".") or entry.path in excluded:
            continue
        try:
            folder_like = entry.is_dir(follow_symlinks=False)
        except OSError:
            folder_like = False
        keyed.append((entry.name + "/" if folder_like else entry.name, entry))
    keyed.sort(key=_first)
    return keyed


def _first(item: tuple[str, os.DirEntry[str]]) -> str:
    return item[0]


def scan_names(
    root: Path,
    names: Iterable[str],
    *,
    exclude: Collection[Path] = (),
    on_folder: Callable[[str, str], None] | None = None,
) -> ScanResult:
    """These relative names as a whole scan would find them: a file, a folder's whole
    tree, or nothing (gone, hidden, excluded; or skipped, with its reason). For a watch's
    events: what changed is looked at, not the share."""
    result = ScanResult()
    real_root = os.path.realpath(root)
    top = os.path.abspath(root)
    excluded = {os.path.abspath(p) for p in exclude}
    for name in names:
        path = os.path.join(top, name)
        if any(part.startswith(".") for part in name.split("/")) or path in excluded:
            continue
        reason = _bad_name(name)
        result.checked[name] = reason
        if reason is None:
            try:
                is_link = stat.S_ISLNK(os.lstat(path).st_mode)
            except FileNotFoundError:
                continue  # gone
            except OSError as exc:
                reason = f"cannot be read ({exc.strerror})"
            else:
                stack: list[tuple[str, str]] = []
                reason = _visit(path, name, is_link, real_root, stack, result)
                if stack:  # a folder: its tree
                    scan_tree(root, exclude=exclude, start=name, on_folder=on_folder, result=result)
        if reason is not None:
            result.skipped[path] = reason
    return result


def _visit(
    path: str,
    name: str,
    is_link: bool,
    real_root: str,
    stack: list[tuple[str, str]],
    result: ScanResult,
) -> str | None:
    """Add one entry to the scan (a folder to the stack); returns why it is skipped, or None."""
    try:
        if is_link:
            target = os.path.realpath(path)
            if not _is_within(target, real_root):
                return "symlink leads outside the shared folder"
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                # Followed folder links can loop or duplicate the tree.
                return "symlink to a folder is not followed"
        else:
            st = os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        stack.append((path, name + "/"))
        return None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    result.files[name] = FoundFile(path, Stamp.of(st))
    return None

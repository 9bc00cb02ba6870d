"""Walk a shared folder and list the files that may be offered, and why others are not."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from p2pshare.db.values import Stamp
from p2pshare.services.protocol import ProtocolError, check_name

# Folders below the root are opened through their parent's descriptor and never through a
# symlink: a folder swapped for a link between its parent's listing and its own is not
# entered, and no path is looked up again between a listing and what it lists.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The root itself may be a symlink: the user chose it.
ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class FoundFile(NamedTuple):
    """A regular file the scan met. A tuple, the cheapest object to make: a scan of a large
    share makes one per file, so what each costs to make is paid a million times over."""

    # Its absolute path: the root's path and its name (for a symlink to a file of the
    # share, the real path of that file).
    location: str
    stamp: Stamp
    # With stamp.inode, which file this is on the machine, whatever path leads to it: what
    # hashing checks it opened (hash_file's `device`).
    device: int

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


def _folder_error(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # it became a link (or a file) meanwhile
        return "symlink to a folder is not followed"
    return f"folder cannot be read ({exc.strerror})"


@dataclass
class _Scan:
    """One scan of one root: the root's descriptor and what every folder's listing needs."""

    top: str  # the root's absolute path, as the names of what it holds begin
    root_fd: int
    excluded: set[str]
    on_folder: Callable[[str, str], None] | None
    skipped: dict[str, str]
    known: Mapping[str, str | None] = field(default_factory=dict)
    verdicts: dict[str, str | None] | None = None  # the names met, when kept (scan_tree)
    real_root: str = ""
    me: int = field(default_factory=os.geteuid)

    @classmethod
    def open(
        cls,
        root: Path,
        exclude: Collection[Path],
        on_folder: Callable[[str, str], None] | None,
        skipped: dict[str, str],
    ) -> _Scan | None:
        """The root opened, or None (noted in `skipped` unless it does not exist)."""
        top = os.path.abspath(root)
        try:
            fd = os.open(top, ROOT_FLAGS)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                skipped[top] = f"folder cannot be read ({exc.strerror})"
            return None
        excluded = {os.path.abspath(p) for p in exclude}
        return cls(top, fd, excluded, on_folder, skipped, real_root=os.path.realpath(top))

    def close(self) -> None:
        os.close(self.root_fd)

    def verdict(self, name: str) -> str | None:
        reason = self.known[name] if name in self.known else _bad_name(name)
        if self.verdicts is not None:
            self.verdicts[name] = reason
        return reason

    def walk(self, fd: int, folder: str, prefix: str) -> Iterator[tuple[str, FoundFile]]:
        """Every file in the open folder `fd` (at path `folder`, its names starting with
        `prefix`) and below, in the order SQLite sorts their names (UTF-8 byte order, which
        is code point order: a folder's files come where 'folder/' sorts among its
        siblings). Holds one folder's entries (and descriptor) per level, not the tree: a
        million files cost what a folder does. Closes `fd`."""
        stack = [(iter(self._sorted_entries(fd, folder, prefix)), prefix, fd, folder)]
        try:
            while stack:
                entries, prefix, fd, folder = stack[-1]
                item = next(entries, None)
                if item is None:
                    stack.pop()
                    os.close(fd)
                    continue
                entry = item[1]
                name = prefix + entry.name
                path = f"{folder}/{entry.name}" if folder != "/" else f"/{entry.name}"
                reason = self.verdict(name)
                if reason is not None:
                    self.skipped[path] = reason
                    continue
                # The common case inline, without a call per file: a regular file (scandir's
                # d_type says so without a system call; its stat is an fstatat on the
                # folder's descriptor) that this process may read, as its mode bits show
                # (access() would be another system call per file).
                if entry.is_file(follow_symlinks=False):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        pass  # gone or unreadable since the listing: _other says which
                    else:
                        mode = st.st_mode
                        if stat.S_ISREG(mode) and (
                            mode & stat.S_IROTH
                            or (mode & stat.S_IRUSR and st.st_uid == self.me)
                            or not self.me
                        ):
                            yield name, FoundFile(path, Stamp.of(st), st.st_dev)
                            continue
                elif entry.is_dir(follow_symlinks=False):
                    try:
                        inner = os.open(entry.name, FOLDER_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        self.skipped[path] = _folder_error(exc)
                        continue
                    sub = name + "/"
                    stack.append((iter(self._sorted_entries(inner, path, sub)), sub, inner, path))
                    continue
                reason, found = self._other(fd, entry.name, path)
                if found is not None:
                    yield name, found
                elif reason is not None:
                    self.skipped[path] = reason
        finally:
            for _, _, fd, _ in stack:
                os.close(fd)

    def _sorted_entries(
        self, fd: int, folder: str, prefix: str
    ) -> list[tuple[str, os.DirEntry[str]]]:
        """A folder's entries to look at (not hidden, not excluded), by the key their names
        sort under: a folder's is its name and '/'."""
        if self.on_folder is not None:
            self.on_folder(folder, prefix)  # before reading it: what arrives after is an event
        try:
            entries = list(os.scandir(fd))
        except OSError as exc:
            self.skipped[folder] = f"folder cannot be read ({exc.strerror})"
            return []
        base = folder.rstrip("/") + "/"
        keyed = []
        for entry in entries:
            if entry.name.startswith(".") or (self.excluded and base + entry.name in self.excluded):
                continue
            try:
                folder_like = entry.is_dir(follow_symlinks=False)
            except OSError:
                folder_like = False
            keyed.append((entry.name + "/" if folder_like else entry.name, entry))
        keyed.sort(key=_first)
        return keyed

    def _other(self, fd: int, leaf: str, path: str) -> tuple[str | None, FoundFile | None]:
        """An entry of the open folder `fd` that is not plainly a readable regular file: a
        symlink, a FIFO, an unreadable file. Returns (why it is skipped, None) or (None, the
        file), or (None, None) for one gone since the listing."""
        try:
            st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return f"cannot be read ({exc.strerror})", None
        if stat.S_ISLNK(st.st_mode):
            return self._linked(path)
        if stat.S_ISDIR(st.st_mode):  # a file swapped for a folder since the listing
            return None, None  # the next look lists it
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file (FIFO, socket or device)", None
        if not os.access(leaf, os.R_OK, dir_fd=fd):
            return "cannot be read (permission denied)", None
        return None, FoundFile(path, Stamp.of(st), st.st_dev)

    def _linked(self, path: str) -> tuple[str | None, FoundFile | None]:
        """A symlink: the file of the share it leads to, found again from the root through
        no link at all, so a link cannot lead outside however its path changes meanwhile."""
        target = os.path.realpath(path)
        if not _is_within(target, self.real_root):
            return "symlink leads outside the shared folder", None
        if target == self.real_root:
            return "symlink to a folder is not followed", None
        parts = os.path.relpath(target, self.real_root).split(os.sep)
        try:
            st = _stat_beneath(self.root_fd, parts)
        except FileNotFoundError:
            return "cannot be read (No such file or directory)", None
        except OSError as exc:
            return f"cannot be read ({exc.strerror})", None
        if stat.S_ISDIR(st.st_mode):
            # Followed folder links can loop or duplicate the tree.
            return "symlink to a folder is not followed", None
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file (FIFO, socket or device)", None
        if not os.access(target, os.R_OK):
            return "cannot be read (permission denied)", None
        return None, FoundFile(target, Stamp.of(st), st.st_dev)


def _first(item: tuple[str, os.DirEntry[str]]) -> str:
    return item[0]


def _open_folder_beneath(root_fd: int, parts: list[str]) -> int:
    """The folder root/parts[0]/... opened through no symlink; the caller closes it.
    Raises OSError (ELOOP or ENOTDIR where a part is a link or a file)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            inner = os.open(part, FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(folder: Path, name: str) -> int:
    """The file `name` ('/'-separated) of `folder` opened for reading through no symlink:
    each of its folders opened through the last one's descriptor with O_NOFOLLOW, from
    `folder`'s own (which may be a link: the user chose it). A symlink to a file inside
    `folder` (the index offers one under the link's name) is followed only as far as it
    leads there, and then opened the same way. The caller closes the descriptor. Raises
    OSError (PermissionError for a link leading outside)."""
    root_fd = os.open(folder, ROOT_FLAGS)
    try:
        try:
            return _open_file_beneath(root_fd, name.split("/"))
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        # A link on the way: where it all leads now, if that is inside the folder.
        target = os.path.realpath(os.path.join(folder, name))
        real_root = os.path.realpath(folder)
        if target == real_root or not _is_within(target, real_root):
            raise PermissionError(errno.EACCES, "it leads outside its folder")
        return _open_file_beneath(root_fd, os.path.relpath(target, real_root).split(os.sep))
    finally:
        os.close(root_fd)


def _open_file_beneath(root_fd: int, parts: list[str]) -> int:
    fd = _open_folder_beneath(root_fd, parts[:-1])
    try:
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _stat_beneath(root_fd: int, parts: list[str]) -> os.stat_result:
    """lstat of root/parts[0]/.../parts[-1], its folders opened through no symlink."""
    fd = _open_folder_beneath(root_fd, parts[:-1])
    try:
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def scan_tree(
    root: Path,
    *,
    exclude: Collection[Path] = (),
    checked: Mapping[str, str | None] | None = None,
    on_folder: Callable[[str, str], None] | None = None,
) -> ScanResult:
    """Every regular file under root, recursively, by '/'-separated relative name.

    Skipped (and listed in `skipped`): symlinks leading outside root or to
    folders, FIFOs, sockets, devices, unreadable folders, names that are not
    UTF-8. Hidden names (starting with '.') and `exclude` paths are left out
    silently: editors and copy tools write their temporary files that way.
    `checked` is a previous scan's `checked`: a name's verdict depends on the name
    alone, so a rescan of a large share checks only the names it has not met.
    `on_folder` is called with each folder's path and its names' prefix ('' or 'a/b/')
    before it is read.
    """
    result = ScanResult()
    scan = _Scan.open(root, exclude, on_folder, result.skipped)
    if scan is None:
        return result
    scan.known, scan.verdicts = checked or {}, result.checked
    try:
        result.files.update(scan.walk(os.dup(scan.root_fd), scan.top, ""))
    finally:
        scan.close()
    return result


def walk_tree(
    root: Path,
    *,
    exclude: Collection[Path] = (),
    on_folder: Callable[[str, str], None] | None = None,
    skipped: dict[str, str] | None = None,
) -> Iterator[tuple[str, FoundFile]]:
    """scan_tree's files one at a time, in the order SQLite sorts their names, so a whole
    scan can be merged with the index read in name order (see _Scan.walk). Skips go into
    `skipped`, as scan_tree's do."""
    scan = _Scan.open(root, exclude, on_folder, {} if skipped is None else skipped)
    if scan is None:
        return
    try:
        yield from scan.walk(os.dup(scan.root_fd), scan.top, "")
    finally:
        scan.close()


def scan_names(
    root: Path,
    names: Iterable[str],
    *,
    exclude: Collection[Path] = (),
    on_folder: Callable[[str, str], None] | None = None,
) -> ScanResult:
    """These relative names as a whole scan would find them: a file, a folder's whole
    tree, or nothing (gone, hidden, excluded, below a folder link; or skipped, with its
    reason). For a watch's events: what changed is looked at, not the share. Each is
    reached from the root's descriptor through no symlink, as a whole scan reaches it."""
    result = ScanResult()
    scan = _Scan.open(root, exclude, on_folder, result.skipped)
    if scan is None:
        return result
    try:
        for name in names:
            _scan_name(scan, name, result)
    finally:
        scan.close()
    return result


def _scan_name(scan: _Scan, name: str, result: ScanResult) -> None:
    path = f"{scan.top.rstrip('/')}/{name}"
    parts = name.split("/")
    if any(part.startswith(".") for part in parts) or path in scan.excluded:
        return
    reason = _bad_name(name)
    result.checked[name] = reason
    if reason is not None:
        result.skipped[path] = reason
        return
    try:
        fd = _open_folder_beneath(scan.root_fd, parts[:-1])
    except OSError:
        return  # gone, or below what is now a link or a file: nothing there to offer
    try:
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # gone
        except OSError as exc:
            result.skipped[path] = f"cannot be read ({exc.strerror})"
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                inner = os.open(parts[-1], FOLDER_FLAGS, dir_fd=fd)
            except OSError as exc:
                result.skipped[path] = _folder_error(exc)
                return
            result.files.update(scan.walk(inner, path, name + "/"))
            return
        reason, found = scan._other(fd, parts[-1], path)
    finally:
        os.close(fd)
    if found is not None:
        result.files[name] = found
    elif reason is not None:
        result.skipped[path] = reason

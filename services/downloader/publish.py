"""Putting a verified file into the download folder: whole, never overwriting, never outside."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from p2pshare.services.protocol import ProtocolError, check_name

MAX_COPIES = 1000
ROOT = ""  # the download folder's own key in a `checked` map


class PublishError(Exception):
    """The file cannot be published; the message is one sentence."""


def safe_destination(
    download_dir: Path, name: str, *, checked: dict[str, str] | None = None
) -> Path:
    """download_dir/name, refusing any name that would land outside it. Raises PublishError.
    See safe_folder, which this completes with the file's own name."""
    return Path(safe_folder(download_dir, name, checked=checked), name.rsplit("/", 1)[-1])


def safe_folder(download_dir: Path, name: str, *, checked: dict[str, str] | None = None) -> str:
    """The real folder that download_dir/name goes in, made if missing, as a string;
    refusing any name that would land outside the download folder. Raises PublishError.

    `checked` remembers folders already made and found inside (a folder's name, as in
    "album/2024", -> its real path; the download folder's own under ""), for a caller
    placing many files at once: a folder of ten thousand files in hundreds of folders is
    then checked a folder at a time, each from its checked parent (an lstat and a mkdir),
    where resolving each from the root costs an lstat a component, twice, more than the
    small file's own link. Strings, not Paths: pathlib's parsing costs more than the
    syscalls."""
    try:
        check_name(name)
    except ProtocolError as exc:
        raise PublishError(f"refusing the name {name!r}: {exc}") from None
    checked = {} if checked is None else checked
    if ROOT not in checked:
        checked[ROOT] = str(download_dir.resolve())
    root = checked[ROOT]
    parts = name.split("/")[:-1]  # no empty, "." or ".." part: check_name refused those
    done = next(i for i in range(len(parts), -1, -1) if "/".join(parts[:i]) in checked)
    folder = checked["/".join(parts[:done])]
    for i in range(done, len(parts)):
        # A folder in the download dir may be a symlink leading out: check each
        # one before creating anything below it.
        folder = os.path.join(folder, parts[i])
        if os.path.islink(folder):
            folder = os.path.realpath(folder)
            if not within(folder, root):
                raise PublishError(
                    f"refusing the name {name!r}: it leads outside the download folder"
                )
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise PublishError(f"cannot create the folder {folder}: it is a file") from None
        except OSError as exc:
            raise PublishError(f"cannot create the folder {folder}: {exc.strerror}") from None
        checked["/".join(parts[: i + 1])] = folder
    return folder


def within(path: str, root: str) -> bool:
    """Is `path` the folder `root` or below it (both real, absolute paths)?"""
    return path == root or path.startswith(root.rstrip("/") + "/")


def numbered(dest: Path) -> Iterator[Path]:
    """dest, then 'stem (1).ext', 'stem (2).ext', ..."""
    return (dest.with_name(name) for name in copy_names(dest.name))


def copy_names(filename: str) -> Iterator[str]:
    """filename, then 'stem (1).ext', 'stem (2).ext', ... (the suffix as pathlib's: the
    last dot's, unless the name starts or ends with it)."""
    yield filename
    dot = filename.rfind(".")
    suffix = filename[dot:] if 0 < dot < len(filename) - 1 else ""
    stem = filename[: len(filename) - len(suffix)]
    for n in range(1, MAX_COPIES):
        yield f"{stem} ({n}){suffix}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_no_clobber(src: Path, dest: Path, choose: Callable[[Path], None]) -> Path:
    """Hard-link src at the first free numbered name; `choose` is told each name first."""
    for candidate in numbered(dest):
        if candidate.exists() or candidate.is_symlink():
            continue
        choose(candidate)
        try:
            os.link(src, candidate)  # fails rather than replacing an existing name
        except FileExistsError:
            continue
        return candidate
    raise PublishError(f"{MAX_COPIES} files named like {dest.name} exist already")


def publish(temp: Path, dest: Path, choose: Callable[[Path], None]) -> Path:
    """Make the fsynced temp file appear at dest (or a numbered name) in one atomic step.

    `choose(path)` is called before the name is taken, so a crash in between can
    be recognised on restart. Raises PublishError (disk full, bad folder).
    """
    try:
        try:
            final = _link_no_clobber(temp, dest, choose)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            final = _copy_then_link(temp, dest, choose)
        _fsync_dir(final.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PublishError(f"the download folder is full: {exc.strerror}") from None
        raise PublishError(f"cannot write into the download folder: {exc.strerror}") from None
    temp.unlink(missing_ok=True)
    return final


def _copy_then_link(temp: Path, dest: Path, choose: Callable[[Path], None]) -> Path:
    """For a download folder on another filesystem: copy beside it under a hidden name first."""
    partial = dest.with_name(f".{dest.name}.p2p-partial")
    try:
        shutil.copyfile(temp, partial)
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        return _link_no_clobber(partial, dest, choose)
    finally:
        partial.unlink(missing_ok=True)

"""What of a node is its user's alone, against the other users of the same machine.

The home and what the node keeps there (its database and WAL, logs, identity key, web
token, recorded settings) are private to the user: folders 0700, files 0600, the roles
and supervisord run with umask 077, and a home made by an older version is made private
at start. And the node's secrets are never offered, whatever the share holds: a file of
the share that is one of them (the very file, a hard link, or a symlink to it, when the
home lies inside the share) is left out of the index (`without_secrets`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pshare.services.server.scan import FoundFile
    from p2pshare.services.settings import Settings

NODE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# The home's files that hold the node's secrets, or what it did and for whom.
SECRET_NAMES = ("p2p.db", "p2p.db-wal", "p2p.db-shm", "p2p.db-journal", "p2p.toml", "web-token")
SECRET_REASON = "it is this node's own private file (key, token, database, settings or log)"


def private_folders(settings: Settings) -> tuple[Path, ...]:
    return (settings.home, settings.temp_dir, settings.log_dir, settings.identity_dir)


def home_files(settings: Settings) -> list[Path]:
    """The node's private files in its home as they are now (the logs rotate, so they are
    listed)."""
    files = [settings.home / name for name in SECRET_NAMES]
    for folder in (settings.identity_dir, settings.log_dir):
        with contextlib.suppress(OSError):
            files += [Path(e.path) for e in os.scandir(folder)]
    return files


def secret_files(settings: Settings) -> list[Path]:
    """The files never to share: the home's private ones and a config file elsewhere
    (P2P_CONFIG), which may hold the key."""
    config = [] if settings.config_file is None else [settings.config_file]
    return [*home_files(settings), *config]


def make_private(settings: Settings) -> None:
    """Take group and others' access away from the home's folders and private files that
    this user owns (a home made before they were private). Raises OSError."""
    me = os.geteuid()
    for path, mode in [
        *((p, PRIVATE_DIR_MODE) for p in private_folders(settings)),
        *((p, PRIVATE_FILE_MODE) for p in home_files(settings)),
    ]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        # A symlink is left alone (chmod would follow it to whatever it names).
        if st.st_uid == me and not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def secret_ids(settings: Settings) -> frozenset[tuple[int, int]]:
    """(device, inode) of each of the node's private files: what a hard link or a symlink
    to one shares with it."""
    ids = set()
    for path in secret_files(settings):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            ids.add((st.st_dev, st.st_ino))
    return frozenset(ids)


def _same_device(found: FoundFile, ids: frozenset[tuple[int, int]]) -> bool:
    """Whether a file whose inode is a secret's is on the secret's device too."""
    try:
        st = os.stat(found.location)
    except OSError:
        return True  # gone or unreadable: not offered either way
    return (st.st_dev, st.st_ino) in ids


def without_secrets(
    found: Iterable[tuple[str, FoundFile]], settings: Settings, skipped: dict[str, str]
) -> Iterator[tuple[str, FoundFile]]:
    """The files a scan found (a symlink's stamp is its target's), but for the node's
    secrets, each noted in `skipped`. The inode narrows it down for free; only a file
    with a secret's inode costs a stat, for its device."""
    ids = secret_ids(settings)
    inodes = {ino for _, ino in ids}
    for name, file in found:
        if file.stamp.inode in inodes and _same_device(file, ids):
            skipped[file.location] = SECRET_REASON
            continue
        yield name, file

"""Durability chosen per write, and how a folder's file system is made durable.

What survives a real power cut is tested in tests/reliability/test_power_loss.py (LazyFS);
here, that each write runs at the level it asked for and the file system is told apart.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from p2pshare.db.engine import Database
from p2pshare.db.pragmas import FULL, NORMAL
from p2pshare.services.downloader import durable
from p2pshare.services.server.served import ServedDurably


def level(session_or_conn: object) -> int:
    if isinstance(session_or_conn, sqlite3.Connection):
        return int(session_or_conn.execute("PRAGMA synchronous").fetchone()[0])
    return int(session_or_conn.execute(text("PRAGMA synchronous")).scalar_one())  # type: ignore[attr-defined]


def test_a_durable_write_is_full_and_the_next_plain_one_normal_again(db: Database) -> None:
    # One pooled connection serves them all in turn, so a level left behind would show.
    for _ in range(3):
        with db.write(durable=True) as s:
            assert level(s) == FULL
        with db.write() as s:
            assert level(s) == NORMAL
        with db.read() as s:
            assert level(s) == NORMAL


def test_a_failed_durable_write_leaves_the_connection_normal(db: Database) -> None:
    with pytest.raises(RuntimeError), db.write(durable=True) as s:
        raise RuntimeError("refused")
    with db.write() as s:
        assert level(s) == NORMAL


def test_p2pctl_durable_writing_is_full_then_normal(db: Database, tmp_path: Path) -> None:
    ctl_db = Database.open_existing(tmp_path / "p2p.db")  # as p2pctl opens it
    try:
        with ctl_db.write(durable=True) as c:
            assert level(c) == FULL
        with ctl_db.read() as c:
            assert level(c) == NORMAL
        with ctl_db.write() as c:
            assert level(c) == NORMAL
        with pytest.raises(RuntimeError), ctl_db.write(durable=True):
            raise RuntimeError("refused")
        with ctl_db.read() as c:
            assert level(c) == NORMAL
    finally:
        ctl_db.close()


def _mount_type(folder: str) -> str:
    """The type /proc/self/mounts gives the longest mount point above folder."""
    best, fstype = "", ""
    real = os.path.realpath(folder)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point, kind = line.split()[1:3]
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, fstype = point, kind
    return fstype


def test_statfs_tells_tmpfs_and_the_disk_apart(tmp_path: Path) -> None:
    if _mount_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not tmpfs here")
    assert durable.fs_type("/dev/shm") == 0x01021994
    assert durable.syncfs_persists("/dev/shm")
    kind = _mount_type(str(tmp_path))
    if kind not in ("ext4", "xfs", "btrfs", "overlay", "tmpfs"):
        pytest.skip(f"the temp folder is on {kind}")
    assert durable.fs_type(tmp_path) in durable.SYNCFS_HONOURED
    assert durable.fs_type(tmp_path / "missing") is None


def test_write_file_writes_the_whole_file_with_or_without_fsync(tmp_path: Path) -> None:
    data = os.urandom(70_000)
    for fsync in (False, True):
        path = tmp_path / f"f{fsync}"
        durable.write_file(path, memoryview(data), fsync=fsync)
        assert path.read_bytes() == data
    durable.fsync_folders([str(tmp_path), str(tmp_path)])


def test_a_catalog_version_is_made_durable_once_before_it_is_served(db: Database) -> None:
    served = ServedDurably(db)
    writes = db.write_count
    served(5)
    assert db.write_count == writes + 1  # a durable commit: every earlier one survives too
    served(5)
    served(3)
    assert db.write_count == writes + 1  # already durable: no fsync per peer
    served(6)
    assert db.write_count == writes + 2


def test_the_folders_to_fsync_are_each_files_and_those_above_it_up_to_the_root() -> None:
    files = ["/d/dl/a/b/c.bin", "/d/dl/x.bin", "/d/dl/a/y.bin"]
    assert durable.folders_up_to("/d/dl/", files) == {"/d/dl", "/d/dl/a", "/d/dl/a/b"}
    assert durable.folders_up_to("/d/dl/", []) == set()

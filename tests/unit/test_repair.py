"""A published download's file found damaged is not offered and is fetched again; one the
user changed after it was published is indexed as it is."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pshare.db import index as dbindex
from p2pshare.db import jobs as dbjobs
from p2pshare.db.engine import Database
from p2pshare.db.values import Stamp
from p2pshare.services.downloader.finish import Finisher
from p2pshare.services.hashing.files import hash_file
from p2pshare.services.server.indexer import ShareIndexer
from p2pshare.services.settings import Settings, load_settings

CS = 16384
DATA = bytes(range(256)) * 300  # 76,800 bytes, 5 chunks


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Settings, Database, ShareIndexer]]:
    settings = load_settings(
        env={
            "P2P_HOME": str(tmp_path),
            "P2P_BROADCAST": "127.255.255.255",
            "P2P_USERNAME": "tester",
            "P2P_CHUNK_SIZE": str(CS),
        }
    )
    settings.make_dirs()
    database = Database.open(tmp_path / "p2p.db")
    yield settings, database, ShareIndexer(database, settings)
    database.close()


def publish(settings: Settings, database: Database, name: str, *, ended: float) -> Path:
    """What the downloader leaves: the file, its local_files row, a done download."""
    path = settings.download_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DATA)
    os.utime(path, (ended - 5, ended - 5))
    hashed = hash_file(path, CS, expect=Stamp.of(path.stat()))
    with database.write() as s:
        ids = dbindex.record_local_files(s, "download", [(name, hashed)], now=ended)
    conn = sqlite3.connect(database.path)
    with conn:
        conn.execute(
            "INSERT INTO downloads (file_id, name, sha256, size, status, pinned, requested_at,"
            " started_at, finished_at, bytes_done, bytes_received, bad_chunks, have, saved_as)"
            " VALUES (?, ?, ?, ?, 'done', 0, ?, ?, ?, ?, ?, 0, x'f8', ?)",
            (ids[hashed.key], name, hashed.sha256, len(DATA), ended, ended, ended, len(DATA),
             len(DATA), name),
        )  # fmt: skip
    conn.close()
    return path


def rows(database: Database, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(database.path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def offered(database: Database) -> dict[str, int]:
    return dict(
        rows(database, "SELECT name, size FROM local_files WHERE root = 'download'")  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b""), id="emptied"),
        pytest.param(lambda p: p.write_bytes(b"\0" * len(DATA)), id="zeroed-same-size"),
    ],
)
def test_a_damaged_published_file_is_not_offered_and_is_fetched_again(
    node: tuple[Settings, Database, ShareIndexer], damage: object
) -> None:
    settings, database, indexer = node
    ended = time.time() - 60
    path = publish(settings, database, "album/a.bin", ended=ended)
    indexer.step(now=time.time() + 5)
    assert offered(database) == {"album/a.bin": len(DATA)}

    damage(path)  # type: ignore[operator]
    os.utime(path, (ended - 5, ended - 5))  # as a power cut leaves it: written before the end
    indexer.step(now=time.time() + 5)

    assert offered(database) == {}
    assert not path.exists()
    assert not [p for p in path.parent.iterdir()]  # nor the damaged copy, moved aside
    old, new = rows(
        database, "SELECT id, status, reason, saved_as, sha256 FROM downloads ORDER BY id"
    )
    assert old[1] == "failed" and "damaged after it was published" in str(old[2])
    assert f"as download {new[0]}" in str(old[2])
    assert new[1:4] == ("queued", None, None) and new[4] == old[4]


def test_a_file_the_user_changed_after_the_download_is_indexed_as_it_is(
    node: tuple[Settings, Database, ShareIndexer],
) -> None:
    settings, database, indexer = node
    path = publish(settings, database, "b.bin", ended=time.time() - 60)
    indexer.step(now=time.time() + 5)
    path.write_bytes(b"my own notes")  # mtime now: after the download ended
    indexer.step(now=time.time() + 5)
    assert offered(database) == {"b.bin": len(b"my own notes")}
    assert rows(database, "SELECT status FROM downloads") == [("done",)]


def test_an_intact_published_file_stays_offered_when_only_its_stamp_moved(
    node: tuple[Settings, Database, ShareIndexer],
) -> None:
    settings, database, indexer = node
    ended = time.time() - 60
    path = publish(settings, database, "c.bin", ended=ended)
    indexer.step(now=time.time() + 5)
    os.utime(path, (ended - 3, ended - 3))
    indexer.step(now=time.time() + 5)
    assert offered(database) == {"c.bin": len(DATA)}
    assert rows(database, "SELECT status FROM downloads") == [("done",)]


def resuming_spec(saved_as: str, *, requested_at: float) -> dbjobs.JobSpec:
    """A download that recorded its name, linked its file there and never recorded done."""
    sha = hashlib.sha256(DATA).hexdigest()
    return dbjobs.JobSpec(
        1, 1, saved_as, sha, len(DATA), CS, "", [], b"", None, saved_as, "active", requested_at
    )


def test_a_resumed_download_removes_the_damaged_copy_it_published_and_publishes_anew(
    node: tuple[Settings, Database, ShareIndexer], tmp_path: Path
) -> None:
    settings, database, _ = node
    path = settings.download_dir / "d.bin"
    path.write_bytes(b"")  # linked before the cut, its bytes lost with it
    finisher = Finisher(resuming_spec("d.bin", requested_at=time.time() - 10), settings, database)
    assert not finisher.already_published(tmp_path / "gone.part")
    assert not path.exists()
    assert not list(settings.download_dir.iterdir())  # nor moved aside and left


def test_a_resumed_download_leaves_an_older_file_at_its_name_alone(
    node: tuple[Settings, Database, ShareIndexer], tmp_path: Path
) -> None:
    settings, database, _ = node
    path = settings.download_dir / "e.bin"
    path.write_bytes(b"someone else's")
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    finisher = Finisher(resuming_spec("e.bin", requested_at=time.time() - 10), settings, database)
    assert not finisher.already_published(tmp_path / "gone.part")
    assert path.read_bytes() == b"someone else's"

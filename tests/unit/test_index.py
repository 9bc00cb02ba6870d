"""The share-folder indexer on a real folder and a real temp-file database."""

from __future__ import annotations

import hashlib
import os
import random
import select
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from p2pshare.db import index as dbindex
from p2pshare.db.engine import Database
from p2pshare.db.schema import downloads
from p2pshare.db.values import Stamp
from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries
from p2pshare.services.hashing.files import hash_file
from p2pshare.services.server import indexer
from p2pshare.services.server.index_writer import WriterFailed
from p2pshare.services.server.indexer import IndexStats, ShareIndexer
from p2pshare.services.server.watch import IN_Q_OVERFLOW, Changes
from p2pshare.services.settings import Settings, load_settings

CS = 16384


@dataclass
class Node:
    settings: Settings
    database: Database
    indexer: ShareIndexer

    @property
    def share(self) -> Path:
        return self.settings.share_dir

    def step(self, now: float | None = None) -> IndexStats:
        """One scan, with `now` well past every file's settling time unless given."""
        return self.indexer.step(now=time.time() + 5 if now is None else now)


def make_node(home: Path, **env: str) -> Node:
    settings = load_settings(
        env={
            "P2P_HOME": str(home),
            "P2P_BROADCAST": "127.255.255.255",
            "P2P_USERNAME": "tester",
            "P2P_CHUNK_SIZE": str(CS),
            **env,
        }
    )
    settings.make_dirs()
    database = Database.open(home / "p2p.db")
    return Node(settings, database, ShareIndexer(database, settings))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path)
    yield n
    n.database.close()


def sql(node: Node, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(node.settings.db_path)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def indexed(node: Node, root: str = "share") -> dict[str, str]:
    """name -> sha256 of every local file under one root."""
    return dict(
        sql(
            node,
            "SELECT l.name, f.sha256 FROM local_files l JOIN files f "
            "ON f.id = l.file_id WHERE l.root = ?",
            root,
        )
    )


def chunk_rows(node: Node, sha: str) -> list[tuple[int, int, str]]:
    return sql(
        node,
        "SELECT c.chunk_index, c.size, c.sha256 FROM chunks c JOIN files f "
        "ON f.id = c.file_id WHERE f.sha256 = ? ORDER BY c.chunk_index",
        sha,
    )


def sql_write(node: Node, query: str, *args: Any) -> None:
    conn = sqlite3.connect(node.settings.db_path)
    try:
        with conn:
            conn.execute(query, args)
    finally:
        conn.close()


def catalog_version(node: Node) -> int:
    rows = sql(node, "SELECT catalog_version FROM node")
    return int(rows[0][0]) if rows else 0


def write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def data_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def expected_chunks(data: bytes) -> list[tuple[int, int, str]]:
    """(index, size, manifest entry) per chunk: the SHA-256 chaining state after it, the
    last one the file's SHA-256 (test_sha256chain checks manifest_entries independently)."""
    entries = manifest_entries(data, CS)
    assert not entries or entries[-1] == hashlib.sha256(data).hexdigest()
    return [(i // CS, len(data[i : i + CS]), entries[i // CS]) for i in range(0, len(data), CS)]


def root_of(data: bytes) -> str:
    return protocol.manifest_root(manifest_entries(data, CS))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- add, change, remove


def test_new_files_are_indexed_with_whole_and_chunk_hashes(node: Node) -> None:
    a = write(node.share / "a.txt", b"hello world\n")
    b = write(node.share / "b.bin", data_of(1, 3 * CS + 7))
    before = catalog_version(node)

    stats = node.step()

    assert (stats.added, stats.changed, stats.removed) == (2, 0, 0)
    assert indexed(node) == {"a.txt": sha(a), "b.bin": sha(b)}
    assert chunk_rows(node, sha(a)) == expected_chunks(a)
    assert chunk_rows(node, sha(b)) == expected_chunks(b)
    assert sql(
        node, "SELECT size, chunk_size, root, chunk_count FROM files WHERE sha256 = ?", sha(b)
    ) == [(3 * CS + 7, CS, root_of(b), 4)]
    # The last entry is the whole file's SHA-256: one pass gave both.
    assert chunk_rows(node, sha(b))[-1][2] == sha(b)
    assert catalog_version(node) > before


@pytest.mark.parametrize(
    ("size", "chunks"), [(0, 0), (1, 1), (CS - 1, 1), (CS, 1), (CS + 1, 2), (3 * CS, 3)]
)
def test_chunk_boundaries(node: Node, size: int, chunks: int) -> None:
    data = write(node.share / "f.bin", data_of(size, size))
    assert node.step().added == 1
    rows = chunk_rows(node, sha(data))
    assert len(rows) == chunks
    assert rows == expected_chunks(data)
    assert sum(r[1] for r in rows) == size
    assert sql(node, "SELECT size, chunk_count, root FROM files") == [(size, chunks, root_of(data))]


def test_default_chunk_size_is_chosen_per_file(tmp_path: Path) -> None:
    n = make_node(tmp_path, P2P_CHUNK_SIZE="")
    try:
        data = write(n.share / "f.bin", data_of(2, 300 * 1024))
        n.step()
        assert sql(n, "SELECT chunk_size, chunk_count FROM files") == [(256 * 1024, 2)]
        assert chunk_rows(n, sha(data))[1][1] == 300 * 1024 - 256 * 1024
    finally:
        n.database.close()


def test_changed_content_is_rehashed_and_the_old_content_forgotten(node: Node) -> None:
    path = node.share / "doc.txt"
    old = write(path, data_of(3, CS + 10))
    node.step()
    version = catalog_version(node)

    new = write(path, data_of(4, CS + 10))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    stats = node.step()

    assert (stats.added, stats.changed, stats.removed) == (0, 1, 0)
    assert indexed(node) == {"doc.txt": sha(new)}
    assert chunk_rows(node, sha(new)) == expected_chunks(new)
    assert catalog_version(node) > version
    assert sql(node, "SELECT count(*) FROM files WHERE sha256 = ?", sha(old)) == [(0,)]
    assert sql(node, "SELECT count(*) FROM chunks") == [(2,)]


def test_removed_file_and_its_content_are_forgotten(node: Node) -> None:
    keep = write(node.share / "keep.txt", b"keep")
    gone = write(node.share / "gone.txt", data_of(5, 2 * CS))
    node.step()
    version = catalog_version(node)

    (node.share / "gone.txt").unlink()
    stats = node.step()

    assert (stats.added, stats.changed, stats.removed, stats.unchanged) == (0, 0, 1, 1)
    assert indexed(node) == {"keep.txt": sha(keep)}
    assert sql(node, "SELECT count(*) FROM files WHERE sha256 = ?", sha(gone)) == [(0,)]
    assert sql(node, "SELECT count(*) FROM chunks") == [(1,)]
    assert catalog_version(node) > version


def test_content_shared_under_two_names_survives_removing_one(node: Node) -> None:
    data = write(node.share / "one.txt", b"same bytes")
    write(node.share / "two.txt", data)
    node.step()
    assert sql(node, "SELECT count(*) FROM files") == [(1,)]
    (node.share / "one.txt").unlink()
    node.step()
    assert indexed(node) == {"two.txt": sha(data)}
    assert chunk_rows(node, sha(data)) == expected_chunks(data)


def test_restart_over_unchanged_files_rehashes_nothing(node: Node) -> None:
    for i in range(3):
        write(node.share / f"dir{i}" / f"f{i}.bin", data_of(10 + i, CS * i + 1))
    assert node.step().added == 3
    version = catalog_version(node)
    node.database.close()

    again = Database.open(node.settings.db_path)
    try:
        stats = ShareIndexer(again, node.settings).step(now=time.time() + 5)
    finally:
        again.close()
    assert (stats.unchanged, stats.added, stats.changed, stats.removed) == (3, 0, 0, 0)
    assert catalog_version(node) == version


def test_nested_names_use_slashes(node: Node) -> None:
    write(node.share / "a" / "b" / "c.txt", b"c")
    write(node.share / "x y" / "ü.txt", b"u")
    node.step()
    assert set(indexed(node)) == {"a/b/c.txt", "x y/ü.txt"}


# ---------------------------------------------------------------- settling


def test_file_being_written_waits_until_it_settles(node: Node) -> None:
    path = node.share / "copying.iso"
    write(path, data_of(6, 100))
    mtime = path.stat().st_mtime_ns / 1e9

    stats = node.step(now=mtime + 0.2)
    assert (stats.added, stats.waiting) == (0, 1)
    assert indexed(node) == {}

    stats = node.step(now=mtime + 1.5)
    assert (stats.added, stats.waiting) == (1, 0)
    assert set(indexed(node)) == {"copying.iso"}


# ---------------------------------------------------------------- what is not offered


def test_symlink_leading_outside_is_skipped(node: Node, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    write(secret, b"not for sharing")
    (node.share / "link.txt").symlink_to(secret)
    (node.share / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    node.step()
    assert indexed(node) == {}


def test_symlink_inside_is_indexed_but_folder_links_are_not_followed(node: Node) -> None:
    data = write(node.share / "real" / "file.txt", b"real")
    (node.share / "alias.txt").symlink_to(node.share / "real" / "file.txt")
    (node.share / "again").symlink_to(node.share / "real", target_is_directory=True)
    node.step()
    assert indexed(node) == {"real/file.txt": sha(data), "alias.txt": sha(data)}


def test_a_name_looked_at_below_a_folder_link_is_nothing(node: Node, tmp_path: Path) -> None:
    # A watch's names are reached from the share through no link, as a whole scan reaches
    # them: a name whose folder became a link leading out finds nothing there.
    from p2pshare.services.server.scan import scan_names

    write(tmp_path / "outside" / "secret.txt", b"not for sharing")
    (node.share / "docs").symlink_to(tmp_path / "outside", target_is_directory=True)
    scan = scan_names(node.share, ["docs/secret.txt", "docs"])
    assert scan.files == {}
    assert scan.skipped == {str(node.share / "docs"): "symlink leads outside the shared folder"}


def test_what_the_server_opens_is_reached_from_its_folder_through_no_link_out(
    node: Node, tmp_path: Path
) -> None:
    from p2pshare.services.server.scan import open_beneath

    def read(name: str) -> bytes:
        fd = open_beneath(node.share, name)
        with open(fd, "rb") as fh:
            return fh.read()

    write(node.share / "docs" / "a.txt", b"inside")
    write(tmp_path / "outside" / "a.txt", b"outside")
    (node.share / "alias.txt").symlink_to(node.share / "docs" / "a.txt")
    (node.share / "out.txt").symlink_to(tmp_path / "outside" / "a.txt")
    assert read("docs/a.txt") == b"inside"
    assert read("alias.txt") == b"inside"  # a link to a file of the share, as indexed
    with pytest.raises(PermissionError):
        read("out.txt")
    # The folder swapped for a link leading out: its name leads nowhere.
    (node.share / "docs").rename(node.share / ".docs")
    (node.share / "docs").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(PermissionError):
        read("docs/a.txt")


def test_dangling_symlink_is_skipped(node: Node) -> None:
    (node.share / "dangling").symlink_to(node.share / "nothing-here")
    write(node.share / "ok.txt", b"ok")
    node.step()
    assert set(indexed(node)) == {"ok.txt"}


def test_fifo_is_skipped(node: Node) -> None:
    os.mkfifo(node.share / "pipe")
    write(node.share / "ok.txt", b"ok")
    node.step()
    assert set(indexed(node)) == {"ok.txt"}


def test_dotfiles_and_dot_folders_are_skipped(node: Node) -> None:
    write(node.share / ".hidden", b"h")
    write(node.share / ".git" / "config", b"g")
    write(node.share / "dir" / ".file.swp", b"s")
    write(node.share / "dir" / "visible.txt", b"v")
    node.step()
    assert set(indexed(node)) == {"dir/visible.txt"}


def test_download_dir_is_indexed_under_its_own_root(node: Node) -> None:
    shared = write(node.share / "mine.txt", b"mine")
    got = write(node.settings.download_dir / "got" / "it.bin", b"downloaded")
    assert node.step().added == 2
    assert indexed(node, "share") == {"mine.txt": sha(shared)}
    assert indexed(node, "download") == {"got/it.bin": sha(got)}


def test_a_file_a_download_is_publishing_is_left_to_the_downloader(node: Node) -> None:
    """The downloader links a file, then records it: a scan between the two must not hash
    it again and bump the catalog (a folder of 10,000 files did, a few hundred times)."""
    got = write(node.settings.download_dir / "album" / "a.bin", b"arriving")
    with node.database.write() as s:
        s.execute(
            insert(downloads).values(
                name="album/a.bin",
                sha256=sha(got),
                size=len(got),
                status="active",
                requested_at=1.0,
                saved_as="album/a.bin",
            )  # fmt: skip
        )
    version = catalog_version(node)
    assert node.step().added == 0
    assert indexed(node, "download") == {} and catalog_version(node) == version
    sql_write(node, "UPDATE downloads SET status = 'failed'")  # it never recorded it
    assert node.step().added == 1
    assert indexed(node, "download") == {"album/a.bin": sha(got)}


def test_a_file_linked_after_the_scan_passed_is_not_forgotten(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The downloader links and records a file after the scan read its folder: the row is
    new, not a file gone (forgetting it bumped the catalog and hashed it again)."""
    kept = write(node.share / "kept.bin", b"kept")
    node.step()
    late = node.share / "late.bin"
    real_walk = indexer.walk_tree

    def walk_then_a_file_arrives(*args: Any, **kwargs: Any) -> Any:
        for i, item in enumerate(real_walk(*args, **kwargs)):
            if i == 0:  # the folder is read: the file arrives, and is recorded
                write(late, b"late")
                with node.database.write() as s:
                    hashed = hash_file(late, CS, expect=Stamp.of(late.stat()))
                    dbindex.record_local_files(s, "share", [("late.bin", hashed)], now=time.time())
            yield item

    monkeypatch.setattr(indexer, "walk_tree", walk_then_a_file_arrives)
    # A row a page: the index's row for it is read after the scan passed its folder.
    monkeypatch.setattr(indexer, "KNOWN_PAGE", 1)
    assert node.step().removed == 0
    assert indexed(node) == {"kept.bin": sha(kept), "late.bin": sha(b"late")}
    monkeypatch.undo()
    late.unlink()  # and a file really gone still goes
    assert node.step().removed == 1
    assert indexed(node) == {"kept.bin": sha(kept)}


def test_share_dir_equal_to_home_never_indexes_the_nodes_own_files(tmp_path: Path) -> None:
    n = make_node(tmp_path, P2P_SHARE_DIR=str(tmp_path))
    try:
        doc = write(tmp_path / "doc.txt", b"doc")
        write(n.settings.temp_dir / "partial.part", b"partial")
        write(n.settings.log_dir / "server.log", b"log")
        got = write(n.settings.download_dir / "got.bin", b"got")
        with n.database.write() as s:  # the WAL file exists while a writer is connected
            s.exec_driver_sql("SELECT 1")
        assert (tmp_path / "p2p.db").exists() and (tmp_path / "p2p.db-wal").exists()

        n.step()

        assert indexed(n, "share") == {"doc.txt": sha(doc)}
        assert indexed(n, "download") == {"got.bin": sha(got)}
    finally:
        n.database.close()


def test_share_dir_equal_to_home_never_offers_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "p2p.toml").write_text('P2P_NETWORK_KEY = "secret-network-key"\n')
    (tmp_path / "p2p.toml").chmod(0o600)  # it holds the key: others may not read it
    n = make_node(tmp_path, P2P_SHARE_DIR=str(tmp_path))
    try:
        assert n.settings.network_secret == "secret-network-key"
        n.step()
        assert "p2p.toml" not in indexed(n)
    finally:
        n.database.close()


@pytest.mark.parametrize(
    "name",
    ["back\\slash.txt", "c:notes.txt", "/".join(["d" * 250] * 5) + "/deep.txt"],
    ids=["backslash", "drive-like", "over-1024-bytes"],
)
def test_every_indexed_name_is_one_the_protocol_accepts(node: Node, name: str) -> None:
    write(node.share / name, b"x")
    write(node.share / "good.txt", b"good")
    node.step()
    names = set(indexed(node))
    assert "good.txt" in names
    for indexed_name in names:
        protocol.check_name(indexed_name)


def test_a_rescan_reuses_the_name_checks_of_the_last_scan_and_only_those(node: Node) -> None:
    from p2pshare.services.server.scan import scan_tree

    (node.share / "ok.txt").write_bytes(b"ok")
    (node.share / "back\\slash.txt").write_bytes(b"refused name")
    (node.share / "gone.txt").write_bytes(b"soon gone")
    first = scan_tree(node.share)
    assert set(first.files) == {"ok.txt", "gone.txt"}
    assert first.checked["ok.txt"] is None and first.checked["back\\slash.txt"] is not None
    (node.share / "gone.txt").unlink()
    again = scan_tree(node.share, checked=first.checked)
    # The same verdicts, the refused name still refused, nothing kept for a name not met.
    assert set(again.files) == {"ok.txt"}
    assert str(node.share / "back\\slash.txt") in again.skipped
    assert set(again.checked) == {"ok.txt", "back\\slash.txt"}
    # A verdict handed in is what the scan goes by (so it must come from a scan).
    trusted = scan_tree(node.share, checked={"ok.txt": "refused for the test"})
    assert set(trusted.files) == set()


def test_a_large_batch_is_logged_in_one_line_a_small_one_per_file(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    from p2pshare.services.server import indexer

    for i in range(indexer.LOG_EACH_UP_TO + 1):
        (node.share / f"many{i:02d}.txt").write_bytes(os.urandom(100))
    with caplog.at_level("INFO", logger="p2p.index"):
        node.step()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("indexed")]
    assert len(lines) == 1 and lines[0].startswith(f"indexed {indexer.LOG_EACH_UP_TO + 1} files")
    caplog.clear()
    (node.share / "one.txt").write_bytes(b"one")
    with caplog.at_level("INFO", logger="p2p.index"):
        node.step()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("indexed")]
    assert len(lines) == 1 and lines[0].startswith("indexed share/one.txt")
    assert len(indexed(node)) == indexer.LOG_EACH_UP_TO + 2


def test_a_changed_file_leaves_no_orphan_content_behind(node: Node) -> None:
    (node.share / "doc.txt").write_bytes(b"first version")
    node.step()
    (node.share / "doc.txt").write_bytes(b"second version, longer")
    node.step()
    assert sql(node, "SELECT count(*) FROM files")[0][0] == 1
    assert indexed(node) == {"doc.txt": sha(b"second version, longer")}


# ---------------------------------------------------------------- many files at once


@pytest.mark.parametrize(
    ("writer_rows", "batches"),
    [(7, [7, 14, 14, 12]), (1000, [7] * 6 + [5])],
    ids=["writer-process", "in-process"],
)
def test_more_files_than_a_batch_are_recorded_batch_by_batch_and_whole(
    node: Node, monkeypatch: pytest.MonkeyPatch, writer_rows: int, batches: list[int]
) -> None:
    # Past BATCH_FILES the batches are written (by a writer process from a batch of
    # WRITER_ROWS on, in batches of WRITER_BATCH_FILES after that) while the next is
    # hashed: every file arrives, each batch in one transaction, and the same as one by one.
    monkeypatch.setattr(indexer, "BATCH_FILES", 7)
    monkeypatch.setattr(indexer, "WRITER_ROWS", writer_rows)
    monkeypatch.setattr(indexer, "WRITER_BATCH_FILES", 14)
    datas = {f"d{i % 4}/f{i:03d}.bin": data_of(i, 50 + i * 37) for i in range(45)}
    datas["d0/twin.bin"] = datas["d1/f001.bin"]  # one content under two names
    datas["d2/big.bin"] = data_of(99, 3 * CS + 5)  # a chained manifest among them
    for name, data in datas.items():
        write(node.share / name, data)
    writes = node.database.write_count

    stats = node.step()

    assert stats.added == len(datas)
    assert indexed(node) == {name: sha(data) for name, data in datas.items()}
    assert sum(batches) == len(datas)
    assert node.database.write_count - writes == len(batches)
    for data in datas.values():
        assert chunk_rows(node, sha(data)) == expected_chunks(data)
    assert sql(node, "SELECT count(*) FROM files")[0][0] == len(datas) - 1
    # Each name offered once, numbered on from the version, the version at the last one.
    offered = sql(node, "SELECT name, seq FROM catalog_log WHERE removed = 0 ORDER BY seq")
    assert sorted(name for name, _ in offered) == sorted(datas)
    assert [seq for _, seq in offered] == list(range(1, len(datas) + 1))
    assert catalog_version(node) == len(datas)


def test_a_writer_process_that_fails_fails_the_step_and_the_next_one_records_everything(
    node: Node, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(indexer, "BATCH_FILES", 3)
    monkeypatch.setattr(indexer, "WRITER_ROWS", 3)
    for i in range(10):
        write(node.share / f"f{i}.bin", data_of(i, 100))
    real = indexer.WriterProcess
    # A database it cannot open: the process says so on its stderr and is gone.
    monkeypatch.setattr(indexer, "WriterProcess", lambda _path: real(tmp_path / "none.db"))
    with pytest.raises(WriterFailed):
        node.step()
    assert indexed(node) == {}
    monkeypatch.setattr(indexer, "WriterProcess", real)
    node.step()
    assert len(indexed(node)) == 10


def test_a_write_that_fails_fails_the_step_and_the_next_one_records_everything(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer, "BATCH_FILES", 3)
    for i in range(10):
        write(node.share / f"f{i}.bin", data_of(i, 100))
    real = dbindex.record_local_files
    calls = []

    def fail_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(dbindex, "record_local_files", fail_second)
    with pytest.raises(sqlite3.OperationalError):
        node.step()
    monkeypatch.setattr(dbindex, "record_local_files", real)
    node.step()
    assert len(indexed(node)) == 10


def test_content_known_without_its_manifest_gets_its_chunks(node: Node) -> None:
    # A peer's offer may be known (a files row) before this node hashes the same content.
    data = write(node.share / "a.bin", data_of(5, 2 * CS + 1))
    hashed = hash_file(node.share / "a.bin", CS, expect=Stamp.of(os.stat(node.share / "a.bin")))
    sql_write(
        node,
        "INSERT INTO files (sha256, size, chunk_size, root, chunk_count, first_seen)"
        " VALUES (?, ?, ?, ?, 3, 0)",
        hashed.sha256,
        hashed.size,
        CS,
        hashed.root,
    )
    (known_id,) = sql(node, "SELECT id FROM files")[0]
    write(node.share / "b.bin", b"new content")
    node.step()
    assert sql(node, "SELECT file_id FROM local_files WHERE name = 'a.bin'") == [(known_id,)]
    assert chunk_rows(node, sha(data)) == expected_chunks(data)
    assert chunk_rows(node, sha(b"new content")) == expected_chunks(b"new content")


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o400, 0o200, 0o000])
def test_a_file_is_found_exactly_when_this_process_may_read_it(node: Node, mode: int) -> None:
    from p2pshare.services.server.scan import scan_tree

    path = node.share / "f.txt"
    write(path, b"data")
    path.chmod(mode)
    try:
        readable = os.access(path, os.R_OK)
        scan = scan_tree(node.share)
    finally:
        path.chmod(0o644)
    assert ("f.txt" in scan.files) == readable
    assert (str(path) in scan.skipped) == (not readable)


# ---------------------------------------------------------------- a watch's changes


@pytest.fixture
def watched(node: Node) -> Iterator[Node]:
    watch = node.indexer.start_watching()
    if watch is None:
        pytest.skip("no inotify here")
    yield node
    watch.close()


def changes_of(node: Node, action: Callable[[], object]) -> Changes:
    """Do action and gather the watch's events about it (waiting until some arrive)."""
    watch = node.indexer.watch
    assert watch is not None
    action()
    changes = Changes()
    deadline = time.monotonic() + 10
    while not changes and time.monotonic() < deadline:
        select.select([watch.fd], [], [], 0.1)
        watch.read(changes)
    while select.select([watch.fd], [], [], 0.05)[0]:  # the rest of a burst
        watch.read(changes)
    return changes


def step_changes(node: Node, action: Callable[[], object]) -> IndexStats:
    changes = changes_of(node, action)
    assert changes and not changes.lost
    return node.indexer.step_changes(changes.names, now=time.time() + 5)


def test_a_watch_sees_files_added_changed_renamed_and_removed(watched: Node) -> None:
    node = watched
    write(node.share / "keep.txt", b"keep")
    write(node.share / "sub/old.txt", b"old")
    node.step()

    stats = step_changes(node, lambda: write(node.share / "sub/new.txt", b"new"))
    assert (stats.added, stats.unchanged) == (1, 0)  # only what changed was looked at
    step_changes(node, lambda: write(node.share / "sub/old.txt", b"old, rewritten"))
    step_changes(node, lambda: (node.share / "sub/new.txt").rename(node.share / "moved.txt"))
    step_changes(node, lambda: (node.share / "keep.txt").unlink())

    assert indexed(node) == {"sub/old.txt": sha(b"old, rewritten"), "moved.txt": sha(b"new")}
    assert node.step().touched == 0  # a whole rescan agrees


def test_a_watch_sees_folders_moved_in_renamed_and_removed(watched: Node, tmp_path: Path) -> None:
    node = watched
    node.step()
    outside = tmp_path / "outside"
    write(outside / "a.txt", b"a")
    write(outside / "deep/b.txt", b"b")

    step_changes(node, lambda: outside.rename(node.share / "album"))
    assert indexed(node) == {"album/a.txt": sha(b"a"), "album/deep/b.txt": sha(b"b")}
    step_changes(node, lambda: (node.share / "album").rename(node.share / "photos"))
    assert indexed(node) == {"photos/a.txt": sha(b"a"), "photos/deep/b.txt": sha(b"b")}
    # The renamed folder's watch now names its files under the new name.
    step_changes(node, lambda: write(node.share / "photos/deep/c.txt", b"c"))
    assert indexed(node)["photos/deep/c.txt"] == sha(b"c")
    step_changes(node, lambda: shutil.rmtree(node.share / "photos"))
    assert indexed(node) == {}
    assert node.step().touched == 0


def test_hidden_files_raise_no_look(watched: Node) -> None:
    node = watched
    node.step()
    changes = changes_of(node, lambda: write(node.share / ".partial.tmp", b"x"))
    assert not changes


def test_a_file_still_settling_is_looked_at_again_once_settled(watched: Node) -> None:
    node = watched
    node.step()
    changes = changes_of(node, lambda: write(node.share / "fresh.txt", b"fresh"))
    stats = node.indexer.step_changes(changes.names, now=time.time())
    assert stats.waiting == 1 and stats.settles_at is not None and node.indexer.pending
    stats = node.indexer.step_changes({}, now=stats.settles_at + 0.01)
    assert stats.added == 1 and not node.indexer.pending
    assert indexed(node) == {"fresh.txt": sha(b"fresh")}


def test_lost_events_ask_for_a_whole_rescan(watched: Node) -> None:
    watch = watched.indexer.watch
    assert watch is not None
    changes = Changes()
    watch._event(-1, IN_Q_OVERFLOW, b"", changes)
    assert changes.lost


def test_a_shared_folder_itself_removed_asks_for_a_whole_rescan(watched: Node) -> None:
    node = watched
    write(node.share / "a.txt", b"a")
    node.step()
    changes = changes_of(node, lambda: shutil.rmtree(node.share))
    assert changes.lost


def test_a_whole_scan_merges_with_the_index_page_by_page_in_name_order(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Names whose order differs between "folder first" and byte order ('-' and '.' sort
    # before '/', '0' after it; non-ASCII last): the scan and the index must agree.
    monkeypatch.setattr(indexer, "KNOWN_PAGE", 2)
    monkeypatch.setattr(indexer, "BATCH_FILES", 3)
    names = ["x/a", "x-1.txt", "x.txt", "x0", "x-y/b", "a", "é/z", "e/z", "Z", "x/y/z", "x/y0"]
    datas = {name: write(node.share / name, name.encode()) for name in names}
    node.step()
    assert indexed(node) == {name: sha(data) for name, data in datas.items()}

    for gone in ("x-1.txt", "x/y/z", "é/z"):
        (node.share / gone).unlink()
        del datas[gone]
    for changed in ("x.txt", "Z"):
        datas[changed] = write(node.share / changed, b"changed " + changed.encode())
    for new in ("x/y1", "x-0", "ü"):
        datas[new] = write(node.share / new, new.encode())
    stats = node.step()

    assert (stats.added, stats.changed, stats.removed) == (3, 2, 3)
    assert indexed(node) == {name: sha(data) for name, data in datas.items()}
    assert node.step().touched == 0


def test_files_a_rescan_records_are_not_taken_for_gone_by_its_later_pages(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index is read a page at a time while the scan's own batches are written: a row
    # it wrote behind the walk must not be read back as a name the walk did not find.
    monkeypatch.setattr(indexer, "KNOWN_PAGE", 2)
    monkeypatch.setattr(indexer, "BATCH_FILES", 1)
    old = {f"f{i:02d}": write(node.share / f"f{i:02d}", b"old %d" % i) for i in range(0, 20, 2)}
    node.step()
    new = {f"f{i:02d}": write(node.share / f"f{i:02d}", b"new %d" % i) for i in range(1, 20, 2)}
    # Files older than the scan (as after a restart), so none looks as if it just arrived.
    newest = max((node.share / name).stat().st_ctime_ns for name in new)
    while time.time_ns() <= newest + indexer.CTIME_SLACK_NS:
        time.sleep(0.01)

    stats = node.step()

    assert (stats.added, stats.removed) == (len(new), 0)
    assert indexed(node) == {name: sha(data) for name, data in {**old, **new}.items()}


def test_a_share_on_a_network_file_system_is_known_for_one(tmp_path: Path) -> None:
    from p2pshare.services.server.watch import remote_file_system

    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "nas:/photos /mnt/nas nfs4 rw 0 0\n"
        "/dev/sdb1 /mnt/nas/cache ext4 rw 0 0\n"
        "//srv/share /mnt/my\\040share cifs rw 0 0\n"
        "host:/home /mnt/ssh fuse.sshfs rw 0 0\n"
    )
    look = lambda p: remote_file_system(Path(p), str(mounts))  # noqa: E731
    assert look("/home/me/shared") is None
    assert look("/mnt/nas/2024/a.jpg") == "nfs4"
    assert look("/mnt/nas/cache/x") is None  # the longest mount point holding it wins
    assert look("/mnt/nasty") is None
    assert look("/mnt/my share/docs") == "cifs"
    assert look("/mnt/ssh") == "fuse.sshfs"

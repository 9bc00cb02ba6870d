"""BitTorrent downloads (issue 24): what a user brings to `p2pctl download` (a .torrent,
a magnet link) checked in pure code against libtorrent's own reading of the same bytes,
refusals that keep a torrent inside the download folder, and the queue p2p-torrent runs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.db import batch as dbbatch
from p2pshare.db import history
from p2pshare.db import torrent_queue as tq
from p2pshare.db import torrents as dbt
from p2pshare.db.engine import Database
from p2pshare.db.values import Stamp
from p2pshare.services.hashing.files import hash_file
from p2pshare.services.settings import load_settings
from p2pshare.services.torrent import load_libtorrent
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.torrent.fetch import Fetcher, Fetching, file_layout
from p2pshare.services.torrent.publishing import TorrentFailed, publish_tree

lt = load_libtorrent()
needs_lt = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")


# ------------------------------------------------------------ bdecode


def test_bdecode_round_trips_and_finds_the_info_bytes() -> None:
    info = {"name": b"x", "piece length": 16384, "pieces": b"\x01" * 20, "length": 3}
    data = mi.bencode({"announce": b"http://t/", "info": info})  # type: ignore[dict-item]
    value, spans = mi.bdecode(data)
    assert value == {"announce": b"http://t/", "info": info}
    start, end = spans["info"]
    assert data[start:end] == mi.bencode(info)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [b"", b"i", b"i03e", b"i-0e", b"ie", b"5:abc", b"l", b"d1:a", b"di1ei2ee", b"x", b"i1ei2e"],
)
def test_bdecode_refuses_what_is_not_one_bencoded_value(data: bytes) -> None:
    with pytest.raises(mi.MetainfoError):
        mi.bdecode(data)


KEYS = st.sampled_from(["info", "name", "piece length", "pieces", "files", "path", "length",
                        "file tree", "", "attr"])  # fmt: skip
VALUES = st.recursive(
    st.integers(-2, 70_000) | st.binary(max_size=41) | st.sampled_from([b"..", b"a", b"/x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=20,
)


@given(st.binary(max_size=200) | VALUES.map(mi.bencode))
def test_bdecode_and_parse_raise_only_metainfo_errors(data: bytes) -> None:
    for parse in (mi.bdecode, mi.parse_torrent):
        with contextlib.suppress(mi.MetainfoError):
            parse(data)


@given(VALUES)
def test_bdecode_reads_what_bencode_wrote(value: mi.Bencodable) -> None:
    assert mi.bdecode(mi.bencode(value))[0] == value


# ------------------------------------------------------------ .torrent files


def made_by_libtorrent(folder: Path, name: str, flags: int) -> bytes:
    assert lt is not None
    ct = lt.create_torrent(lt.list_files(str(folder / name)), 0, flags)
    lt.set_piece_hashes(ct, str(folder))
    return bytes(lt.bencode(ct.generate()))


@needs_lt
@pytest.mark.parametrize("fmt", ["v1", "v2", "hybrid"])
@pytest.mark.parametrize("folder", [False, True])
def test_parse_torrent_agrees_with_libtorrent(tmp_path: Path, fmt: str, folder: bool) -> None:
    assert lt is not None
    sizes = {"a.bin": 70_000, "sub/b.bin": 5, "sub/deeper/c.bin": 40_000, "empty": 0}
    if folder:
        for name, size in sizes.items():
            path = tmp_path / "album" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size))
        name = "album"
    else:
        (tmp_path / "one.bin").write_bytes(os.urandom(100_000))
        name = "one.bin"
    flags = {"v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only, "hybrid": 0}[fmt]
    data = made_by_libtorrent(tmp_path, name, flags)

    meta = mi.parse_torrent(data)

    info = lt.torrent_info(lt.bdecode(data))
    hashes = info.info_hashes()
    assert meta.info_hash == (str(hashes.v2) if fmt == "v2" else str(hashes.v1))
    fs = file_layout(info)
    real = {
        fs.file_path(i): fs.file_size(i)
        for i in range(fs.num_files())
        if not fs.file_flags(i) & fs.flag_pad_file
    }
    assert dict(meta.files) == real  # pad files (hybrid) are never written out
    assert meta.name == name and meta.folder == folder
    assert meta.size == sum(real.values()) and meta.piece_size == info.piece_length()


def torrent_with(paths: list[list[bytes]], name: bytes = b"evil") -> bytes:
    info = {
        "name": name,
        "piece length": 16384,
        "pieces": b"\0" * 20,
        "files": [{"length": 1, "path": p} for p in paths],
    }
    return mi.bencode({"info": info})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (torrent_with([[b"..", b"etc", b"passwd"]]), "outside the download folder"),
        (torrent_with([[b"ok"], [b"a", b".."]]), "outside the download folder"),
        (torrent_with([[b"/etc/passwd"]]), "outside the download folder"),
        (torrent_with([[b"a\\..\\b"]]), "outside the download folder"),
        (torrent_with([[b""]]), "outside the download folder"),
        (torrent_with([[]]), "empty path"),
        (torrent_with([[b"x"]], name=b".."), "outside the download folder"),
        (torrent_with([[b"x"]], name=b"a/b"), "outside the download folder"),
        (torrent_with([[b"x\x00y"]]), "outside the download folder"),
        (torrent_with([[b"bell\x07"]]), "control characters"),
        (torrent_with([[b"\xff"]]), "not UTF-8"),
        (torrent_with([]), "empty"),
        (mi.bencode({"info": {"name": "x", "piece length": 0}}), "piece length"),
        (mi.bencode({"info": {"name": "x", "piece length": 1, "pieces": b"1"}}), "SHA-1"),
        (mi.bencode({"info": {"name": "x", "piece length": 1}}), "neither v1 pieces"),
        (
            mi.bencode({"info": {"name": "x", "piece length": 1, "pieces": b"", "length": -1}}),
            "negative",
        ),
        (mi.bencode({"info": "x"}), "no info dictionary"),
        (mi.bencode([1]), "no info dictionary"),
        (
            mi.bencode(
                {
                    "info": {
                        "name": "x",
                        "piece length": 16384,
                        "file tree": {"..": {"": {"length": 1}}},
                    }
                }
            ),
            "outside the download folder",
        ),
    ],
)
def test_parse_torrent_refuses_what_would_escape_or_is_malformed(data: bytes, says: str) -> None:
    with pytest.raises(mi.MetainfoError, match=says):
        mi.parse_torrent(data)


# ------------------------------------------------------------ magnet links


def test_parse_magnet_reads_hex_base32_and_v2_hashes() -> None:
    hexed = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
    m = mi.parse_magnet(f"magnet:?xt=urn:btih:{hexed.upper()}&dn=a%20b.bin&x.pe=127.0.0.1:6881")
    assert m == mi.Magnet(hexed, "a b.bin", ["127.0.0.1:6881"])
    b32 = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK"
    assert mi.parse_magnet(f"magnet:?xt=urn:btih:{b32}").info_hash == hexed
    sha = hashlib.sha256(b"x").hexdigest()
    assert mi.parse_magnet(f"magnet:?xt=urn:btmh:1220{sha}").info_hash == sha
    # A hybrid link names both: v1 wins (every client speaks it).
    both = mi.parse_magnet(f"magnet:?xt=urn:btih:{hexed}&xt=urn:btmh:1220{sha}")
    assert both.info_hash == hexed


@needs_lt
def test_parse_magnet_agrees_with_libtorrent(tmp_path: Path) -> None:
    assert lt is not None
    (tmp_path / "f.bin").write_bytes(b"x" * 50_000)
    info = lt.torrent_info(lt.bdecode(made_by_libtorrent(tmp_path, "f.bin", 0)))
    link = str(lt.make_magnet_uri(info))
    assert mi.parse_magnet(link).info_hash == str(info.info_hashes().v1)
    assert mi.parse_magnet(link).name == "f.bin"


@pytest.mark.parametrize(
    ("link", "says"),
    [
        ("http://x", "does not start with magnet"),
        ("magnet:?dn=x", "names no BitTorrent info-hash"),
        ("magnet:?xt=urn:btih:zz", "neither 40 hex"),
        ("magnet:?xt=urn:sha1:" + "a" * 40, "names no BitTorrent info-hash"),
        ("magnet:?xt=urn:btmh:1114" + "a" * 64, "not a SHA-256 multihash"),
    ],
)
def test_parse_magnet_refuses(link: str, says: str) -> None:
    with pytest.raises(mi.MetainfoError, match=says):
        mi.parse_magnet(link)


# ------------------------------------------------------------ the queue


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(tmp_path / "p2p.db")
    yield db
    db.close()


def queue(db: Database, info_hash: str, peers: list[str], name: str = "x.bin") -> tq.QueuedTorrent:
    req = tq.TorrentRequest(
        f"magnet:?xt=urn:btih:{info_hash}", info_hash, name, 0, "magnet:?", None, peers, None, None
    )
    with db.write() as c:
        return tq.queue_torrent(c, req, now=1000.0)


def test_the_same_info_hash_is_one_download_and_peers_add_up(database: Database) -> None:
    first = queue(database, "a" * 40, ["127.0.0.1:1"])
    again = queue(database, "a" * 40, ["127.0.0.1:2", "127.0.0.1:1"])
    other = queue(database, "b" * 40, [])
    assert first.new and not again.new and other.new
    assert again.download_id == first.download_id != other.download_id
    with database.read() as s:
        jobs = {j.download_id: j for j in dbt.torrent_jobs(s)}
    assert jobs[first.download_id].peers == ["127.0.0.1:1", "127.0.0.1:2"]
    assert jobs[first.download_id].status == "queued"
    # The downloader never sees them: it runs downloads with a p2pshare offer.
    with database.read() as s:
        assert dbbatch.runnable_downloads(s) == []


def test_a_finished_one_file_torrent_points_at_its_indexed_content(
    database: Database, tmp_path: Path
) -> None:
    queued = queue(database, "c" * 40, [])
    path = tmp_path / "got.bin"
    path.write_bytes(b"payload" * 1000)
    hashed = hash_file(path, 256 * 1024, expect=Stamp.of(os.stat(path)))
    with database.write() as s:
        dbt.start_torrent_job(s, queued.download_id, "/tmp/t", now=1001.0)
        dbt.finish_torrent_job(
            s, queued.download_id, status="done", reason=None, now=1002.0,
            saved_as="got.bin", published=[("got.bin", hashed)],
        )  # fmt: skip
    conn = sqlite3.connect(database.path)
    row = conn.execute(
        "SELECT d.status, d.sha256, d.saved_as, d.temp_path, d.started_at, f.sha256"
        " FROM downloads d JOIN files f ON f.id = d.file_id"
    ).fetchone()
    local = conn.execute("SELECT root, name FROM local_files").fetchall()
    conn.close()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert row == ("done", sha, "got.bin", None, 1001.0, sha)
    assert local == [("download", "got.bin")]


def test_a_torrent_still_here_is_not_queued_again(database: Database, tmp_path: Path) -> None:
    queued = queue(database, "f" * 40, [])
    path = tmp_path / "got.bin"
    path.write_bytes(b"x" * 100)
    hashed = hash_file(path, 256 * 1024, expect=Stamp.of(os.stat(path)))
    with database.write() as s:
        dbt.finish_torrent_job(
            s, queued.download_id, status="done", reason=None, now=1.0,
            saved_as="got (1).bin", published=[("got (1).bin", hashed)],
        )  # fmt: skip
    with pytest.raises(tq.AlreadyFetched, match=r"got \(1\)\.bin"):
        queue(database, "f" * 40, [])
    # Moved away (the index forgot it): asked again, it is fetched again.
    conn = sqlite3.connect(database.path)
    conn.execute("DELETE FROM local_files")
    conn.commit()
    conn.close()
    assert queue(database, "f" * 40, []).new


def test_a_torrent_download_rolls_up_past_the_horizon_with_its_torrent_row(
    database: Database,
) -> None:
    queued = queue(database, "9" * 40, [])
    with database.write() as s:
        dbt.finish_torrent_job(s, queued.download_id, status="failed", reason="x", now=5.0)
    with database.write() as s:
        assert history.roll_up_downloads(s, cutoff=1e12) == 1
        assert history.roll_up_requests(s, cutoff=1e12) == 1
    conn = sqlite3.connect(database.path)
    counts = [
        conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("downloads", "torrent_downloads", "requests")
    ]
    days = conn.execute("SELECT status, downloads FROM download_days").fetchall()
    kinds = conn.execute("SELECT kind, requests FROM request_days").fetchall()
    conn.close()
    assert counts == [0, 0, 0]
    assert days == [("failed", 1)] and kinds == [("torrent", 1)]


def test_a_cancel_stays_when_the_role_fails_it_later(database: Database) -> None:
    queued = queue(database, "d" * 40, [])
    conn = sqlite3.connect(database.path)
    conn.execute("UPDATE downloads SET status = 'cancelled', reason = 'by the user'")
    conn.commit()
    with database.write() as s:
        dbt.finish_torrent_job(s, queued.download_id, status="failed", reason="x", now=1.0)
    assert conn.execute("SELECT status, reason FROM downloads").fetchone() == (
        "cancelled",
        "by the user",
    )
    conn.close()


# ------------------------------------------------------------ publishing a finished torrent


def test_publish_tree_never_overwrites_and_publishes_once(tmp_path: Path) -> None:
    settings = load_settings(
        env={"P2P_HOME": str(tmp_path), "P2P_BROADCAST": "127.255.255.255", "P2P_USERNAME": "t"}
    )
    settings.make_dirs()
    temp = settings.temp_dir / "torrent-1"
    files = {"album/a.bin": b"a" * 1000, "album/cd1/b.bin": b"b" * 10, "album/empty": b""}
    for name, data in files.items():
        if data:
            (temp / name).parent.mkdir(parents=True, exist_ok=True)
            (temp / name).write_bytes(data)
    mine = settings.download_dir / "album" / "a.bin"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own")
    listed = [(PurePosixPath(n), len(d)) for n, d in files.items()]

    saved_as, published = publish_tree(settings, temp, listed)
    # Asked again (a crash after publishing, before the row said done): the same names.
    again, republished = publish_tree(settings, temp, listed)

    assert saved_as == again == "album/"
    names = [n for n, _ in published]
    assert names == [n for n, _ in republished] == ["album/a (1).bin", "album/cd1/b.bin",
                                                    "album/empty"]  # fmt: skip
    assert mine.read_bytes() == b"the user's own"
    for (name, hashed), data in zip(published, files.values(), strict=True):
        assert (settings.download_dir / name).read_bytes() == data
        assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert not list(settings.download_dir.rglob("*(2)*"))


@pytest.mark.parametrize(
    ("rel", "size", "says"),
    [("x/../../y", 1, "outside the download folder"), ("one.bin", 5, "not the size")],
)
def test_publish_tree_refuses(tmp_path: Path, rel: str, size: int, says: str) -> None:
    settings = load_settings(
        env={"P2P_HOME": str(tmp_path), "P2P_BROADCAST": "127.255.255.255", "P2P_USERNAME": "t"}
    )
    settings.make_dirs()
    temp = settings.temp_dir / "torrent-1"
    temp.mkdir()
    (temp / "one.bin").write_bytes(b"x")
    with pytest.raises(TorrentFailed, match=says):
        publish_tree(settings, temp, [(PurePosixPath(rel), size)])
    assert not list(settings.download_dir.iterdir())


# ------------------------------------------------------------ a magnet's metadata


class FakeInfo:
    def __init__(self, info: bytes) -> None:
        self.info = info

    def info_section(self) -> bytes:
        return self.info


class FakeHandle:
    """What Fetcher asks of a handle when a magnet's metadata arrives."""

    def __init__(self, info: bytes) -> None:
        self.info = FakeInfo(info)

    def torrent_file(self) -> FakeInfo:
        return self.info


class FakeSession:
    def __init__(self) -> None:
        self.removed: list[object] = []

    def remove_torrent(self, handle: object) -> None:
        self.removed.append(handle)


@pytest.mark.parametrize(
    ("files", "status", "name"),
    [
        ([{"length": 3, "path": [b"cd1", b"a.bin"]}], "queued", "album/"),
        ([{"length": 3, "path": [b"..", b"..", b"bashrc"]}], "failed", "x.bin"),
    ],
)
def test_a_magnets_metadata_is_checked_as_it_arrives(
    database: Database, tmp_path: Path, files: list[dict[str, object]], status: str, name: str
) -> None:
    """Peers send a magnet's metadata: paths leading out fail the download before any
    file is published; safe ones give the row its name and size."""
    settings = load_settings(
        env={"P2P_HOME": str(tmp_path), "P2P_BROADCAST": "127.255.255.255", "P2P_USERNAME": "t"}
    )
    queued = queue(database, "e" * 40, [])
    info = mi.bencode(
        {"name": b"album", "piece length": 16384, "pieces": b"\0" * 20, "files": files}  # type: ignore[dict-item]
    )
    session = FakeSession()
    fetcher = Fetcher(None, settings, database, session)  # type: ignore[arg-type]
    with database.read() as s:
        [job] = dbt.torrent_jobs(s)
    f = Fetching(job, FakeHandle(info), tmp_path / "t")
    fetcher.fetching[job.download_id] = f

    fetcher.got_metadata(f)
    if f.failed is not None:
        fetcher.flush()

    conn = sqlite3.connect(database.path)
    row = conn.execute("SELECT status, name, size, reason FROM downloads").fetchone()
    stored = conn.execute("SELECT metainfo, files FROM torrent_downloads").fetchone()
    conn.close()
    assert row[:2] == (status, name)
    if status == "failed":
        assert "would write outside the download folder" in row[3]
        assert session.removed == [f.handle] and not fetcher.fetching
        assert stored == (None, None)
    else:
        assert row[2] == 3 and stored == (b"d4:info" + info + b"e", 1)
    assert queued.download_id == job.download_id

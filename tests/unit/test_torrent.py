"""BitTorrent metainfo (issue 24): bencode, piece plans, and `p2pctl torrent`'s v1
torrents checked against libtorrent's own (same info-hash from the same files)."""

from __future__ import annotations

import os
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.db import torrents as dbt
from p2pshare.db.downloads import AmbiguousName, UnknownName
from p2pshare.db.engine import Database
from p2pshare.services.server.indexer import ShareIndexer
from p2pshare.services.settings import Settings, SettingsError, load_settings
from p2pshare.services.torrent import load_libtorrent, make
from p2pshare.services.torrent import metainfo as mi

lt = load_libtorrent()
needs_lt = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")


def test_bencode_known_values() -> None:
    assert mi.bencode(42) == b"i42e"
    assert mi.bencode(-3) == b"i-3e"
    assert mi.bencode("spam") == b"4:spam"
    assert mi.bencode([b"a", 1]) == b"l1:ai1ee"
    # keys sorted as raw bytes
    assert mi.bencode({"b": 1, "a": {"z": b"", "y": []}}) == b"d1:ad1:yle1:z0:e1:bi1ee"
    with pytest.raises(TypeError):
        mi.bencode(True)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=8), st.sampled_from([16, 64, 1000]))
def test_plan_covers_every_piece_once(sizes: list[int], piece: int) -> None:
    planned = mi.plan(sizes, piece)
    total = sum(sizes)
    covered = [0] * mi.piece_count(total, piece)
    for f in planned:
        for i in range(f.first_piece, f.first_piece + f.inner):
            covered[i] += 1
            # a whole piece inside the file: starts at or after it, ends within it
            assert f.offset <= i * piece and (i + 1) * piece <= f.offset + f.size
    for i in mi.straddling(planned, total, piece):
        covered[i] += 1
    assert covered == [1] * len(covered)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Settings, Database]]:
    settings = load_settings(
        env={"P2P_HOME": str(tmp_path), "P2P_BROADCAST": "127.255.255.255", "P2P_USERNAME": "t"}
    )
    settings.make_dirs()
    database = Database.open(settings.db_path)
    yield settings, database
    database.close()


def put(settings: Settings, files: dict[str, bytes]) -> None:
    past = time.time() - 30
    for name, data in files.items():
        path = settings.share_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (past, past))


def index(settings: Settings, database: Database) -> None:
    ShareIndexer(database, settings).step(now=time.time() + 5)


def libtorrent_info_hash(settings: Settings, folder: str) -> str:
    """What libtorrent itself makes of these files as a v1 torrent, no padding."""
    assert lt is not None
    base = settings.share_dir / folder
    files = sorted(p for p in base.rglob("*") if p.is_file())
    entries = [
        lt.create_file_entry("/".join((base.name, *p.relative_to(base).parts)), p.stat().st_size)
        for p in files
    ]
    ct = lt.create_torrent(entries, 0, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(base.parent))
    info = lt.torrent_info(lt.bdecode(lt.bencode(ct.generate())))
    return str(info.info_hashes().v1)


@needs_lt
def test_folder_torrent_matches_libtorrent_and_reuses_its_cache(
    node: tuple[Settings, Database], tmp_path: Path
) -> None:
    settings, database = node
    # Sizes that make pieces straddle files, a file smaller than a piece, an empty one.
    album = {
        "music/album/a.bin": os.urandom(100_001),
        "music/album/cd1/b.bin": os.urandom(2_300_007),
        "music/album/cd1/c.txt": b"la\n",
        "music/album/cd1/empty": b"",
        "music/album/d.bin": os.urandom(777_777),
    }
    put(settings, album)
    index(settings, database)

    made = make.make_torrent(settings, database, "music/album/", out=tmp_path / "a.torrent")

    assert made.info_hash == libtorrent_info_hash(settings, "music/album")
    assert made.files == len(album) and made.size == sum(map(len, album.values()))
    assert made.path.read_bytes()[:1] == b"d"
    assert made.magnet.startswith(f"magnet:?xt=urn:btih:{made.info_hash}&dn=album")
    first = made.hashed_bytes
    again = make.make_torrent(settings, database, "music/album/", out=tmp_path / "b.torrent")
    assert again.info_hash == made.info_hash
    # Only the pieces straddling files (one per boundary at most) are hashed again.
    assert again.hashed_bytes <= len(album) * made.piece_size < first


@needs_lt
def test_one_file_torrent_matches_libtorrent(
    node: tuple[Settings, Database], tmp_path: Path
) -> None:
    settings, database = node
    put(settings, {"sub/x/demo.bin": os.urandom(3_000_001)})
    index(settings, database)
    made = make.make_torrent(settings, database, "demo", out=tmp_path / "d.torrent")
    assert lt is not None
    ct = lt.create_torrent(
        [lt.create_file_entry("demo.bin", 3_000_001)], 0, lt.create_torrent.v1_only
    )
    lt.set_piece_hashes(ct, str(settings.share_dir / "sub/x"))
    want = lt.torrent_info(lt.bdecode(lt.bencode(ct.generate()))).info_hashes().v1
    assert made.info_hash == str(want)


@needs_lt
def test_a_file_changed_since_indexing_is_refused(
    node: tuple[Settings, Database], tmp_path: Path
) -> None:
    settings, database = node
    put(settings, {"a.bin": b"x" * 50_000, "ab.bin": b"y"})
    index(settings, database)
    with pytest.raises(AmbiguousName):
        make.make_torrent(settings, database, "a", out=tmp_path / "t")
    with pytest.raises(UnknownName):
        make.make_torrent(settings, database, "zzz", out=tmp_path / "t")
    (settings.share_dir / "a.bin").write_bytes(b"z" * 50_000)
    with pytest.raises(make.TorrentRefused, match="changed since the node indexed it"):
        make.make_torrent(settings, database, "a.bin", out=tmp_path / "t")


def test_without_libtorrent_one_sentence(
    node: tuple[Settings, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, database = node
    monkeypatch.setattr(make, "load_libtorrent", lambda: None)
    with pytest.raises(make.TorrentRefused, match=r"pip install 'p2pshare\[bittorrent\]'"):
        make.make_torrent(settings, database, "anything")


def test_bittorrent_settings() -> None:
    base = {"P2P_HOME": "/tmp/x", "P2P_BROADCAST": "127.255.255.255"}
    assert load_settings(env=base).bittorrent_serves
    keyed = {**base, "P2P_NETWORK_KEY": "a network key 0123456789"}
    assert not load_settings(env=keyed).bittorrent_serves
    assert load_settings(env={**keyed, "P2P_BITTORRENT": "on"}).bittorrent_serves
    assert not load_settings(env={**base, "P2P_BITTORRENT": "off"}).bittorrent_serves
    assert load_settings(env={**base, "P2P_TORRENT_PORT": "6881"}).torrent_port == 6881
    with pytest.raises(SettingsError, match="P2P_TORRENT_PORT"):
        load_settings(env={**base, "P2P_TORRENT_PORT": "70000"})
    with pytest.raises(SettingsError, match="P2P_BITTORRENT_DHT"):
        load_settings(env={**base, "P2P_BITTORRENT_DHT": "maybe"})


def test_p2pctl_torrent_names_files_by_the_one_rule(node: tuple[Settings, Database]) -> None:
    """A folder in any case, a name in either Unicode form, as `p2pctl download` reads
    names (issue 36)."""
    settings, database = node
    nfd = unicodedata.normalize("NFD", "docs/café.txt")
    put(settings, {"Music/a.bin": b"a" * 100, nfd: b"c" * 100})
    index(settings, database)
    with database.read() as s:
        assert [f.name for f in dbt.held_files(s, "music/")] == ["Music/a.bin"]
        assert [f.name for f in dbt.held_files(s, "docs/café.txt")] == [nfd]

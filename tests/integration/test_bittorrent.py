"""BitTorrent (issue 24) against a client nobody here wrote: aria2c fetches from a node
under supervisord by the .torrent `p2pctl torrent` made, with DHT and LPD off and the
node as its only peer. aria2c takes no peer address on its command line, so a tiny HTTP
tracker of the test's own on 127.0.0.1 answers its announces with the node's address."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from node import Node, seed, wait_until
from tracker import Tracker

from p2pshare.services.torrent import load_libtorrent

pytestmark = pytest.mark.integration
needs_libtorrent = pytest.mark.skipif(
    load_libtorrent() is None, reason="libtorrent is not installed"
)
needs_aria2c = pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c is not installed")

START_TIMEOUT = 30
FETCH_TIMEOUT = 180


def torrent_port(node: Node) -> int:
    port = wait_until(
        lambda: node.scalar(
            "SELECT value FROM role_settings WHERE role = 'torrent' AND name = 'port'"
        ),
        START_TIMEOUT,
        what="p2p-torrent to record its port",
    )
    return int(port)


def seeding_node(make_node: Callable[..., Node], name: str, data: bytes) -> Node:
    """A supervised node sharing one file, once its index lists it."""
    node = make_node("seed")
    seed(node, name, data)
    node.start_supervised()
    wait_until(
        lambda: node.scalar("SELECT count(*) FROM local_files WHERE name = ?", (name,)),
        START_TIMEOUT,
        what="the file to be indexed",
    )
    return node


def seeding(node: Node, count: int) -> bool:
    detail = node.scalar("SELECT detail FROM heartbeats WHERE role = 'torrent'") or ""
    return f"seeding {count}" in detail


def aria2c(torrent: Path | str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "aria2c",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--seed-time=0",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--bt-stop-timeout=120",
            "-d",
            str(out),
            str(torrent),
        ],
        capture_output=True,
        text=True,
        timeout=FETCH_TIMEOUT,
    )


def make_torrent(node: Node, name: str, out: Path, tracker: Tracker) -> str:
    done = node.p2pctl("torrent", name, "-o", str(out), "--tracker", tracker.url)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert str(out) in done.stdout
    return done.stdout


@needs_libtorrent
@needs_aria2c
def test_aria2c_fetches_a_file_the_node_seeds(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    node = seeding_node(make_node, "sub/demo.bin", data)
    tracker = Tracker(torrent_port(node))
    try:
        out = make_torrent(node, "demo.bin", tmp_path / "demo.torrent", tracker)
        assert "magnet:?xt=urn:btih:" in out
        assert node.scalar("SELECT count(*) FROM torrent_pieces") == 1
        wait_until(lambda: seeding(node, 1), START_TIMEOUT, what="p2p-torrent to seed it")

        got = aria2c(tmp_path / "demo.torrent", tmp_path / "got")
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
        fetched = (tmp_path / "got" / "demo.bin").read_bytes()
        assert hashlib.sha256(fetched).digest() == hashlib.sha256(data).digest()
        assert tracker.announces >= 1
    finally:
        tracker.close()

    # The node recorded what it served, per peer and file, in the uploads ledger.
    sha = hashlib.sha256(data).hexdigest()
    wait_until(
        lambda: (
            (node.scalar("SELECT sum(bytes) FROM uploads WHERE sha256 = ?", (sha,)) or 0)
            >= len(data)
        ),
        START_TIMEOUT,
        what="the uploads ledger to count every byte",
    )
    assert node.sql("SELECT DISTINCT peer_address, name FROM uploads") == [
        ("127.0.0.1", "sub/demo.bin")
    ]
    # Made again: the whole pieces come from the cache; only the short last one is hashed.
    [(computed_at,)] = node.sql("SELECT computed_at FROM torrent_pieces")
    again = node.p2pctl("torrent", "demo.bin", "-o", str(tmp_path / "again.torrent"))
    assert again.returncode == 0, again.stderr
    assert node.sql("SELECT computed_at FROM torrent_pieces") == [(computed_at,)]
    assert "hashed 3 MiB now" not in again.stdout


@needs_libtorrent
@needs_aria2c
def test_aria2c_fetches_by_a_magnet_link_carrying_the_sha256_hint(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    # x.sha256, xl and x.pl (services/torrent/hints.py) must cost a stock client nothing.
    data = os.urandom(2 * 1024 * 1024 + 999)
    node = seeding_node(make_node, "hinted.bin", data)
    tracker = Tracker(torrent_port(node))
    try:
        out = make_torrent(node, "hinted.bin", tmp_path / "hinted.torrent", tracker)
        link = next(w for w in out.split() if w.startswith("magnet:?"))
        assert f"x.sha256={hashlib.sha256(data).hexdigest()}" in link and "&xl=" in link
        wait_until(lambda: seeding(node, 1), START_TIMEOUT, what="p2p-torrent to seed it")
        got = aria2c(link, tmp_path / "got")
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    finally:
        tracker.close()
    assert (tmp_path / "got" / "hinted.bin").read_bytes() == data


@needs_libtorrent
@needs_aria2c
def test_folder_torrent_keeps_its_tree(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node("seed")
    album = {
        "music/album/a.bin": os.urandom(100_001),
        "music/album/cd1/b.bin": os.urandom(1_300_007),
        "music/album/cd1/c.txt": b"la\n",
        "music/album/cd2/d.bin": os.urandom(777_777),
    }
    for name, data in album.items():
        seed(node, name, data)
    seed(node, "music/other.bin", b"not in the album")
    node.start_supervised()
    wait_until(
        lambda: node.scalar("SELECT count(*) FROM local_files") == len(album) + 1,
        START_TIMEOUT,
        what="the files to be indexed",
    )
    tracker = Tracker(torrent_port(node))
    try:
        out = make_torrent(node, "music/album/", tmp_path / "album.torrent", tracker)
        assert f"{len(album)} files" in out
        wait_until(lambda: seeding(node, 1), START_TIMEOUT, what="p2p-torrent to seed it")
        got = aria2c(tmp_path / "album.torrent", tmp_path / "got")
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    finally:
        tracker.close()
    fetched = {
        str(p.relative_to(tmp_path / "got")): p.read_bytes()
        for p in (tmp_path / "got").rglob("*")
        if p.is_file()
    }
    assert fetched == {name.removeprefix("music/"): data for name, data in album.items()}


@needs_libtorrent
def test_torrent_refuses_what_it_cannot_make(make_node: Callable[..., Node]) -> None:
    node = seeding_node(make_node, "empty.txt", b"")
    for args, says in [
        (("nothing-like-this",), "holds no file matching"),
        (("nowhere/",), "holds no file under"),
        (("empty.txt",), "cannot share nothing"),
        (("empty.txt", "--tracker", "ftp://x"), "is not an http"),
    ]:
        done = node.p2pctl("torrent", *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_without_libtorrent_or_with_a_key_the_role_idles_and_beats(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    # A module named libtorrent that fails to import stands for a node without the extra.
    (tmp_path / "libtorrent.py").write_text("raise ImportError('not here')\n")
    bare = make_node("bare", PYTHONPATH=tmp_path)
    keyed = make_node("keyed", P2P_NETWORK_KEY="a network secret key")
    for node in (bare, keyed):
        node.start(("server", "torrent"), wait=False)
        node.wait_alive(("server", "torrent"))
    assert "not installed" in bare.scalar("SELECT detail FROM heartbeats WHERE role = 'torrent'")
    assert bare.log("torrent").count("pip install 'p2pshare[bittorrent]'") == 1
    seed(bare, "x.bin", b"x" * 1000)
    wait_until(lambda: bare.scalar("SELECT count(*) FROM local_files"), START_TIMEOUT)
    done = bare.p2pctl("torrent", "x.bin")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: BitTorrent needs the libtorrent bindings, which are not installed: "
        "pip install 'p2pshare[bittorrent]'"
    ]
    if load_libtorrent() is not None:
        detail = keyed.scalar("SELECT detail FROM heartbeats WHERE role = 'torrent'")
        assert detail.startswith("off: a network key is set")
        assert (
            keyed.scalar(
                "SELECT value FROM role_settings WHERE role = 'torrent' AND name = 'serving'"
            )
            == "no"
        )

"""BitTorrent downloads (issue 24): `p2pctl download file.torrent` and `p2pctl download
'magnet:?...'` on a node under supervisord fetch from a bare libtorrent session seeding
files of its own on 127.0.0.1 (LSD, DHT, UPnP and NAT-PMP off), named with --peer; the
files land whole in the download folder, are indexed, and show in history. Bad input gets
one sentence, a non-zero exit and no row."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from node import Node, wait_until

from p2pshare.services.torrent import load_libtorrent
from p2pshare.services.torrent.metainfo import TorrentFile, bencode, info_dict, metainfo

pytestmark = pytest.mark.integration
lt = load_libtorrent()
needs_libtorrent = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")

START_TIMEOUT = 30
FETCH_TIMEOUT = 180


class Seeder:
    """A bare libtorrent session of the test's own, seeding one file or folder on loopback."""

    @staticmethod
    def make(folder: Path, name: str) -> bytes:
        """A v1 .torrent of folder/name, as libtorrent makes it."""
        assert lt is not None
        ct = lt.create_torrent(lt.list_files(str(folder / name)), 0, lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, str(folder))
        return bytes(lt.bencode(ct.generate()))

    def __init__(self, folder: Path, name: str, upload_limit: int = 0) -> None:
        assert lt is not None
        self.session = lt.session(
            {
                "upload_rate_limit": upload_limit,
                "listen_interfaces": "127.0.0.1:0",
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "dht_bootstrap_nodes": "",
                "allow_multiple_connections_per_ip": True,
            }
        )
        if upload_limit:
            # libtorrent exempts local peers from rate limits; loopback joins the global class.
            loopback = lt.ip_filter()
            loopback.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
            self.session.set_peer_class_filter(loopback)
        self.metainfo = self.make(folder, name)
        self.info = lt.torrent_info(lt.bdecode(self.metainfo))
        params = lt.add_torrent_params()
        params.ti = self.info
        params.save_path = str(folder)
        params.flags &= ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        self.handle = self.session.add_torrent(params)
        self.port = int(self.session.listen_port())
        wait_until(lambda: self.handle.status().is_seeding, START_TIMEOUT, what="the seeder")

    @property
    def magnet(self) -> str:
        assert lt is not None
        return str(lt.make_magnet_uri(self.info))

    def write(self, path: Path) -> Path:
        path.write_bytes(self.metainfo)
        return path

    def close(self) -> None:
        self.session.pause()


@pytest.fixture
def seeders() -> Iterator[Callable[..., Seeder]]:
    made: list[Seeder] = []

    def factory(folder: Path, name: str, upload_limit: int = 0) -> Seeder:
        made.append(Seeder(folder, name, upload_limit))
        return made[-1]

    yield factory
    for s in made:
        s.close()


def started(make_node: Callable[..., Node]) -> Node:
    node = make_node("leech")
    node.start_supervised()
    wait_until(
        lambda: node.scalar(
            "SELECT value FROM role_settings WHERE role = 'torrent' AND name = 'serving'"
        ),
        START_TIMEOUT,
        what="p2p-torrent to start",
    )
    return node


def downloads_dir(node: Node) -> Path:
    return node.home / "downloads"


def fetch(node: Node, *args: str) -> Any:
    done = node.p2pctl("download", *args, timeout=FETCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done


def indexed(node: Node, name: str) -> str | None:
    return node.scalar(
        "SELECT f.sha256 FROM local_files l JOIN files f ON f.id = l.file_id"
        " WHERE l.root = 'download' AND l.name = ?",
        (name,),
    )


@needs_libtorrent
def test_a_torrent_file_is_fetched_whole_indexed_and_in_history(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 4321)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "movie.bin").write_bytes(data)
    seeder = seeders(tmp_path / "src", "movie.bin")
    torrent = seeder.write(tmp_path / "movie.torrent")
    node = started(make_node)

    done = fetch(node, str(torrent), "--peer", f"127.0.0.1:{seeder.port}")

    saved = downloads_dir(node) / "movie.bin"
    assert f"saved as {saved}" in done.stdout
    assert saved.read_bytes() == data
    sha = hashlib.sha256(data).hexdigest()
    # Indexed as the download ends, so the node offers it to p2pshare peers at once.
    assert indexed(node, "movie.bin") == sha
    [(status, size, done_bytes, row_sha, file_id, source, temp)] = node.sql(
        "SELECT d.status, d.size, d.bytes_done, d.sha256, d.file_id, t.info_hash, d.temp_path"
        " FROM downloads d JOIN torrent_downloads t ON t.download_id = d.id"
    )
    assert (status, size, done_bytes, row_sha, temp) == ("done", len(data), len(data), sha, None)
    assert file_id is not None and source == str(seeder.info.info_hashes().v1)
    assert node.sql("SELECT DISTINCT address FROM download_sources") == [("127.0.0.1",)]
    assert node.scalar("SELECT kind FROM requests") == "torrent"
    # p2pctl status lists p2p-torrent beside the four roles.
    # Its detail comes with its next heartbeat, a few seconds after it started.
    wait_until(
        lambda: (
            (role := node.p2pctl_json("status")["roles"]["torrent"])["alive"]
            and "fetching" in role["detail"]
        ),
        30,
        what="p2pctl status to list p2p-torrent with its detail",
    )
    history = node.p2pctl("history")
    assert history.returncode == 0 and "movie.bin" in history.stdout and "done" in history.stdout
    # The web page lists it among the recent downloads, as any other.
    port = wait_until(
        lambda: node.scalar("SELECT value FROM role_settings WHERE role = 'web' AND name = 'port'"),
        START_TIMEOUT,
        what="the web port",
    )
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
    assert page.status_code == 200 and "movie.bin" in page.text
    # The partial area holds nothing of it any more.
    assert not [p for p in (node.home / "temp").iterdir() if p.name.startswith("torrent-")]
    # The downloader never took it: it runs only downloads with a p2pshare offer.
    assert "movie.bin" not in node.log("downloader")


@needs_libtorrent
def test_a_magnet_is_fetched_and_never_overwrites_a_name(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    data = os.urandom(1024 * 1024 + 17)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "talk.mp4").write_bytes(data)
    seeder = seeders(tmp_path / "src", "talk.mp4")
    node = started(make_node)
    mine = downloads_dir(node) / "talk.mp4"
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(b"the user's own file, not to be overwritten")

    done = fetch(node, seeder.magnet, "--peer", f"127.0.0.1:{seeder.port}")

    saved = downloads_dir(node) / "talk (1).mp4"
    assert f"saved as {saved}" in done.stdout
    assert saved.read_bytes() == data
    assert mine.read_bytes() == b"the user's own file, not to be overwritten"
    # The metadata came from the peer and is kept, with the name and size it gave.
    [(name, size, saved_as, meta, files)] = node.sql(
        "SELECT d.name, d.size, d.saved_as, t.metainfo, t.files FROM downloads d"
        " JOIN torrent_downloads t ON t.download_id = d.id"
    )
    assert (name, size, saved_as, files) == ("talk.mp4", len(data), "talk (1).mp4", 1)
    assert meta is not None and lt is not None
    assert lt.torrent_info(lt.bdecode(meta)).info_hashes() == seeder.info.info_hashes()
    wait_until(
        lambda: indexed(node, "talk (1).mp4") == hashlib.sha256(data).hexdigest(), START_TIMEOUT
    )
    assert "talk (1).mp4" in node.p2pctl("history").stdout
    # Asked again while it is here: said so, exit 0, nothing queued or fetched twice.
    again = fetch(node, seeder.magnet)
    assert again.stdout.strip() == f"already here: {saved}"
    assert node.scalar("SELECT count(*) FROM downloads") == 1


@needs_libtorrent
def test_a_folder_torrent_keeps_its_tree(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    album = {
        "album/a.bin": os.urandom(100_001),
        "album/cd1/b.bin": os.urandom(1_300_007),
        "album/cd1/c.txt": b"la\n",
        "album/cd2/deep/d.bin": os.urandom(777_777),
    }
    for name, data in album.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    seeder = seeders(tmp_path / "src", "album")
    torrent = seeder.write(tmp_path / "album.torrent")
    node = started(make_node)

    fetch(node, str(torrent), "--peer", f"127.0.0.1:{seeder.port}")

    got = downloads_dir(node)
    fetched = {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file()}
    assert fetched == album
    assert node.sql("SELECT name, saved_as, status, size FROM downloads") == [
        ("album/", "album/", "done", sum(len(d) for d in album.values()))
    ]
    for name, data in album.items():
        assert indexed(node, name) == hashlib.sha256(data).hexdigest(), name
    again = fetch(node, str(torrent))
    assert again.stdout.strip() == f"already here: {got / 'album/'}"


@needs_libtorrent
def test_pause_resume_and_cancel_a_torrent_download(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = started(make_node)
    # Nobody listens on the named peer: the download waits for its metadata.
    magnet = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=later.bin"
    done = node.p2pctl("download", magnet, "--peer", "127.0.0.1:9", "--no-wait")
    assert done.returncode == 0, done.stderr
    assert "queued #1: later.bin" in done.stdout

    def status() -> str:
        return str(node.scalar("SELECT status FROM downloads WHERE id = 1"))

    temp = node.home / "temp" / "torrent-1"
    wait_until(lambda: status() == "waiting" and temp.is_dir(), START_TIMEOUT)
    reason = node.scalar("SELECT reason FROM downloads WHERE id = 1")
    assert "metadata" in reason
    # Asked again: the same download, not a second one.
    again = node.p2pctl("download", magnet, "--no-wait")
    assert "already downloading #1" in again.stdout
    assert node.scalar("SELECT count(*) FROM downloads") == 1

    assert node.p2pctl("pause", "1").returncode == 0
    wait_until(lambda: "paused later.bin" in node.log("torrent"), START_TIMEOUT)
    assert status() == "paused" and temp.is_dir()
    assert node.p2pctl("resume", "1").returncode == 0
    wait_until(lambda: status() == "waiting", START_TIMEOUT)
    assert node.p2pctl("cancel", "later.bin").returncode == 0
    wait_until(lambda: not temp.exists(), START_TIMEOUT, what="the temp folder to go")
    assert status() == "cancelled"


class LyingPeer:
    """A BitTorrent peer on 127.0.0.1 that claims every piece of a torrent and answers every
    request with zeros: each piece it sends fails libtorrent's hash check."""

    def __init__(self, info_hash: bytes, pieces: int) -> None:
        self.info_hash, self.pieces = info_hash, pieces
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.sent = 0  # blocks of zeros sent
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                with contextlib.suppress(OSError, ConnectionError):
                    self._serve(conn)

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n and not self.stop.is_set():
            try:
                part = conn.recv(n - len(data))
            except TimeoutError:
                continue
            if not part:
                raise ConnectionError("closed")
            data += part
        return data

    def _serve(self, conn: socket.socket) -> None:
        hello = self._recv(conn, 68)
        if hello[28:48] != self.info_hash:
            return
        pstr = b"BitTorrent protocol"
        conn.sendall(bytes([len(pstr)]) + pstr + bytes(8) + self.info_hash + os.urandom(20))
        bits = bytearray((self.pieces + 7) // 8)
        for i in range(self.pieces):
            bits[i // 8] |= 0x80 >> (i % 8)
        conn.sendall(struct.pack(">IB", 1 + len(bits), 5) + bits)  # bitfield: all of it
        conn.sendall(struct.pack(">IB", 1, 1))  # unchoke
        while not self.stop.is_set():
            (length,) = struct.unpack(">I", self._recv(conn, 4))
            body = self._recv(conn, length) if length else b""
            if body[:1] == b"\x06":  # request: index, begin, length
                index, begin, size = struct.unpack(">III", body[1:13])
                conn.sendall(struct.pack(">IBII", 9 + size, 7, index, begin) + bytes(size))
                self.sent += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@needs_libtorrent
def test_pieces_failing_their_hash_are_counted_and_fetched_again(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 99)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.bin").write_bytes(data)
    node = started(make_node)
    torrent_bytes = Seeder.make(tmp_path / "src", "data.bin")
    torrent = tmp_path / "data.torrent"
    torrent.write_bytes(torrent_bytes)
    assert lt is not None
    info = lt.torrent_info(lt.bdecode(torrent_bytes))
    liar = LyingPeer(bytes.fromhex(str(info.info_hashes().v1)), info.num_pieces())
    try:
        liar_peer = f"127.0.0.1:{liar.port}"
        done = node.p2pctl("download", str(torrent), "--peer", liar_peer, "--no-wait")
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: node.scalar("SELECT bad_chunks FROM downloads WHERE id = 1"),
            FETCH_TIMEOUT,
            what="a hash failure to be counted",
        )
    finally:
        liar.close()
    assert liar.sent > 0
    assert not (node.home / "downloads" / "data.bin").exists()  # nothing unverified lands
    # The same torrent again names an honest seeder: the download takes it and finishes.
    seeder = seeders(tmp_path / "src", "data.bin")
    done = fetch(node, str(torrent), "--peer", f"127.0.0.1:{seeder.port}")
    assert "already downloading #1" in done.stdout
    assert (node.home / "downloads" / "data.bin").read_bytes() == data
    bad, received, status = node.sql("SELECT bad_chunks, bytes_received, status FROM downloads")[0]
    assert status == "done" and bad >= 1
    assert received > len(data)  # the thrown-away pieces were received too
    history = node.p2pctl("history").stdout
    assert "data.bin" in history


@needs_libtorrent
def test_a_torrent_download_goes_on_after_p2p_torrent_restarts(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    data = os.urandom(6 * 1024 * 1024 + 5)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "slow.bin").write_bytes(data)
    # 1 MB/s: the restart comes while most of it is still to fetch.
    seeder = seeders(tmp_path / "src", "slow.bin", upload_limit=1_000_000)
    torrent = seeder.write(tmp_path / "slow.torrent")
    node = started(make_node)
    done = node.p2pctl("download", str(torrent), "--peer", f"127.0.0.1:{seeder.port}", "--no-wait")
    assert done.returncode == 0, done.stderr

    def bytes_done() -> int:
        return int(node.scalar("SELECT bytes_done FROM downloads WHERE id = 1") or 0)

    wait_until(lambda: bytes_done() > 0, START_TIMEOUT, what="the download to start")
    before = node.heartbeats()["torrent"][0]
    restarted = node.supervisorctl("restart", "p2p:torrent")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    # p2pctl knows a role runs by its heartbeat: the new process's first one (a moment
    # after supervisord calls it running, longer on a busy machine).
    wait_until(
        lambda: node.heartbeats().get("torrent", (before, 0.0))[0] != before,
        START_TIMEOUT,
        what="the restarted p2p-torrent's first heartbeat",
    )
    assert node.scalar("SELECT status FROM downloads WHERE id = 1") != "done"
    fetch(node, str(torrent))  # the same torrent: follows the download already there
    assert (downloads_dir(node) / "slow.bin").read_bytes() == data
    assert node.log("torrent").count("fetching slow.bin (download 1") == 2


def bad_torrent(path: Path, paths: list[list[str]]) -> Path:
    info = info_dict("evil", [TorrentFile(("a",), 1)], 16384, b"\0" * 20)
    info["files"] = [{"length": 1, "path": list(p)} for p in paths]  # type: ignore[misc]
    path.write_bytes(metainfo(info, trackers=(), created_by="test", created_at=0))
    return path


def test_bad_input_gets_one_sentence_and_queues_nothing(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = started(make_node)
    (tmp_path / "junk.torrent").write_bytes(b"this is not bencoded")
    (tmp_path / "list.torrent").write_bytes(bencode([1, 2]))
    escape = bad_torrent(tmp_path / "escape.torrent", [["ok.bin"], ["..", "..", "etc", "x"]])
    absolute = bad_torrent(tmp_path / "abs.torrent", [["/etc/passwd"]])
    good = "magnet:?xt=urn:btih:" + "cd" * 20
    for args, says in [
        (("magnet:?dn=nothing",), "names no BitTorrent info-hash"),
        (("magnet:?xt=urn:btih:12345",), "neither 40 hex digits"),
        ((str(tmp_path / "junk.torrent"),), "not bencoded"),
        ((str(tmp_path / "list.torrent"),), "no info dictionary"),
        ((str(escape),), "would write outside the download folder"),
        ((str(absolute),), "would write outside the download folder"),
        ((str(tmp_path / "missing.torrent"), "--peer", "127.0.0.1:1"), "cannot read"),
        ((good, "--peer", "somewhere"), "is not IP:PORT"),
        ((good, "--peer", "127.0.0.1:70000"), "is not IP:PORT"),
        ((good, "--all"), "--all takes names"),
        (("nothing-here", "--peer", "127.0.0.1:1"), "--peer names a BitTorrent peer"),
        (("missing.torrent",), "there is no file missing.torrent here"),
    ]:
        done = node.p2pctl("download", *args)
        assert done.returncode != 0, (args, done.stdout, done.stderr)
        assert says in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert node.scalar("SELECT count(*) FROM downloads") == 0
    assert node.scalar("SELECT count(*) FROM torrent_downloads") == 0


def test_without_libtorrent_a_torrent_download_says_so(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    # A module named libtorrent that fails to import stands for a node without the extra.
    (tmp_path / "libtorrent.py").write_text("raise ImportError('not here')\n")
    node = make_node("bare", PYTHONPATH=tmp_path)
    node.start(("server", "torrent"), wait=False)
    node.wait_alive(("server", "torrent"))
    wait_until(
        lambda: (
            node.scalar(
                "SELECT value FROM role_settings WHERE role = 'torrent' AND name = 'available'"
            )
            == "no"
        ),
        START_TIMEOUT,
    )
    info = info_dict("x.bin", [TorrentFile((), 5)], 16384, b"\0" * 20)
    torrent = tmp_path / "x.torrent"
    torrent.write_bytes(metainfo(info, trackers=(), created_by="test", created_at=int(time.time())))
    done = node.p2pctl("download", str(torrent))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: this node's p2p-torrent cannot fetch: the libtorrent bindings are not installed "
        "where the node runs (pip install 'p2pshare[bittorrent]', then p2pctl restart)"
    ]
    assert node.scalar("SELECT count(*) FROM downloads") == 0

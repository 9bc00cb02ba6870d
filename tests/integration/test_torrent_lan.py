"""A torrent whose files a p2pshare peer holds is taken from that peer (issue 24 item 3):
node A shares files and makes their torrents (each file's SHA-256 rides outside the info
dictionary, and in a one-file magnet as x.sha256); node B, whose only way to the bytes
is p2pshare (A's BitTorrent is off, no other BitTorrent peer exists), downloads by the
magnet link and by the .torrent, and the bytes arrive from A: A's uploads ledger served
them, B's history names A. With hints that no p2pshare peer can honour, libtorrent
fetches, and a hint naming the wrong content never yields a wrong file."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from node import Node, seed, wait_until
from test_torrent_download import Seeder
from test_torrent_download import seeders as seeders  # the fixture, used by name

from p2pshare.services.torrent import load_libtorrent
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.torrent.hints import HINT_KEY, torrent_value

pytestmark = pytest.mark.integration
lt = load_libtorrent()
needs_libtorrent = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")

START_TIMEOUT = 30
FETCH_TIMEOUT = 180


def started(node: Node) -> Node:
    node.start_supervised()
    wait_until(
        lambda: node.scalar(
            "SELECT value FROM role_settings WHERE role = 'torrent' AND name = 'serving'"
        ),
        START_TIMEOUT,
        what=f"{node}'s p2p-torrent to start",
    )
    return node


def indexed(node: Node, root: str, name: str) -> str | None:
    return node.scalar(
        "SELECT f.sha256 FROM local_files l JOIN files f ON f.id = l.file_id"
        " WHERE l.root = ? AND l.name = ?",
        (root, name),
    )


def offered(node: Node, sha256: str) -> bool:
    return bool(
        node.scalar(
            "SELECT count(*) FROM holdings h JOIN files f ON f.id = h.file_id"
            " WHERE f.sha256 = ? AND h.chunks_held > 0",
            (sha256,),
        )
    )


def fetch(node: Node, *args: str) -> str:
    done = node.p2pctl("download", *args, timeout=FETCH_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stdout + done.stderr


def served_to_b(a: Node, sha256: str) -> int:
    return int(
        a.scalar("SELECT coalesce(sum(bytes), 0) FROM uploads WHERE sha256 = ?", (sha256,)) or 0
    )


def last_download(node: Node) -> tuple[int, str, str | None, str | None, str]:
    row = node.sql(
        "SELECT d.id, d.status, d.reason, d.saved_as, d.sha256 FROM downloads d"
        " JOIN torrent_downloads t ON t.download_id = d.id ORDER BY d.id DESC LIMIT 1"
    )[0]
    return int(row[0]), str(row[1]), row[2], row[3], str(row[4])


def sources(node: Node, download_id: int) -> dict[str, int]:
    return {
        str(name or addr): int(n)
        for addr, name, n in node.sql(
            "SELECT address, username, bytes FROM download_sources WHERE download_id = ?",
            (download_id,),
        )
    }


@needs_libtorrent
def test_a_torrent_held_by_a_p2pshare_peer_comes_from_it_without_bittorrent(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    # A serves no BitTorrent at all: whatever B gets, it got over p2pshare.
    a = make_node("holder", P2P_BITTORRENT="off")
    one, two = os.urandom(3 * 1024 * 1024 + 77), os.urandom(2 * 1024 * 1024 + 5)
    sha_one, sha_two = hashlib.sha256(one).hexdigest(), hashlib.sha256(two).hexdigest()
    seed(a, "one.bin", one)
    seed(a, "two.bin", two)
    a.start_supervised()
    wait_until(lambda: indexed(a, "share", "two.bin"), START_TIMEOUT, what="A to index")
    made = a.p2pctl("torrent", "one.bin", "-o", str(tmp_path / "one.torrent"))
    assert made.returncode == 0, made.stderr
    link = next(w for w in made.stdout.split() if w.startswith("magnet:?"))
    assert f"x.sha256={sha_one}" in link and "x.pe=" not in link
    made = a.p2pctl("torrent", "two.bin", "-o", str(tmp_path / "two.torrent"))
    assert made.returncode == 0, made.stderr
    top, _ = mi.bdecode((tmp_path / "two.torrent").read_bytes())
    assert isinstance(top, dict) and HINT_KEY in top

    b = started(make_node("fetcher"))
    wait_until(lambda: offered(b, sha_one) and offered(b, sha_two), START_TIMEOUT,
               what="B to learn A's files")  # fmt: skip

    # By the magnet link: no metadata from anywhere but the file itself.
    out = fetch(b, link)
    did, status, reason, saved_as, sha = last_download(b)
    assert (status, saved_as, sha) == ("done", "one.bin", sha_one)
    assert reason is not None and "p2pshare" in reason and "BitTorrent not used" in reason
    assert "1 of 1 files held by p2pshare peers" in out
    assert "BitTorrent not used" in out  # p2pctl download says where it came from
    assert (b.home / "downloads" / "one.bin").read_bytes() == one
    assert sources(b, did) == {a.username: len(one)}
    assert served_to_b(a, sha_one) >= len(one)
    meta = b.scalar("SELECT metainfo FROM torrent_downloads WHERE download_id = ?", (did,))
    assert meta is not None  # rebuilt from the file, and proven by the link's info-hash
    assert mi.parse_torrent(bytes(meta)).info_hash in link.lower()

    # By the .torrent, into a download folder where the user has a two.bin of their own.
    (b.home / "downloads" / "two.bin").write_bytes(b"the user's own")
    fetch(b, str(tmp_path / "two.torrent"))
    did, status, reason, saved_as, sha = last_download(b)
    assert (status, saved_as, sha) == ("done", "two (1).bin", sha_two)
    assert reason is not None and "BitTorrent not used" in reason
    assert (b.home / "downloads" / "two (1).bin").read_bytes() == two
    assert (b.home / "downloads" / "two.bin").read_bytes() == b"the user's own"
    assert sources(b, did) == {a.username: len(two)}
    assert served_to_b(a, sha_two) >= len(two)

    history = b.p2pctl("history")
    assert history.returncode == 0
    assert history.stdout.count("BitTorrent not used") == 2
    assert not any(p.name.startswith("torrent-") for p in (b.home / "temp").iterdir())


def hinted(metainfo: bytes, sha256s: list[str]) -> bytes:
    """The .torrent with a p2pshare hint added beside its info dictionary."""
    top, _ = mi.bdecode(metainfo)
    assert isinstance(top, dict)
    top[HINT_KEY] = torrent_value(sha256s)
    out = mi.bencode(top)
    assert mi.parse_torrent(out).info_hash == mi.parse_torrent(metainfo).info_hash
    return out


@needs_libtorrent
def test_hints_no_p2pshare_peer_holds_leave_it_to_bittorrent(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 99)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "far.bin").write_bytes(data)
    seeder = seeders(tmp_path / "src", "far.bin")
    torrent = tmp_path / "far.torrent"
    torrent.write_bytes(hinted(seeder.metainfo, [hashlib.sha256(data).hexdigest()]))

    b = started(make_node("fetcher"))
    fetch(b, str(torrent), "--peer", f"127.0.0.1:{seeder.port}")
    did, status, reason, saved_as, _ = last_download(b)
    assert (status, saved_as, reason) == ("done", "far.bin", None)
    assert (b.home / "downloads" / "far.bin").read_bytes() == data
    got = sources(b, did)
    assert got and all(re.fullmatch(r"127\.0\.0\.1", who) for who in got)  # BitTorrent peers
    assert "no p2pshare peer holds any of its 1 files" in b.log("torrent")


@needs_libtorrent
def test_a_wrong_hint_never_makes_a_wrong_file(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    # A offers other bytes of the very size the torrent's file has, and the hint names them.
    size = 2 * 1024 * 1024 + 321
    right, wrong = os.urandom(size), os.urandom(size)
    sha_wrong = hashlib.sha256(wrong).hexdigest()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.bin").write_bytes(right)
    seeder = seeders(tmp_path / "src", "x.bin")
    torrent = tmp_path / "x.torrent"
    torrent.write_bytes(hinted(seeder.metainfo, [sha_wrong]))

    a = make_node("liar", P2P_BITTORRENT="off")
    seed(a, "x.bin", wrong)
    a.start_supervised()
    b = started(make_node("fetcher"))
    wait_until(lambda: offered(b, sha_wrong), START_TIMEOUT, what="B to learn A's file")

    fetch(b, str(torrent), "--peer", f"127.0.0.1:{seeder.port}")
    did, status, reason, saved_as, sha = last_download(b)
    assert (status, saved_as) == ("done", "x.bin")
    assert (b.home / "downloads" / "x.bin").read_bytes() == right
    assert sha == hashlib.sha256(right).hexdigest()
    assert reason is None  # nothing of what A sent was kept
    assert served_to_b(a, sha_wrong) >= size  # the hint was honoured, then refused
    assert "not the torrent's" in b.log("torrent")
    assert sorted(p.name for p in (b.home / "downloads").iterdir()) == ["x.bin"]


@needs_libtorrent
def test_a_folder_takes_what_a_p2pshare_peer_holds_and_the_rest_by_bittorrent(
    make_node: Callable[..., Node], seeders: Callable[..., Seeder], tmp_path: Path
) -> None:
    near, far = os.urandom(3 * 1024 * 1024 + 17), os.urandom(1024 * 1024 + 3)
    sha_near, sha_far = hashlib.sha256(near).hexdigest(), hashlib.sha256(far).hexdigest()
    (tmp_path / "src" / "album").mkdir(parents=True)
    (tmp_path / "src" / "album" / "a.bin").write_bytes(near)
    (tmp_path / "src" / "album" / "b.bin").write_bytes(far)
    seeder = seeders(tmp_path / "src", "album")
    files = [p for p, _ in mi.parse_torrent(seeder.metainfo).files]
    torrent = tmp_path / "album.torrent"
    torrent.write_bytes(
        hinted(seeder.metainfo, [sha_near if p.endswith("a.bin") else sha_far for p in files])
    )

    a = make_node("holder", P2P_BITTORRENT="off")
    seed(a, "elsewhere/a-copy.bin", near)  # another name: the content is what counts
    a.start_supervised()
    b = started(make_node("fetcher"))
    wait_until(lambda: offered(b, sha_near), START_TIMEOUT, what="B to learn A's file")

    out = fetch(b, str(torrent), "--peer", f"127.0.0.1:{seeder.port}")
    did, status, reason, saved_as, _ = last_download(b)
    assert (status, saved_as) == ("done", "album/")
    assert reason == "1 of 2 files from p2pshare peers, the rest by BitTorrent"
    assert reason in out
    assert (b.home / "downloads" / "album" / "a.bin").read_bytes() == near
    assert (b.home / "downloads" / "album" / "b.bin").read_bytes() == far
    got = sources(b, did)
    assert got[a.username] == len(near)  # a.bin whole from A
    assert served_to_b(a, sha_near) >= len(near)
    assert served_to_b(a, sha_far) == 0
    # BitTorrent sent b.bin and at most the pieces that straddle into a.bin, never a.bin.
    assert 0 < got.get("127.0.0.1", 0) < len(near)


def row(node: Node, download_id: int) -> tuple[str, str | None, int]:
    status, reason, done = node.sql(
        "SELECT status, reason, bytes_done FROM downloads WHERE id = ?", (download_id,)
    )[0]
    return str(status), reason, int(done)


def queued_id(node: Node, *args: str) -> int:
    done = node.p2pctl("download", *args, "--no-wait")
    assert done.returncode == 0, done.stderr
    found = re.search(r"#(\d+)", done.stdout)
    assert found, done.stdout
    return int(found.group(1))


@needs_libtorrent
def test_pause_resume_and_cancel_while_a_p2pshare_peer_sends(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    # A sends at 1 MB/s, so each download is under way for seconds when it is paused.
    a = make_node("holder", P2P_BITTORRENT="off", P2P_UPLOAD_LIMIT=1_000_000)
    slow, other = os.urandom(6 * 1024 * 1024 + 1), os.urandom(6 * 1024 * 1024 + 2)
    seed(a, "slow.bin", slow)
    seed(a, "other.bin", other)
    a.start_supervised()
    wait_until(lambda: indexed(a, "share", "other.bin"), START_TIMEOUT, what="A to index")
    for name in ("slow", "other"):
        made = a.p2pctl("torrent", f"{name}.bin", "-o", str(tmp_path / f"{name}.torrent"))
        assert made.returncode == 0, made.stderr
    b = started(make_node("fetcher"))
    wait_until(lambda: offered(b, hashlib.sha256(other).hexdigest()), START_TIMEOUT,
               what="B to learn A's files")  # fmt: skip

    did = queued_id(b, str(tmp_path / "slow.torrent"))
    wait_until(lambda: row(b, did)[2] > 0, FETCH_TIMEOUT, what="bytes from A")
    status, reason, _ = row(b, did)
    assert status == "active" and reason is not None and "p2pshare peer" in reason
    wait_until(lambda: "from p2pshare peers" in b.p2pctl("status").stdout, START_TIMEOUT,
               what="p2pctl status to say so (with p2p-torrent's next heartbeat)")  # fmt: skip
    assert b.p2pctl("pause", str(did)).returncode == 0
    wait_until(lambda: row(b, did)[0] == "paused", START_TIMEOUT, what="the pause")
    # The job sees the pause at its next flush; a resume before that (beside a CPU hog)
    # would find it still running and test nothing.
    wait_until(lambda: f"download {did} paused" in b.log("torrent"), START_TIMEOUT,
               what="p2p-torrent's job to stop for the pause")  # fmt: skip
    assert (b.home / "temp" / f"torrent-{did}").is_dir()  # kept for the resume
    kept = row(b, did)[2]
    assert 0 < kept < len(slow)
    assert b.p2pctl("resume", str(did)).returncode == 0
    wait_until(lambda: row(b, did)[0] == "done", FETCH_TIMEOUT, what="the download")
    # Resumed where it stopped: the job started again with the chunks verified before.
    assert re.search(r"slow\.bin \(\d+ bytes, \d+ chunks, [1-9]\d* already here\)",
                     b.log("torrent")), b.log("torrent")[-3000:]  # fmt: skip
    assert row(b, did)[1] == "from p2pshare peers; BitTorrent not used"
    assert (b.home / "downloads" / "slow.bin").read_bytes() == slow

    gone = queued_id(b, str(tmp_path / "other.torrent"))
    wait_until(lambda: row(b, gone)[2] > 0, FETCH_TIMEOUT, what="bytes from A")
    assert b.p2pctl("cancel", str(gone)).returncode == 0
    wait_until(
        lambda: (
            not (b.home / "temp" / f"torrent-{gone}").exists()
            and not list((b.home / "temp").glob(f"{gone}-*.part"))
        ),
        START_TIMEOUT,
        what="the cancelled download's temp files to go",
    )
    assert row(b, gone)[0] == "cancelled"
    assert not (b.home / "downloads" / "other.bin").exists()


@needs_libtorrent
def test_a_fetch_from_a_p2pshare_peer_goes_on_after_p2p_torrent_restarts(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    a = make_node("holder", P2P_BITTORRENT="off", P2P_UPLOAD_LIMIT=1_000_000)
    data = os.urandom(6 * 1024 * 1024 + 9)
    seed(a, "slow.bin", data)
    a.start_supervised()
    wait_until(lambda: indexed(a, "share", "slow.bin"), START_TIMEOUT, what="A to index")
    made = a.p2pctl("torrent", "slow.bin", "-o", str(tmp_path / "slow.torrent"))
    assert made.returncode == 0, made.stderr
    b = started(make_node("fetcher"))
    wait_until(lambda: offered(b, hashlib.sha256(data).hexdigest()), START_TIMEOUT,
               what="B to learn A's file")  # fmt: skip

    did = queued_id(b, str(tmp_path / "slow.torrent"))
    wait_until(lambda: row(b, did)[2] > 0, FETCH_TIMEOUT, what="bytes from A")
    # SIGTERM mid-file: the role leaves it resumable and exits 0 (supervisorctl waits).
    restarted = b.supervisorctl("restart", "p2p:torrent")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert row(b, did)[0] != "done"
    fetch(b, str(tmp_path / "slow.torrent"))  # follows the download already there
    status, reason, _ = row(b, did)
    assert (status, reason) == ("done", "from p2pshare peers; BitTorrent not used")
    assert (b.home / "downloads" / "slow.bin").read_bytes() == data
    assert b.log("torrent").count(f"download {did}: 1 of its 1 files from p2pshare") == 2
    assert re.search(r"slow\.bin \(\d+ bytes, \d+ chunks, [1-9]\d* already here\)",
                     b.log("torrent")), b.log("torrent")[-3000:]  # fmt: skip

"""SHA-256 hints in torrents (issue 24 item 3, services/torrent/hints.py): written beside
the info dictionary and in a one-file magnet, read back, accepted by libtorrent as if
they were not there, malformed ones ignored with one warning, and never trusted over
the torrent's own hashes (lan.prove)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pshare.cli.torrent_download import request_for
from p2pshare.services.torrent import hints, load_libtorrent
from p2pshare.services.torrent import metainfo as mi
from p2pshare.services.torrent.lan import LanRun, prove
from p2pshare.services.torrent.pieces import stream_pieces

lt = load_libtorrent()
needs_lt = pytest.mark.skipif(lt is None, reason="libtorrent is not installed")

PIECE = 16384
SHA_A, SHA_B = "a" * 64, "b" * 64


def pieces_of(data: bytes, piece: int = PIECE) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + piece]).digest() for i in range(0, len(data), piece))


def one_file(data: bytes, name: str = "x.bin") -> dict[str, mi.Bencodable]:
    return mi.info_dict(name, [mi.TorrentFile((), len(data))], PIECE, pieces_of(data))


def torrent(info: dict[str, mi.Bencodable], hint: mi.Bencodable | None) -> bytes:
    extra = None if hint is None else {hints.HINT_KEY: hint}
    return mi.metainfo(info, trackers=[], created_by="test", created_at=0, extra=extra)


def magnet_of(data: bytes, name: str = "x.bin", *extra: str) -> str:
    btih = mi.info_hash(one_file(data, name))
    sha = hashlib.sha256(data).hexdigest()
    return mi.magnet(btih, name, extra=[*hints.magnet_params(sha, len(data), PIECE), *extra])


# ------------------------------------------------------------ reading them back


def test_a_torrents_hint_round_trips_and_leaves_the_info_hash_alone() -> None:
    info = mi.info_dict(
        "album",
        [mi.TorrentFile(("a.bin",), 5), mi.TorrentFile(("sub", "b.bin"), 7)],
        PIECE,
        pieces_of(b"x" * 12),
    )
    plain = torrent(info, None)
    with_hint = torrent(info, hints.torrent_value([SHA_A, SHA_B]))
    assert mi.parse_torrent(with_hint).info_hash == mi.parse_torrent(plain).info_hash
    found = hints.from_torrent(with_hint)
    assert found.warning is None and found.piece_size == PIECE
    assert found.files == (
        hints.FileHint("album/a.bin", 5, SHA_A),
        hints.FileHint("album/sub/b.bin", 7, SHA_B),
    )
    assert hints.from_torrent(plain) == hints.Hints()


def test_a_magnets_hint_round_trips() -> None:
    data = os.urandom(40000)
    found = hints.from_magnet(magnet_of(data))
    assert found.warning is None and found.piece_size == PIECE
    assert found.files == (hints.FileHint("x.bin", 40000, hashlib.sha256(data).hexdigest()),)
    assert hints.from_magnet(f"magnet:?xt=urn:btih:{'c' * 40}&dn=x") == hints.Hints()


@needs_lt
def test_libtorrent_takes_hinted_torrents_and_magnets_as_plain_ones() -> None:
    assert lt is not None
    data = os.urandom(70000)
    info = one_file(data)
    meta = torrent(info, hints.torrent_value([hashlib.sha256(data).hexdigest()]))
    ti = lt.torrent_info(lt.bdecode(meta))
    assert str(ti.info_hashes().v1) == mi.info_hash(info)
    params = lt.parse_magnet_uri(magnet_of(data, "x.bin", "x.pe=127.0.0.1:1"))
    assert str(params.info_hashes.v1) == mi.info_hash(info) and params.name == "x.bin"


BAD_TORRENT_HINTS: list[tuple[mi.Bencodable, str]] = [
    (b"nonsense", "no list of SHA-256"),
    ({"sha256": b"x" * 32}, "no list of SHA-256"),
    ({"sha256": [b"x" * 32, b"y" * 32]}, "names 2 SHA-256 for 1 files"),
    ({"sha256": [b"x" * 31]}, "not a 32-byte SHA-256"),
    ({"sha256": [7]}, "not a 32-byte SHA-256"),
    ({}, "no list of SHA-256"),
]


@pytest.mark.parametrize(("hint", "says"), BAD_TORRENT_HINTS)
def test_a_malformed_torrent_hint_is_ignored_with_one_warning(
    hint: mi.Bencodable, says: str
) -> None:
    found = hints.from_torrent(torrent(one_file(b"abc"), hint))
    assert found.files == ()
    assert found.warning is not None and says in found.warning and "\n" not in found.warning


BASE = f"magnet:?xt=urn:btih:{'c' * 40}&dn=x.bin"
BAD_MAGNET_HINTS = [
    (f"{BASE}&x.sha256=xyz&xl=3&x.pl=16384", "not 64 hex digits"),
    (f"{BASE}&x.sha256={SHA_A}&x.sha256={SHA_B}&xl=3&x.pl=16384", "more than once"),
    (f"{BASE}&x.sha256={SHA_A}&x.pl=16384", "without one xl"),
    (f"{BASE}&x.sha256={SHA_A}&xl=3", "without one xl"),
    (f"{BASE}&x.sha256={SHA_A}&xl=-3&x.pl=16384", "without one xl"),
    (f"{BASE}&x.sha256={SHA_A}&xl=3&x.pl=0", "without one xl"),
    (f"{BASE}&x.sha256={SHA_A}&xl=3&xl=4&x.pl=16384", "without one xl"),
    (f"{BASE}&x.sha256={SHA_A}&xl=99999999999999999999&x.pl=16384", "without one xl"),
    (f"magnet:?xt=urn:btih:{'c' * 40}&x.sha256={SHA_A}&xl=3&x.pl=9", "without a dn"),
    (f"magnet:?xt=urn:btih:{'c' * 40}&dn=..&x.sha256={SHA_A}&xl=3&x.pl=9", "name refused"),
    (f"magnet:?xt=urn:btih:{'c' * 40}&dn=a%2Fb&x.sha256={SHA_A}&xl=3&x.pl=9", "name refused"),
]


@pytest.mark.parametrize(("link", "says"), BAD_MAGNET_HINTS)
def test_a_malformed_magnet_hint_is_ignored_with_one_warning(link: str, says: str) -> None:
    found = hints.from_magnet(link)
    assert found.files == ()
    assert found.warning is not None and says in found.warning and "\n" not in found.warning


@given(st.binary(max_size=200))
def test_any_hint_value_is_a_hint_or_a_warning(raw: bytes) -> None:
    for hint in (raw, {"sha256": [raw]}, {"sha256": raw}):
        found = hints.from_torrent(torrent(one_file(b"abc"), hint))
        assert found.files == () or len(raw) == 32
        assert found.files != () or found.warning is not None


@given(st.text(max_size=80))
def test_any_magnet_hint_text_is_a_hint_or_a_warning(text: str) -> None:
    found = hints.from_magnet(f"{BASE}&x.sha256={text}&xl={text}&x.pl={text}")
    assert found.files == () and found.warning is not None


def test_p2pctl_warns_of_a_malformed_hint_in_one_line_and_queues_it_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.torrent"
    path.write_bytes(torrent(one_file(b"abc"), {"sha256": [b"short"]}))
    req = request_for(str(path), [])
    assert req.metainfo == path.read_bytes()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "ignored" in err
    request_for(f"{BASE}&x.sha256=zz", [])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "that magnet link" in err and "Traceback" not in err


# ------------------------------------------------------------ never trusted


def test_pieces_streamed_across_files_match_one_buffer(tmp_path: Path) -> None:
    sizes = [0, 1, PIECE - 1, PIECE, 3 * PIECE + 5, 7]
    blobs = [os.urandom(n) for n in sizes]
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"{i}")
        paths[-1].write_bytes(blob)
    assert b"".join(stream_pieces(paths, PIECE)) == pieces_of(b"".join(blobs))


def test_a_magnets_file_is_proven_only_by_its_info_hash(tmp_path: Path) -> None:
    right, wrong = os.urandom(50000), os.urandom(50000)
    path = tmp_path / "x.bin"
    link = magnet_of(right)
    btih = mi.parse_magnet(link).info_hash
    found = hints.from_magnet(link)
    path.write_bytes(right)
    proof = prove(btih, None, found, [path])
    assert proof is not None and mi.parse_torrent(proof).info_hash == btih
    path.write_bytes(wrong)  # what a peer holding the hint's (wrong) SHA-256 would send
    assert prove(btih, None, found, [path]) is None


def test_a_torrents_files_are_proven_only_by_its_pieces(tmp_path: Path) -> None:
    right = os.urandom(50000)
    meta = torrent(one_file(right), hints.torrent_value([SHA_A]))  # a wrong SHA-256 hint
    found = hints.from_torrent(meta)
    btih = mi.parse_torrent(meta).info_hash
    path = tmp_path / "x.bin"
    path.write_bytes(right)
    assert prove(btih, meta, found, [path]) == meta
    path.write_bytes(right[:-1] + bytes([right[-1] ^ 1]))
    assert prove(btih, meta, found, [path]) is None


def test_what_the_torrent_refuses_is_removed_before_bittorrent_fetches(tmp_path: Path) -> None:
    right, wrong = os.urandom(20000), os.urandom(20000)
    link = magnet_of(right)
    found = hints.from_magnet(link)
    (tmp_path / "x.bin").write_bytes(wrong)
    run = LanRun(1, mi.parse_magnet(link).info_hash, None, found, tmp_path, [])
    run.check_whole()  # found here, not fetched by this run: libtorrent's to check
    assert run.proof is None and run.unproven and (tmp_path / "x.bin").exists()
    run.fetched.append("x.bin")
    run.check_whole()
    assert run.proof is None and run.unproven and not (tmp_path / "x.bin").exists()


def test_a_published_file_whose_stamp_moves_while_hashed_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libtorrent closing a removed torrent's file late moves its mtime and ctime.
    from p2pshare.services.settings import load_settings
    from p2pshare.services.torrent import publishing

    settings = load_settings(
        env={"P2P_HOME": str(tmp_path), "P2P_BROADCAST": "127.255.255.255", "P2P_USERNAME": "t"}
    )
    path = tmp_path / "x.bin"
    path.write_bytes(b"x" * 5000)
    real, calls = publishing.hash_file, []

    def moved_once(p: Path, chunk_size: int, *, expect: publishing.Stamp) -> publishing.HashedFile:
        calls.append(p)
        if len(calls) == 1:
            os.utime(p, ns=(1, 1))  # as a late close would
        return real(p, chunk_size, expect=expect)

    monkeypatch.setattr(publishing, "hash_file", moved_once)
    monkeypatch.setattr(publishing, "SETTLE_SECONDS", 0.0)
    hashed = publishing.hash_settled(path, settings)
    assert len(calls) == 2 and hashed.sha256 == hashlib.sha256(b"x" * 5000).hexdigest()
    assert hashed.mtime_ns == 1


def test_files_already_in_the_torrent_folder_are_not_fetched_again(tmp_path: Path) -> None:
    from p2pshare.db.torrents import LanOffer

    whole, partial = hints.FileHint("a.bin", 10, SHA_A), hints.FileHint("b.bin", 10, SHA_B)
    (tmp_path / "a.bin").write_bytes(b"x" * 10)  # a file the LAN sent before a pause
    (tmp_path / "b.bin").write_bytes(b"x" * 4)  # libtorrent's, cut short by a restart
    offer = LanOffer(1, SHA_A, 10, 10, "r", ["e"], 1)
    found = hints.Hints((whole, partial), PIECE)
    run = LanRun(1, "c" * 40, None, found, tmp_path, [(whole, offer), (partial, offer)])
    run.run(None, None, None, None)  # type: ignore[arg-type]  # no leg may start
    assert (run.got, run.fetched, run.failed, run.stopped) == (["a.bin"], [], [], False)
    assert run.proof is None and run.unproven is None  # not whole: libtorrent checks it
    assert (tmp_path / "b.bin").read_bytes() == b"x" * 4

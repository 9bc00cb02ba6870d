"""Requests: one file, a folder or a glob queued as downloads; pausing, resuming, cancelling
and following them; and a download following its name to a rewritten file's new version."""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from typing import Any

import pytest
from sqlalchemy import insert
from test_db import CS, NODE_A, NODE_B, NODE_C, NOW, data_of, heard, sql

from p2pshare.db import catalogs as dbcatalogs
from p2pshare.db import downloads as dbdl
from p2pshare.db import following
from p2pshare.db import index as dbindex
from p2pshare.db import jobs as dbjobs
from p2pshare.db import offer_switch as dbswitch
from p2pshare.db import peers as dbpeers
from p2pshare.db import requests as dbreq
from p2pshare.db.engine import Database
from p2pshare.db.queueing import json_list
from p2pshare.db.schema import bad_peers
from p2pshare.services import protocol
from p2pshare.services.hashing.chain import manifest_entries

PEER_A = ("127.0.0.2", 5001)
PEER_B = ("127.0.0.3", 5002)
PEER_C = ("127.0.0.4", 5003)


# ---------------------------------------------------------------- helpers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashed(data: bytes, cs: int = CS) -> dbindex.HashedFile:
    entries = manifest_entries(data, cs)
    sizes = [len(data[i : i + cs]) for i in range(0, len(data), cs)]
    return dbindex.HashedFile(
        len(data), 1, sha(data), cs, entries, sizes, protocol.manifest_root(entries)
    )


def certificate(node: str) -> str:
    """The fingerprint of a test peer's certificate: one per node id unless a test says."""
    return sha(node.encode())


def proven(
    node: str, seq: int, endpoint: tuple[str, int], cv: int, fingerprint: str | None = None
) -> dbpeers.Heard:
    """An announcement of a peer that speaks TLS: its certificate is proven when its
    catalog is fetched (pinned to the fingerprint), as every catalog here is."""
    return dataclasses.replace(
        heard(node, seq, address=endpoint[0], port=endpoint[1], cv=cv),
        fingerprint=fingerprint or certificate(node),
        tls=True,
    )


def catalog(
    db: Database,
    node: str,
    endpoint: tuple[str, int],
    files: dict[str, bytes],
    *,
    seq: int = 1,
    cs: int = CS,
    fingerprint: str | None = None,
    tls: bool = True,
) -> int:
    """A peer announcing (again, with a higher `seq`) a catalog of whole files; its peer id.
    It speaks TLS with the certificate `fingerprint` (by default one of its own) unless
    `tls` is False."""
    offers, manifests = [], {}
    for name, data in files.items():
        h = hashed(data, cs)
        offers.append(
            dbcatalogs.Offered(name, h.sha256, cs, h.root, len(data), None, len(h.chunk_hashes))
        )
        manifests[h.key] = list(h.chunk_hashes)
    with db.write() as s:
        announced = proven(node, seq, endpoint, seq, fingerprint)
        if not tls:
            announced = dataclasses.replace(announced, fingerprint=None, tls=False)
        peer_id = dbpeers.record_announce(s, announced, now=NOW).peer_id
        assert peer_id is not None
        assert dbcatalogs.apply_catalog(s, peer_id, seq, offers, manifests, now=NOW) == len(files)
    return peer_id


def here(db: Database, name: str, data: bytes, root: str = "share") -> None:
    """This node holds `data` as `root`/`name`."""
    with db.write() as s:
        dbindex.record_local_file(s, root, name, hashed(data), now=NOW)


def queue(db: Database, pattern: str, *, every: bool = False) -> dbreq.Queued:
    with db.write() as s:
        return dbreq.queue_request(s, pattern, every=every, now=NOW)


def file_id(db: Database, data: bytes, cs: int = CS) -> int:
    [(fid,)] = sql(
        db.path, "SELECT id FROM files WHERE sha256 = ? AND chunk_size = ?", sha(data), cs
    )
    return int(fid)


def downloads(db: Database, columns: str = "name, status") -> list[tuple[Any, ...]]:
    return sql(db.path, f"SELECT {columns} FROM downloads ORDER BY id")


def requests(db: Database) -> list[tuple[Any, ...]]:
    return sql(db.path, "SELECT id, pattern, kind, files, already_here FROM requests ORDER BY id")


def progress(db: Database, did: int, have: set[int], *, status: str = "active") -> None:
    """A running job that verified and fsynced chunks `have` of download `did`."""
    with db.write() as s:
        spec = dbjobs.job_spec(s, did)
        assert spec is not None
        dbjobs.start_job(s, did, f"/tmp/p2p-temp/{did}.part", now=NOW)
        bits = protocol.bitfield_empty(len(spec.chunk_hashes))
        for i in have:
            protocol.bitfield_set(bits, i)
        done = sum(min(CS, spec.size - i * CS) for i in have)
        p = dbjobs.Progress(bytes(bits), done, done, 0, [], [], status, None)
        assert dbjobs.record_progress(s, did, p, now=NOW) == status


def finish(db: Database, did: int, status: str) -> None:
    with db.write() as s:
        dbjobs.finish_download(s, did, status=status, reason=f"{status} in a test", now=NOW)


# ---------------------------------------------------------------- folders

A_BIG = data_of(1, 3 * CS)
A_SMALL = data_of(2, 100)
A_MID = data_of(3, CS + 7)
A_DEEP = data_of(4, 2 * CS)
OUTSIDE = {
    "album2/x.flac": data_of(10, 10),
    "album.txt": data_of(11, 11),
    "myalbum/y.flac": data_of(12, 12),
    "other/album/z.flac": data_of(13, 13),
    "Album/upper.flac": data_of(14, 14),
}
ALBUM = {
    "album/01 big.flac": A_BIG,
    "album/cover.jpg": A_SMALL,
    "album/Ünïcødé – 日本語.txt": A_MID,
    "album/disc 2/deep/02.flac": A_DEEP,
}


def test_folder_request_queues_every_file_under_it_and_nothing_beside_it(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM, **OUTSIDE})
    q = queue(db, "album/")

    # A folder is named in any case, as `files` and --all name files: Album/ is album/.
    under = {**ALBUM, "Album/upper.flac": OUTSIDE["Album/upper.flac"]}
    smallest_first = ["Album/upper.flac", "album/cover.jpg", "album/Ünïcødé – 日本語.txt"]
    smallest_first += ["album/disc 2/deep/02.flac", "album/01 big.flac"]
    assert (q.kind, q.pattern, q.new, q.already_here) == ("folder", "album/", 5, [])
    assert [c.name for c in q.candidates] == smallest_first
    assert q.total_bytes == sum(len(d) for d in under.values())
    assert downloads(db, "id, request_id, name, sha256, size, status, pinned") == [
        (did, q.request_id, name, sha(under[name]), len(under[name]), "queued", 0)
        for did, name in zip(q.downloads, smallest_first, strict=True)
    ]
    assert q.downloads == sorted(q.downloads)  # the queue runs by id: smallest first
    assert requests(db) == [(q.request_id, "album/", "folder", 5, 0)]
    # Each download's bitfield has room for its chunks and nothing is held yet.
    assert downloads(db, "have") == [(bytes(1),)] * 5


def test_folder_is_a_whole_path_component(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM, **OUTSIDE})
    with db.write() as s, pytest.raises(dbdl.UnknownName, match="under 'alb/'"):
        dbreq.queue_request(s, "alb/", every=False, now=NOW)
    q = queue(db, "album/disc 2/")
    assert [c.name for c in q.candidates] == ["album/disc 2/deep/02.flac"]
    q = queue(db, "other/")
    assert [c.name for c in q.candidates] == ["other/album/z.flac"]


def test_folder_queues_two_empty_files_of_one_content_under_both_names(db: Database) -> None:
    catalog(
        db,
        NODE_A,
        PEER_A,
        {"album/z.txt": b"12345", "album/empty-b": b"", "album/empty-a": b"", "empty-c": b""},
    )
    q = queue(db, "album/")
    assert [c.name for c in q.candidates] == ["album/empty-a", "album/empty-b", "album/z.txt"]
    assert downloads(db, "name, sha256, size, have") == [
        ("album/empty-a", sha(b""), 0, b""),
        ("album/empty-b", sha(b""), 0, b""),
        ("album/z.txt", sha(b"12345"), 5, bytes(1)),
    ]
    assert (q.new, q.total_bytes) == (3, 5)


def test_folder_skips_only_names_held_here_with_the_same_content(db: Database) -> None:
    old_cover = data_of(20, 99)
    catalog(db, NODE_A, PEER_A, {**ALBUM, "album/empty-a": b"", "album/empty-b": b""})
    here(db, "album/01 big.flac", A_BIG)  # same name, same content: skipped
    here(db, "album/disc 2/deep/02.flac", A_DEEP, root="download")  # a finished download
    here(db, "album/cover.jpg", old_cover)  # same name, another content: fetched
    here(db, "elsewhere/text.txt", A_MID)  # same content, another name: fetched
    here(db, "album/empty-a", b"")  # one of two empty files: the other is fetched

    q = queue(db, "album/")

    assert q.already_here == ["album/01 big.flac", "album/disc 2/deep/02.flac", "album/empty-a"]
    assert [c.name for c in q.candidates] == [
        "album/empty-b",
        "album/cover.jpg",
        "album/Ünïcødé – 日本語.txt",
    ]
    assert downloads(db, "name, sha256") == [
        ("album/empty-b", sha(b"")),
        ("album/cover.jpg", sha(A_SMALL)),
        ("album/Ünïcødé – 日本語.txt", sha(A_MID)),
    ]
    assert requests(db) == [(q.request_id, "album/", "folder", 3, 3)]


def test_folder_all_here_queues_nothing_and_counts_them(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"docs/a.txt": A_SMALL, "docs/b.txt": A_MID})
    here(db, "docs/a.txt", A_SMALL)
    here(db, "docs/b.txt", A_MID, root="download")
    q = queue(db, "docs/")
    assert (q.downloads, q.new, q.already_here, q.total_bytes) == (
        [],
        0,
        ["docs/a.txt", "docs/b.txt"],
        0,
    )
    assert downloads(db) == []
    assert requests(db) == [(q.request_id, "docs/", "folder", 0, 2)]


def test_folder_with_a_name_in_two_versions_is_several_versions(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM})
    catalog(db, NODE_B, PEER_B, {"album/cover.jpg": data_of(21, 100), "album/new.txt": b"n"})
    with db.write() as s, pytest.raises(dbreq.SeveralVersions) as exc:
        dbreq.queue_request(s, "album/", every=False, now=NOW)
    assert exc.value.names == ["album/cover.jpg"]
    assert "album/cover.jpg" in str(exc.value) and "NAME@SHA" in str(exc.value)
    assert downloads(db) == [] and requests(db) == []
    # A glob over the same files is refused the same way; a name outside it is not concerned.
    with db.write() as s, pytest.raises(dbreq.SeveralVersions):
        dbreq.queue_request(s, "*.jpg", every=True, now=NOW)
    assert [c.name for c in queue(db, "*.txt", every=True).candidates] == [
        "album/new.txt",
        "album/Ünïcødé – 日本語.txt",
    ]


def test_several_versions_lists_five_names_and_keeps_them_all(db: Database) -> None:
    names = [f"pics/{i}.jpg" for i in range(7)]
    catalog(db, NODE_A, PEER_A, {n: data_of(30 + i, 50) for i, n in enumerate(names)})
    catalog(db, NODE_B, PEER_B, {n: data_of(40 + i, 50) for i, n in enumerate(names)})
    with db.write() as s, pytest.raises(dbreq.SeveralVersions) as exc:
        dbreq.queue_request(s, "pics/", every=False, now=NOW)
    assert exc.value.names == names
    assert "7 of the files" in str(exc.value)
    assert ", ".join(names[:5]) + ", ..." in str(exc.value)


def test_a_name_matches_as_typed_whatever_its_unicode_form_or_case(db: Database) -> None:
    nfd = unicodedata.normalize("NFD", "Docs/café menü.txt")  # as macOS writes it
    catalog(db, NODE_A, PEER_A, {nfd: A_SMALL, "Docs/other.txt": A_MID})
    q = queue(db, "Docs/café menü.txt")  # typed composed (NFC)
    assert [c.name for c in q.candidates] == [nfd]
    q = queue(db, "docs/", every=False)  # a folder in any case, as --all and files
    assert sorted(c.name for c in q.candidates) == sorted([nfd, "Docs/other.txt"])
    q = queue(db, "*MENÜ*", every=True)
    assert [c.name for c in q.candidates] == [nfd]


def test_empty_or_unknown_folder_is_unknown_name(db: Database) -> None:
    with db.write() as s, pytest.raises(dbdl.UnknownName, match="under 'album/'"):
        dbreq.queue_request(s, "album/", every=False, now=NOW)
    catalog(db, NODE_A, PEER_A, {n: d for n, d in OUTSIDE.items() if n != "Album/upper.flac"})
    with db.write() as s, pytest.raises(dbdl.UnknownName, match="under 'album/'"):
        dbreq.queue_request(s, "album/", every=False, now=NOW)
    with db.write() as s, pytest.raises(dbdl.UnknownName, match="matches 'nothing\\*'"):
        dbreq.queue_request(s, "nothing*", every=True, now=NOW)
    assert requests(db) == [] and downloads(db) == []


# ---------------------------------------------------------------- globs and single files


def test_glob_with_every_queues_every_match_smallest_first(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM, **OUTSIDE})
    q = queue(db, "*.flac", every=True)
    assert q.kind == "glob"
    # fnmatch's * crosses '/'; the glob is case-insensitive like `p2pctl files`.
    assert [c.name for c in q.candidates] == [
        "album2/x.flac",
        "myalbum/y.flac",
        "other/album/z.flac",
        "Album/upper.flac",
        "album/disc 2/deep/02.flac",
        "album/01 big.flac",
    ]
    assert [size for (size,) in downloads(db, "size")] == [10, 12, 13, 14, 2 * CS, 3 * CS]
    assert requests(db) == [(q.request_id, "*.flac", "glob", 6, 0)]


def test_glob_without_every_is_one_file_or_ambiguous(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM, **OUTSIDE})
    with db.write() as s, pytest.raises(dbdl.AmbiguousName) as exc:
        dbreq.queue_request(s, "*.flac", every=False, now=NOW)
    assert len(exc.value.candidates) == 6
    assert requests(db) == [] and downloads(db) == []
    q = queue(db, "*.jpg")
    assert (q.kind, [c.name for c in q.candidates]) == ("file", ["album/cover.jpg"])


def test_pinned_is_set_only_when_the_pattern_has_a_sha(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM, **OUTSIDE})
    queue(db, "album/cover.jpg")
    queue(db, f"album2/x.flac@{sha(OUTSIDE['album2/x.flac'])[:8]}")
    queue(db, "album/disc 2/")
    queue(db, f"*.txt@{sha(A_MID)[:6]}", every=True)
    queue(db, "myalbum", every=True)
    assert downloads(db, "name, pinned") == [
        ("album/cover.jpg", 0),
        ("album2/x.flac", 1),
        ("album/disc 2/deep/02.flac", 0),
        ("album/Ünïcødé – 日本語.txt", 1),
        ("myalbum/y.flac", 0),
    ]


def test_single_file_held_here_under_any_name_is_already_here(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, ALBUM)
    here(db, "mine/cover-copy.jpg", A_SMALL, root="download")
    with db.write() as s, pytest.raises(dbdl.AlreadyHere) as exc:
        dbreq.queue_request(s, "album/cover.jpg", every=False, now=NOW)
    assert (exc.value.root, exc.value.name) == ("download", "mine/cover-copy.jpg")
    assert downloads(db) == []
    with db.write() as s, pytest.raises(dbdl.UnknownName, match="'nope'"):
        dbreq.queue_request(s, "nope", every=False, now=NOW)


def test_single_file_request_records_its_request(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, ALBUM)
    q = queue(db, "cover")
    assert (q.kind, q.new, q.total_bytes) == ("file", 1, len(A_SMALL))
    assert downloads(db, "request_id, name, sha256, size") == [
        (q.request_id, "album/cover.jpg", sha(A_SMALL), len(A_SMALL))
    ]
    assert requests(db) == [(q.request_id, "cover", "file", 1, 0)]


# ---------------------------------------------------------------- reuse


def test_single_file_reuses_an_unfinished_or_paused_download_of_its_content(
    db: Database,
) -> None:
    catalog(db, NODE_A, PEER_A, {"a.bin": A_BIG, "copy-of-a.bin": A_BIG})
    first = queue(db, "a.bin")
    again = queue(db, "a.bin")
    assert (again.downloads, again.new) == (first.downloads, 0)
    progress(db, first.downloads[0], {0}, status="waiting")
    other_name = queue(db, "copy-of-a.bin")  # the same content under another name
    assert (other_name.downloads, other_name.new) == (first.downloads, 0)
    with db.write() as s:
        assert dbreq.pause_downloads(s, "a.bin") == ["a.bin"]
    assert queue(db, "a.bin").downloads == first.downloads
    assert downloads(db) == [("a.bin", "paused")]
    assert [files for _, _, _, files, _ in requests(db)] == [1, 0, 0, 0]
    # A cancelled download is history: asking again queues a new one.
    with db.write() as s:
        dbreq.cancel_downloads(s, "a.bin", now=NOW)
    fresh = queue(db, "a.bin")
    assert fresh.new == 1 and fresh.downloads != first.downloads
    assert downloads(db) == [("a.bin", "cancelled"), ("a.bin", "queued")]


def test_folder_reuses_only_the_same_content_under_the_same_name(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {**ALBUM, "loose/cover.jpg": A_SMALL, "loose/big.flac": A_BIG})
    cover = queue(db, "album/cover.jpg").downloads[0]
    deep = queue(db, "album/disc 2/deep/02.flac").downloads[0]
    loose = queue(db, "loose/big.flac").downloads[0]  # A_BIG, but under another name
    finished = queue(db, "Ünïcødé").downloads[0]
    with db.write() as s:
        dbreq.pause_downloads(s, str(deep))
    finish(db, finished, "failed")

    q = queue(db, "album/")

    assert q.new == 2
    by_name = dict(zip((c.name for c in q.candidates), q.downloads, strict=True))
    assert by_name["album/cover.jpg"] == cover
    assert by_name["album/disc 2/deep/02.flac"] == deep  # paused: reused, still paused
    assert by_name["album/01 big.flac"] not in (loose, cover, deep, finished)
    assert by_name["album/Ünïcødé – 日本語.txt"] not in (loose, cover, deep, finished)
    assert q.total_bytes == sum(len(d) for d in ALBUM.values())
    assert requests(db)[-1] == (q.request_id, "album/", "folder", 2, 0)
    new_rows = sql(db.path, "SELECT name FROM downloads WHERE request_id = ?", q.request_id)
    assert sorted(new_rows) == [("album/01 big.flac",), ("album/Ünïcødé – 日本語.txt",)]


# ---------------------------------------------------------------- pause, resume, cancel


@pytest.fixture
def running(db: Database) -> dict[str, int]:
    """Downloads in every state, by name."""
    catalog(
        db,
        NODE_A,
        PEER_A,
        {
            **ALBUM,
            "myalbum/y.flac": OUTSIDE["myalbum/y.flac"],
            "a.bin": data_of(50, 3 * CS),
            "a.bin.old": data_of(51, 2 * CS),
            "done.bin": data_of(52, 10),
            "failed.bin": data_of(53, 11),
        },
    )
    ids = {c.name: did for c, did in zip(*_q(db, "album/"), strict=True)}
    for name in ("myalbum/y.flac", "a.bin", "a.bin.old", "done.bin", "failed.bin"):
        ids[name] = queue(db, name).downloads[0]
    progress(db, ids["a.bin"], {0, 2})
    progress(db, ids["album/01 big.flac"], {1}, status="waiting")
    finish(db, ids["done.bin"], "done")
    finish(db, ids["failed.bin"], "failed")
    return ids


def _q(db: Database, pattern: str) -> tuple[list[dbdl.Candidate], list[int]]:
    q = queue(db, pattern)
    return q.candidates, q.downloads


def states(db: Database) -> dict[str, tuple[Any, ...]]:
    return {
        name: tuple(rest)
        for name, *rest in downloads(
            db, "name, status, reason, have, bytes_done, temp_path, finished_at"
        )
    }


def test_pause_keeps_what_was_verified(db: Database, running: dict[str, int]) -> None:
    before = states(db)
    with db.write() as s:
        assert dbreq.pause_downloads(s, "a.bin") == ["a.bin"]  # exact name beats substring
    after = states(db)
    assert after["a.bin"] == ("paused", "paused by the user", *before["a.bin"][2:])
    assert after["a.bin"][2:4] == (b"\xa0", 2 * CS)  # chunks 0 and 2
    assert after["a.bin"][4] == "/tmp/p2p-temp/{}.part".format(running["a.bin"])
    assert {n: st for n, st in after.items() if n != "a.bin"} == {
        n: st for n, st in before.items() if n != "a.bin"
    }


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        pytest.param(
            "*.flac",
            ["album/disc 2/deep/02.flac", "album/01 big.flac", "myalbum/y.flac"],
            id="glob",
        ),
        pytest.param("ÜNÏ", ["album/Ünïcødé – 日本語.txt"], id="substring-any-case"),
        pytest.param("a.bin.old", ["a.bin.old"], id="exact-name"),
        pytest.param("done.bin", [], id="finished-not-paused"),
    ],
)
def test_pause_matches_names(
    db: Database, running: dict[str, int], pattern: str, names: list[str]
) -> None:
    with db.write() as s:
        paused = dbreq.pause_downloads(s, pattern)
    assert sorted(paused) == sorted(names)
    assert sorted(n for n, st in states(db).items() if st[0] == "paused") == sorted(names)


def test_folder_pattern_pauses_and_resumes_only_that_folder(
    db: Database, running: dict[str, int]
) -> None:
    # `album/` is the folder a request queued (names starting with it, as queue_request
    # reads it, and as `p2pctl resume 'album/'` after a paused folder request suggests),
    # not every name containing the text: `myalbum/y.flac` is another folder.
    with db.write() as s:
        paused = dbreq.pause_downloads(s, "album/")
    assert sorted(paused) == sorted(ALBUM)
    assert states(db)["myalbum/y.flac"][0] == "queued"
    with db.write() as s:
        dbreq.pause_downloads(s, "myalbum/")
        assert sorted(dbreq.resume_downloads(s, "album/")) == sorted(ALBUM)
    assert states(db)["myalbum/y.flac"][0] == "paused"


@pytest.fixture
def similar(db: Database) -> list[int]:
    """#1 a.bin, #2 a.bin.old, #3 track1.flac: an id and a name inside other names."""
    catalog(db, NODE_A, PEER_A, {"a.bin": A_SMALL, "a.bin.old": A_MID, "track1.flac": A_BIG})
    return [queue(db, name).downloads[0] for name in ("a.bin", "a.bin.old", "track1.flac")]


def test_an_exact_name_already_paused_is_not_read_as_a_substring(
    db: Database, similar: list[int]
) -> None:
    with db.write() as s:
        assert dbreq.pause_downloads(s, "a.bin") == ["a.bin"]
    # Asked again, `a.bin` names the paused download, not every name containing "a.bin".
    with db.write() as s:
        assert dbreq.pause_downloads(s, "a.bin") == []
    assert downloads(db) == [
        ("a.bin", "paused"),
        ("a.bin.old", "queued"),
        ("track1.flac", "queued"),
    ]


def test_the_id_of_an_ended_download_is_not_read_as_a_substring(
    db: Database, similar: list[int]
) -> None:
    assert similar[0] == 1
    with db.write() as s:
        assert dbreq.cancel_downloads(s, "1", now=NOW) == ["a.bin"]
    # Download #1 has ended: `cancel 1` again must not cancel track1.flac instead.
    with db.write() as s:
        assert dbreq.cancel_downloads(s, "1", now=NOW) == []
    assert downloads(db) == [
        ("a.bin", "cancelled"),
        ("a.bin.old", "queued"),
        ("track1.flac", "queued"),
    ]


@pytest.mark.parametrize("pattern", ["99999999999999999999", "²"])
def test_a_number_that_is_no_download_id_matches_nothing(
    db: Database, similar: list[int], pattern: str
) -> None:
    # Too large for an SQLite integer, or a digit int() refuses: neither is a download id.
    with db.write() as s:
        assert dbreq.pause_downloads(s, pattern) == []
        assert dbreq.resume_downloads(s, pattern) == []
        assert dbreq.cancel_downloads(s, pattern, now=NOW) == []
    assert [status for _, status in downloads(db)] == ["queued"] * 3


def test_pause_by_id_takes_only_that_download(db: Database, running: dict[str, int]) -> None:
    did = running["album/cover.jpg"]
    with db.write() as s:
        assert dbreq.pause_downloads(s, str(did)) == ["album/cover.jpg"]
    assert [n for n, st in states(db).items() if st[0] == "paused"] == ["album/cover.jpg"]


def test_resume_touches_only_paused_downloads(db: Database, running: dict[str, int]) -> None:
    with db.write() as s:
        dbreq.pause_downloads(s, "a.bin")
        dbreq.pause_downloads(s, "01 big")
    before = states(db)
    with db.write() as s:
        assert dbreq.resume_downloads(s, "cover") == []  # queued, not paused
        assert dbreq.resume_downloads(s, "done.bin") == []
        assert sorted(dbreq.resume_downloads(s, "*")) == ["a.bin", "album/01 big.flac"]
    after = states(db)
    for name in ("a.bin", "album/01 big.flac"):
        assert after[name] == ("queued", None, *before[name][2:])
    assert after["a.bin"][2:4] == (b"\xa0", 2 * CS)
    assert {n: st for n, st in after.items() if n not in ("a.bin", "album/01 big.flac")} == {
        n: st for n, st in before.items() if n not in ("a.bin", "album/01 big.flac")
    }
    with db.read() as s:
        assert set(dbjobs.unfinished_downloads(s)) >= {
            running["a.bin"],
            running["album/01 big.flac"],
        }


def test_cancel_takes_unfinished_and_paused_and_clears_the_temp_path(
    db: Database, running: dict[str, int]
) -> None:
    with db.write() as s:
        dbreq.pause_downloads(s, "a.bin")
        with_temp = dbjobs.downloads_keeping_temp(s)
    assert running["a.bin"] in with_temp and running["done.bin"] not in with_temp
    before = states(db)
    with db.write() as s:
        assert dbreq.cancel_downloads(s, "bin", now=NOW + 5) == ["a.bin", "a.bin.old"]
        assert dbreq.cancel_downloads(s, "done.bin", now=NOW + 5) == []
    after = states(db)
    for name in ("a.bin", "a.bin.old"):
        status, reason, have, done, temp, finished = after[name]
        assert (status, reason, temp, finished) == (
            "cancelled",
            "cancelled by the user",
            None,
            NOW + 5,
        )
        assert (have, done) == before[name][2:4]
    assert after["done.bin"] == before["done.bin"]
    assert after["failed.bin"] == before["failed.bin"]
    with db.read() as s:
        assert running["a.bin"] not in dbjobs.downloads_keeping_temp(s)


# ---------------------------------------------------------------- following


def test_follow_states_in_the_order_asked(db: Database, running: dict[str, int]) -> None:
    a, cover, done = running["a.bin"], running["album/cover.jpg"], running["done.bin"]
    with db.write() as s:
        p = dbjobs.Progress(
            b"\xa0",
            2 * CS,
            0,
            0,
            [
                dbjobs.SourceTally(*PEER_A, "alice", 2, 2 * CS, 0),
                dbjobs.SourceTally(*PEER_B, "bob", 0, 0, 1),  # sent only a bad chunk
            ],
            [],
            "active",
            None,
        )
        dbjobs.record_progress(s, a, p, now=NOW)
    with db.read() as s:
        got = dbreq.follow_states(s, [done, 99999, a, cover])
    assert got == [
        dbreq.FollowState(done, "done.bin", 10, "done", "done in a test", 0, None, 0),
        dbreq.FollowState(a, "a.bin", 3 * CS, "active", None, 2 * CS, None, 1),
        dbreq.FollowState(cover, "album/cover.jpg", len(A_SMALL), "queued", None, 0, None, 0),
    ]


def test_request_progress_sums_what_follow_states_lists(
    db: Database, running: dict[str, int]
) -> None:
    """The bar of a folder of 10,000 files reads aggregates, not rows: they must add up to
    the rows, and name a waiting download and its reason."""
    a, cover, done = running["a.bin"], running["album/cover.jpg"], running["done.bin"]
    ids = json_list([done, 99999, a, cover])
    with db.write() as s:
        dbjobs.record_progress(
            s,
            a,
            dbjobs.Progress(
                b"\xa0",
                2 * CS,
                0,
                0,
                [dbjobs.SourceTally(*PEER_A, "alice", 2, 2 * CS, 0)],
                [],
                "active",
                None,
            ),  # fmt: skip
            now=NOW,
        )
    with db.read() as s:
        got = following.request_progress(s, ids)
        rows = dbreq.follow_states(s, [done, 99999, a, cover])
    assert got.counts == {"done": 1, "active": 1, "queued": 1} and got.downloads == len(rows)
    assert (got.size, got.bytes_done) == (sum(r.size for r in rows), 2 * CS)
    assert (got.peers, got.waiting) == (1, None)
    with db.write() as s:
        s.exec_driver_sql(
            "UPDATE downloads SET status = 'waiting', reason = 'no peer' WHERE id = ?", (a,)
        )
    with db.read() as s:
        got = following.request_progress(s, ids)
    assert got.counts == {"done": 1, "waiting": 1, "queued": 1}
    assert got.waiting == ("a.bin", "no peer")


# ---------------------------------------------------------------- following a name

V1 = data_of(60, 4 * CS)
SAME_START = V1[: 2 * CS] + data_of(61, 2 * CS)  # chunks 0 and 1 unchanged
LONGER = V1[: 3 * CS] + data_of(62, CS + 9)  # chunks 0-2 unchanged, then more
ALL_NEW = data_of(63, 4 * CS)


def download_row(db: Database, did: int) -> tuple[Any, ...]:
    [row] = sql(
        db.path,
        "SELECT file_id, sha256, size, status, reason, switched, have, bytes_done, pinned "
        "FROM downloads WHERE id = ?",
        did,
    )
    return row


def rewritten(db: Database, data: bytes, *, name: str = "movie.mkv", cs: int = CS) -> None:
    """Peer A rewrote the file: its catalog now offers `data` under the name, not V1."""
    catalog(db, NODE_A, PEER_A, {name: data}, seq=2, cs=cs)


@pytest.mark.parametrize(
    ("new", "kept"),
    [
        pytest.param(SAME_START, {0, 1}, id="same-start"),
        pytest.param(LONGER, {0, 1, 2}, id="longer"),
        pytest.param(ALL_NEW, set(), id="all-new"),
    ],
)
def test_bare_name_follows_the_new_version(db: Database, new: bytes, kept: set[int]) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie").downloads[0]
    progress(db, did, {0, 1, 2, 3})
    rewritten(db, new)

    with db.write() as s:
        change = dbswitch.switch_offer(s, did)

    assert change is not None
    assert (change.ended, change.sha256, change.size) == (False, sha(new), len(new))
    assert f"movie.mkv@{sha(new)[:8]}" in change.reason
    assert sha(V1)[:8] in change.reason
    assert f"{len(kept)} verified chunks kept" in change.reason
    count = protocol.chunk_count(len(new), CS)
    fid, digest, size, status, reason, switched, have, done, pinned = download_row(db, did)
    assert (fid, digest, size, status, pinned) == (
        file_id(db, new),
        sha(new),
        len(new),
        "queued",
        0,
    )
    assert reason == switched == change.reason
    assert set(protocol.bitfield_indices(have, count)) == kept and len(have) == (count + 7) // 8
    assert done == len(kept) * CS
    with db.read() as s:
        spec = dbjobs.job_spec(s, did)
    assert spec is not None and spec.chunk_hashes == manifest_entries(new, CS)


def test_following_keeps_nothing_across_chunk_sizes(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    progress(db, did, {0, 1})
    rewritten(db, SAME_START, cs=2 * CS)
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and "0 verified chunks kept" in change.reason
    fid, digest, *_, have, done, _ = download_row(db, did)
    assert (fid, digest, have, done) == (file_id(db, SAME_START, 2 * CS), sha(SAME_START), b"\0", 0)


def test_following_takes_the_version_more_peers_offer(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    catalog(db, NODE_B, PEER_B, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    rewritten(db, SAME_START)
    catalog(db, NODE_B, PEER_B, {"movie.mkv": SAME_START}, seq=2)
    catalog(db, NODE_C, PEER_C, {"movie.mkv": ALL_NEW})  # another identity: never taken
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and change.sha256 == sha(SAME_START)
    assert "offered by 2 peers" in change.reason


def test_a_bare_name_never_follows_another_identitys_version(db: Database) -> None:
    """The seeder's version is gone and only another certificate offers the name: the
    download ends naming what is offered, as a pinned one does, and takes none of it."""
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    progress(db, did, {0, 1})
    catalog(db, NODE_A, PEER_A, {}, seq=2)  # the seeder stopped offering it
    # Another node at the same endpoint with a certificate of its own (a spoof, or a
    # new machine there), and one elsewhere.
    catalog(db, NODE_B, PEER_A, {"movie.mkv": ALL_NEW})
    catalog(db, NODE_C, PEER_C, {"movie.mkv": SAME_START})
    before = download_row(db, did)
    with db.write() as s:
        assert dbswitch.offers_to_hash(s, did) == set()  # their manifests are not fetched
        change = dbswitch.switch_offer(s, did)
    assert change is not None and change.ended
    assert (change.sha256, change.size) == (sha(V1), len(V1))
    for version in (SAME_START, ALL_NEW):
        assert f"movie.mkv@{sha(version)[:8]}" in change.reason
    assert "offered now by others" in change.reason
    assert download_row(db, did) == before


def test_without_tls_a_bare_name_follows_no_other_version(db: Database) -> None:
    """In clear, a fingerprint is only claimed: nothing proves the new version comes from
    who offered the original, so the download ends naming the versions offered."""
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1}, tls=False)
    did = queue(db, "movie.mkv").downloads[0]
    assert download_row(db, did)[1] == sha(V1)
    assert sql(db.path, "SELECT offered_by FROM downloads WHERE id = ?", did) == [(None,)]
    catalog(db, NODE_A, PEER_A, {"movie.mkv": SAME_START}, seq=2, tls=False)
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and change.ended
    assert "proved its certificate over TLS" in change.reason
    assert f"movie.mkv@{sha(SAME_START)[:8]}" in change.reason
    assert download_row(db, did)[1] == sha(V1)


def test_the_same_certificate_on_another_node_id_is_followed(db: Database) -> None:
    """A restart (a new node id, another port) keeps the certificate: still the seeder."""
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    catalog(db, NODE_A, PEER_A, {}, seq=2)
    catalog(db, NODE_B, PEER_B, {"movie.mkv": ALL_NEW}, fingerprint=certificate(NODE_A))
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and not change.ended and change.sha256 == sha(ALL_NEW)
    assert "with the certificate that offered" in change.reason


def test_pinned_download_ends_naming_the_versions_offered(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, f"movie.mkv@{sha(V1)[:10]}").downloads[0]
    progress(db, did, {0, 1})
    rewritten(db, SAME_START)
    catalog(db, NODE_B, PEER_B, {"movie.mkv": ALL_NEW})
    before = download_row(db, did)
    assert before[-1] == 1

    with db.write() as s:
        change = dbswitch.switch_offer(s, did)

    assert change is not None
    assert (change.ended, change.sha256, change.size) == (True, sha(V1), len(V1))
    assert f"movie.mkv@{sha(V1)[:8]}" in change.reason
    for version in (SAME_START, ALL_NEW):
        assert f"movie.mkv@{sha(version)[:8]}" in change.reason
    assert download_row(db, did) == before


def test_nothing_moves_while_a_live_peer_offers_the_old_content(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    progress(db, did, {0})
    catalog(db, NODE_B, PEER_B, {"backup/movie-old.mkv": V1})  # the old content, another name
    rewritten(db, SAME_START)
    before = download_row(db, did)
    with db.write() as s:
        assert dbswitch.switch_offer(s, did) is None
    assert download_row(db, did) == before
    # That peer goes silent and is forgotten: now the name is followed.
    with db.write() as s:
        fresh = dbpeers.record_announce(s, proven(NODE_A, 3, PEER_A, 2), now=NOW + 100)
        assert fresh.peer_id is not None
        assert dbpeers.expire_peers(s, now=NOW + 100, ttl=30) == ["alice (127.0.0.3:5002)"]
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and change.sha256 == sha(SAME_START)


def test_nothing_moves_when_no_other_version_is_offered_under_the_name(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    progress(db, did, {0})
    # The file is gone from peer A; a new version exists, but only under another name.
    catalog(db, NODE_A, PEER_A, {"movie (new).mkv": SAME_START}, seq=2)
    before = download_row(db, did)
    with db.write() as s:
        assert dbswitch.switch_offer(s, did) is None
    assert download_row(db, did) == before


def test_a_bad_peers_version_is_not_followed(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    rewritten(db, SAME_START)
    with db.write() as s:
        s.execute(
            insert(bad_peers).values(
                address=PEER_A[0],
                tcp_port=PEER_A[1],
                file_id=file_id(db, SAME_START),
                marked_at=NOW,
            )
        )
    before = download_row(db, did)
    with db.write() as s:
        assert dbswitch.switch_offer(s, did) is None
    assert download_row(db, did) == before
    # A good peer with the same certificate offering the same new version is followed.
    catalog(db, NODE_B, PEER_B, {"movie.mkv": SAME_START}, fingerprint=certificate(NODE_A))
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and "offered by 1 peer with the certificate" in change.reason
    assert download_row(db, did)[1] == sha(SAME_START)


def test_a_bad_peer_of_the_old_content_does_not_hold_the_download_back(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    with db.write() as s:
        s.execute(
            insert(bad_peers).values(
                address=PEER_A[0], tcp_port=PEER_A[1], file_id=file_id(db, V1), marked_at=NOW
            )
        )
    catalog(db, NODE_B, PEER_B, {"movie.mkv": ALL_NEW}, fingerprint=certificate(NODE_A))
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    assert change is not None and change.sha256 == sha(ALL_NEW)


def test_asking_again_by_bare_name_reuses_the_download_that_follows_it(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, "movie.mkv").downloads[0]
    rewritten(db, SAME_START)  # before the downloader noticed and switched
    again = queue(db, "movie.mkv")
    assert (again.downloads, again.new) == ([did], 0)
    # Pinned to the new version: a download of its own, pinned.
    pinned = queue(db, f"movie.mkv@{sha(SAME_START)[:8]}")
    assert pinned.new == 1 and pinned.downloads != [did]
    assert downloads(db, "id, sha256, pinned") == [
        (did, sha(V1), 0),
        (pinned.downloads[0], sha(SAME_START), 1),
    ]


def test_a_pinned_download_is_not_reused_for_its_name(db: Database) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    did = queue(db, f"movie.mkv@{sha(V1)[:8]}").downloads[0]
    rewritten(db, SAME_START)
    bare = queue(db, "movie.mkv")
    assert bare.new == 1 and bare.downloads != [did]
    assert downloads(db, "sha256, pinned") == [(sha(V1), 1), (sha(SAME_START), 0)]


def test_asking_name_at_sha_pins_the_version_even_when_a_bare_download_runs(
    db: Database,
) -> None:
    catalog(db, NODE_A, PEER_A, {"movie.mkv": V1})
    queue(db, "movie.mkv")
    pinned = queue(db, f"movie.mkv@{sha(V1)[:8]}")  # "this version or nothing"
    [did] = pinned.downloads
    rewritten(db, SAME_START)
    with db.write() as s:
        change = dbswitch.switch_offer(s, did)
    # Whether the running download was reused or a pinned one queued, what the pinned
    # request waits for must not move to another version.
    assert change is not None and change.ended, change
    assert download_row(db, did)[1] == sha(V1)

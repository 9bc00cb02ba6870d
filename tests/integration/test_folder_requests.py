"""Requests as people make them, between nodes under supervisord: a folder tree, a file
rewritten under the seeder mid-download (by bare name and by NAME@SHA), and a paused
download across a restart of every role."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from chunkgate import ChunkGate
from node import ROLES, Node, pick_udp_port, seed, wait_until

pytestmark = pytest.mark.integration

CHUNK = 16384
# Bounds for a busy machine, not expectations.
KNOWN_TIMEOUT = 60.0
DONE_TIMEOUT = 120.0


def offered(node: Node, prefix: str = "") -> dict[str, str]:
    """name -> SHA-256 of what peers offer, for names starting with prefix."""
    rows = node.sql(
        "SELECT h.name, f.sha256 FROM holdings h JOIN files f ON f.id = h.file_id "
        "WHERE substr(h.name, 1, ?) = ?",
        (len(prefix), prefix),
    )
    return dict(rows)


DOWNLOAD_COLUMNS = ("id", "status", "reason", "sha256", "bytes_done", "switched", "pinned")
DOWNLOAD_COLUMNS += ("request_id", "temp_path")


def download_row(node: Node, name: str) -> dict[str, object] | None:
    rows = node.sql(
        f"SELECT {', '.join(DOWNLOAD_COLUMNS)} FROM downloads WHERE name = ? "
        "ORDER BY id DESC LIMIT 1",
        (name,),
    )
    if not rows:
        return None
    return dict(zip(DOWNLOAD_COLUMNS, rows[0], strict=True))


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def gated_seeder(make_node: Callable[..., Node], label: str) -> Node:
    """A seeder on a UDP port of its own, so peers reach it only through a ChunkGate."""
    return make_node(label, udp_port=pick_udp_port(), P2P_CHUNK_SIZE=CHUNK)


# ---------------------------------------------------------------- folders


ALBUM = {
    "album/cd1/01 Ünïcödé – intro.flac": os.urandom(40 * CHUNK + 123),  # many chunks
    "album/cd1/02.flac": os.urandom(CHUNK),  # exactly one chunk
    "album/cd2/été/notes.txt": b"liner notes\n",
    "album/cd2/empty.txt": b"",  # two 0-byte files: the same SHA-256 under two names
    "album/cd2/été/also empty": b"",
    "album/日本語/トラック.flac": os.urandom(3 * CHUNK + 1),
}
# Beside the folder, never fetched by `album/`.
OUTSIDE = {"album2/x.flac": b"not in the album\n", "albumnotes.txt": b"nor this\n"}


def test_folder_download_recreates_the_tree_and_skips_what_is_here(
    make_node: Callable[..., Node],
) -> None:
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK)
    leech = make_node("leech")
    for name, data in {**ALBUM, **OUTSIDE}.items():
        seed(seeder, name, data)
    seeder.start_supervised()
    leech.start_supervised()
    wait_until(
        lambda: set(offered(leech, "album")) == set(ALBUM) | set(OUTSIDE),
        KNOWN_TIMEOUT,
        what="the album to be known",
    )

    done = leech.p2pctl("download", "album/", timeout=DONE_TIMEOUT)

    assert done.returncode == 0, done.stderr
    assert f"request 1: {len(ALBUM)} files" in done.stdout
    assert f"{len(ALBUM)} of {len(ALBUM)} files arrived" in done.stdout
    downloads = leech.home / "downloads"
    assert tree(downloads) == ALBUM  # byte-identical, nothing from beside the folder
    # One request, one `downloads` row per file pointing at it, smallest first.
    assert leech.sql("SELECT id, pattern, kind, files, already_here FROM requests") == [
        (1, "album/", "folder", len(ALBUM), 0)
    ]
    rows = leech.sql("SELECT name, size, status, request_id FROM downloads ORDER BY id")
    assert {r[0] for r in rows} == set(ALBUM)
    assert [r[1] for r in rows] == sorted(len(d) for d in ALBUM.values())
    assert {(r[2], r[3]) for r in rows} == {("done", 1)}

    # Asked again: everything is here already, which is what the user wants (exit 0).
    again = leech.p2pctl("download", "album/")
    assert again.returncode == 0, again.stderr
    assert f"nothing to fetch: all {len(ALBUM)} files are already here" in again.stdout

    # A glob over the same tree, with one file gone from here: only that one comes, and a
    # taken name elsewhere in the download folder is never written over.
    lost = "album/cd1/02.flac"
    (downloads / lost).unlink()
    wait_until(
        lambda: not leech.sql("SELECT 1 FROM local_files WHERE name = ?", (lost,)),
        KNOWN_TIMEOUT,
        what=f"{lost} to leave the index",
    )
    glob = leech.p2pctl("download", "--all", "album/cd1/*.flac", timeout=DONE_TIMEOUT)
    assert glob.returncode == 0, glob.stderr
    assert "1 of 1 file arrived (1 already here)" in glob.stdout
    assert (downloads / lost).read_bytes() == ALBUM[lost]

    # Bad requests get one sentence and a non-zero exit.
    for args, says in [
        (("download", "nothing/"), "no file on the network under 'nothing/'"),
        (("download", "--all", "*.wav"), "no file on the network matches '*.wav'"),
    ]:
        bad = leech.p2pctl(*args)
        assert bad.returncode != 0 and says in bad.stderr, bad
        assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- a file rewritten mid-request


def start_gated_download(
    make_node: Callable[..., Node],
    chunk_gate: Callable[..., ChunkGate],
    request: Callable[[str], str],
) -> tuple[Node, Node, ChunkGate, bytes]:
    """A seeder behind a gate that lets 20 of 200 chunks through, a leech that asked for
    moving.bin as `request(old sha)` and holds some of it, the rest held back."""
    seeder = gated_seeder(make_node, "seed")
    leech = make_node("leech")
    old = os.urandom(200 * CHUNK)
    seed(seeder, "moving.bin", old)
    seeder.start_supervised()
    leech.start_supervised()
    gate = chunk_gate(seeder, leech.udp_port, budget=20)
    old_sha = hashlib.sha256(old).hexdigest()
    wait_until(lambda: offered(leech).get("moving.bin") == old_sha, KNOWN_TIMEOUT, what="old")
    queued = leech.p2pctl("download", request(old_sha), "--no-wait")
    assert queued.returncode == 0, queued.stderr
    wait_until(
        lambda: (
            (d := download_row(leech, "moving.bin")) and d["bytes_done"] and gate.holding(old_sha)
        ),
        KNOWN_TIMEOUT,
        what=f"part of the old version, the rest held ({gate})",
    )
    return seeder, leech, gate, old


def rewrite(seeder: Node, leech: Node, gate: ChunkGate, old: bytes) -> bytes:
    """The seeder's user rewrites the file in place (same size, same name); once the leech
    knows the new version, the gate lets the held requests reach the seeder."""
    new = old[: 5 * CHUNK] + os.urandom(len(old) - 5 * CHUNK)  # the start stays the same
    seed(seeder, "moving.bin", new)
    new_sha = hashlib.sha256(new).hexdigest()
    wait_until(lambda: offered(leech).get("moving.bin") == new_sha, KNOWN_TIMEOUT, what="new")
    gate.open()
    return new


def test_bare_name_in_clear_ends_naming_the_new_version(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    """In clear nothing proves the rewritten file is offered by the seeder that offered the
    old one (anyone can announce its fingerprint), so a bare-name download does not follow
    it: it ends as a pinned one does, naming the version offered. Following the seeder's
    certificate over TLS: tests/reliability/test_hostile_identity.py."""
    seeder, leech, gate, old = start_gated_download(make_node, chunk_gate, lambda sha: "moving.bin")
    new = rewrite(seeder, leech, gate, old)
    new_sha = hashlib.sha256(new).hexdigest()

    followed = leech.p2pctl("download", "moving.bin", timeout=DONE_TIMEOUT)

    d = download_row(leech, "moving.bin")
    assert d is not None and d["status"] == "failed", (d, followed.stderr)
    old_sha = hashlib.sha256(old).hexdigest()
    assert d["sha256"] == old_sha and d["pinned"] == 0 and d["switched"] is None
    reason = str(d["reason"])
    assert f"moving.bin@{old_sha[:8]}" in reason and f"moving.bin@{new_sha[:8]}" in reason, reason
    assert "over TLS" in reason, reason
    assert not (leech.home / "downloads" / "moving.bin").exists()


def test_name_at_sha_ends_naming_the_versions_offered(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder, leech, gate, old = start_gated_download(
        make_node, chunk_gate, lambda sha: f"moving.bin@{sha[:10]}"
    )
    new = rewrite(seeder, leech, gate, old)
    new_sha = hashlib.sha256(new).hexdigest()

    d = wait_until(
        lambda: (d := download_row(leech, "moving.bin")) and d["status"] == "failed" and d,
        KNOWN_TIMEOUT,
        what="the pinned download to fail",
    )

    old_sha = hashlib.sha256(old).hexdigest()
    assert d["pinned"] == 1 and d["sha256"] == old_sha and d["switched"] is None
    reason = str(d["reason"])
    assert f"moving.bin@{old_sha[:8]}" in reason and f"moving.bin@{new_sha[:8]}" in reason, reason
    # Nothing half-written anywhere: no file in the download folder, no temp file left.
    assert not (leech.home / "downloads" / "moving.bin").exists()
    wait_until(
        lambda: not list((leech.home / "temp").glob("*.part")), KNOWN_TIMEOUT, what="no temp"
    )


# ---------------------------------------------------------------- pause across a restart


def test_pause_keeps_its_chunks_across_a_restart_and_resume_finishes(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = gated_seeder(make_node, "seed")
    leech = make_node("leech")
    data = os.urandom(200 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    seed(seeder, "big.bin", data)
    seeder.start_supervised()
    leech.start_supervised()
    gate = chunk_gate(seeder, leech.udp_port, budget=40)
    wait_until(lambda: offered(leech).get("big.bin") == sha, KNOWN_TIMEOUT, what="big.bin")
    assert leech.p2pctl("download", "big.bin", "--no-wait").returncode == 0
    wait_until(
        lambda: (d := download_row(leech, "big.bin")) and d["bytes_done"] and gate.holding(sha),
        KNOWN_TIMEOUT,
        what="part of big.bin, the rest held",
    )

    paused = leech.p2pctl("pause", "big.bin")
    assert paused.returncode == 0 and paused.stdout.strip() == "paused big.bin", paused
    again = leech.p2pctl("pause", "big.bin")
    assert again.returncode != 0 and "no unfinished download matches" in again.stderr
    before = download_row(leech, "big.bin")
    assert before is not None and before["status"] == "paused"
    received_before = int(leech.scalar("SELECT bytes_received FROM downloads"))

    pids = {r: pid for r, (pid, _) in leech.heartbeats().items() if r in ROLES}
    restarted = leech.supervisorctl("restart", "p2p:*")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_until(
        lambda: (
            set(ROLES) <= (b := leech.heartbeats()).keys()
            and all(b[r][0] != pids[r] for r in ROLES)
        ),
        KNOWN_TIMEOUT,
        what="every role restarted",
    )
    gate.open()
    # The new downloader has looked at its queue and runs nothing: the paused download
    # keeps its place and its chunks, and is still what history and SQL say.
    opened = time.time()
    wait_until(
        lambda: leech.sql(
            "SELECT 1 FROM heartbeats WHERE role = 'downloader' AND beat_at > ? "
            "AND detail LIKE '0 running%'",
            (opened,),
        ),
        KNOWN_TIMEOUT,
        what="the restarted downloader to beat with nothing running",
    )
    after = download_row(leech, "big.bin")
    assert after is not None
    assert (after["status"], after["bytes_done"]) == ("paused", before["bytes_done"])
    assert Path(str(after["temp_path"])).stat().st_size == len(data)
    [entry] = [h for h in leech.p2pctl_json("history") if h["name"] == "big.bin"]
    assert entry["status"] == "paused"

    resumed = leech.p2pctl("resume", "big.bin")
    assert resumed.returncode == 0 and resumed.stdout.strip() == "resumed big.bin", resumed
    follow = leech.p2pctl("download", "big.bin", timeout=DONE_TIMEOUT)
    assert follow.returncode == 0, follow.stderr
    assert (leech.home / "downloads" / "big.bin").read_bytes() == data
    received = int(leech.scalar("SELECT bytes_received FROM downloads"))
    # Resumed, not started over: what was verified before the pause was not fetched again.
    assert received - received_before < len(data), (received, received_before)

"""Case 4: a seeder's file is modified, truncated or deleted while a peer downloads it.

Each change lands in the middle of a transfer, by construction rather than by
timing: the seeder is reached only through a gate the test holds
(tests/reliability/chunkgate.py) that lets a few chunks of each file through and
then holds the leecher's further chunk requests, and the second holder's server
is stopped (SIGSTOP) until the change is made. So every download has verified
chunks from the seeder and cannot have finished when the file changes; then the
gate opens, the held requests reach the seeder, and the second holder resumes.
Whatever the change, the downloader must never publish a file that is not one
whole, verified version: it finishes from another holder of the version it
fetches; with no other holder it fails naming the versions offered, asked as
NAME@SHA or by bare name alike: these nodes speak in clear, where nothing proves
the new version comes from the seeder that offered the old one (a bare name
follows only a certificate proven over TLS: test_hostile_identity.py). The
seeder re-indexes and announces what it now has, also when the rewrite keeps the
file's mtime (as `cp -p`, `rsync -t` or `tar x` do).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from chunkgate import ChunkGate
from node import Node, pick_udp_port, wait_until
from nodetools import (
    download,
    forbidden_log_text,
    offered_sha,
    queue,
    seed,
    sha256_bytes,
    sha256_file,
    tree,
    wait_ended,
    wait_known,
)

pytestmark = pytest.mark.reliability

CHUNK = 16 * 1024
SIZE = 1024 * 1024  # 64 chunks
# Chunks of each file the gate lets through before the change: some, never all.
GATE_BUDGET = 4
# The seeder's chunks go out in slices, so a change can meet one half sent.
SEEDER_LIMIT = 300_000
# The second holder alone sends the two files it holds in about 5 s.
BACKUP_LIMIT = 500_000
# How long the leecher waits for a holder of chunks no online peer has any more. Long
# enough for the seeder's new version to reach the leecher's catalog on a loaded machine
# (the reason a pinned download fails with names it): 4 s was not, beside a CPU hog.
WAIT_TIMEOUT = 10


def gated_seeder(make_node: Callable[..., Node], **settings: object) -> Node:
    """The seeder, announcing on a UDP port nobody else listens on: only the gate hears it."""
    return make_node(
        "seed",
        udp_port=pick_udp_port(),
        P2P_CHUNK_SIZE=CHUNK,
        P2P_UPLOAD_LIMIT=SEEDER_LIMIT,
        **settings,
    )


def modify(path: os.PathLike[str]) -> bytes:
    """Overwrite the file in place with other bytes of the same size (a new mtime)."""
    new = os.urandom(SIZE)
    with open(path, "r+b") as fh:
        fh.write(new)
    return new


def truncate(path: os.PathLike[str]) -> bytes:
    with open(path, "r+b") as fh:
        fh.truncate(SIZE // 3)
        fh.seek(0)
        return fh.read()


def test_changed_files_never_published_wrong(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate]
) -> None:
    seeder = gated_seeder(make_node)
    backup = make_node("backup", P2P_CHUNK_SIZE=CHUNK, P2P_UPLOAD_LIMIT=BACKUP_LIMIT)
    leech = make_node("leech", P2P_WAIT_TIMEOUT=WAIT_TIMEOUT)
    for node in (seeder, backup, leech):
        node.start(wait=False)
    for node in (seeder, backup, leech):
        node.wait_alive()
    gate = chunk_gate(seeder, leech.udp_port, budget=GATE_BUDGET)
    # Three: the downloader runs three downloads at once, and each must be mid-transfer.
    v1 = {name: os.urandom(SIZE) for name in ("modified.bin", "deleted.bin", "truncated.bin")}
    for name, data in v1.items():
        seed(seeder, name, data)
    # The backup holds the announced version of two of them; the truncated one has
    # no other holder.
    seed(backup, "modified.bin", v1["modified.bin"])
    seed(backup, "deleted.bin", v1["deleted.bin"])
    wait_known(leech, "modified.bin", 2)
    wait_known(leech, "deleted.bin", 2)
    wait_known(leech, "truncated.bin", 1)

    # The backup's server sends nothing until the files have changed.
    backup_server = backup.procs["server"]
    backup_server.send_signal(signal.SIGSTOP)
    try:
        ids = {name: queue(leech, name) for name in v1}
        # Every download has verified chunks from the seeder, and the leecher is asking
        # for more of each file than the gate lets through.
        wait_until(
            lambda: all(
                leech.scalar(
                    "SELECT chunks FROM download_sources WHERE download_id = ? AND tcp_port = ?",
                    (i, gate.port),
                )
                and gate.holding(sha256_bytes(v1[name]))
                for name, i in ids.items()
            ),
            30,
            what=f"chunks of every file from the seeder, and more asked for ({gate})",
        )
        # So none can have finished: the seeder sent at most GATE_BUDGET of 64 chunks.
        for name, i in ids.items():
            d = download(leech, i)
            assert d["status"] in ("active", "waiting") and d["bytes_done"] < SIZE, (name, d)

        v2_modified = modify(seeder.share / "modified.bin")
        v2_truncated = truncate(seeder.share / "truncated.bin")
        os.unlink(seeder.share / "deleted.bin")
    finally:
        gate.open()  # the held requests reach the seeder, which has the changed files
        backup_server.send_signal(signal.SIGCONT)

    ended = {name: wait_ended(leech, i, timeout=60) for name, i in ids.items()}

    for name in ("modified.bin", "deleted.bin"):
        d = ended[name]
        assert d["status"] == "done", d
        got = leech.home / "downloads" / name
        assert got.read_bytes() == v1[name], f"{name}: published bytes are not the announced ones"
        assert sha256_file(got) == d["sha256"] == sha256_bytes(v1[name])
    # By bare name, with no other holder of its version: in clear nothing proves the
    # version offered now is the seeder's, so it ends naming it and takes none of it.
    truncated = ended["truncated.bin"]
    assert truncated["status"] == "failed", truncated
    assert f"truncated.bin@{sha256_bytes(v2_truncated)[:8]}" in truncated["reason"], truncated
    assert truncated["sha256"] == sha256_bytes(v1["truncated.bin"]), truncated
    print(f"truncated.bin: {truncated['reason']}")
    # Nothing but whole files in the download folder; nothing left in temp/.
    assert set(tree(leech.home / "downloads")) == {"modified.bin", "deleted.bin"}
    assert tree(leech.home / "temp") == {}

    # The seeder re-indexed and announced its new versions; the leecher knows them.
    want = {
        "modified.bin": {sha256_bytes(v2_modified)},
        "truncated.bin": {sha256_bytes(v2_truncated)},
        "deleted.bin": set(),
    }
    wait_until(
        lambda: {name: offered_sha(leech, seeder.username, name) for name in want} == want,
        20,
        what="the leecher to see the seeder's new versions",
    )
    assert forbidden_log_text(seeder) == [] and forbidden_log_text(leech) == []


@pytest.mark.parametrize("pinned", [False, True], ids=["bare-name", "name-at-sha"])
def test_a_rewrite_that_keeps_the_mtime_is_reindexed(
    make_node: Callable[..., Node], chunk_gate: Callable[..., ChunkGate], pinned: bool
) -> None:
    seeder = gated_seeder(make_node)
    leech = make_node("leech", P2P_WAIT_TIMEOUT=WAIT_TIMEOUT)
    for node in (seeder, leech):
        node.start(wait=False)
    for node in (seeder, leech):
        node.wait_alive()
    gate = chunk_gate(seeder, leech.udp_port, budget=GATE_BUDGET)
    v1 = os.urandom(SIZE)
    path = seed(seeder, "restored.bin", v1)
    wait_known(leech, "restored.bin")
    download_id = queue(
        leech, f"restored.bin@{sha256_bytes(v1)[:12]}" if pinned else "restored.bin"
    )
    try:
        wait_until(
            lambda: (
                download(leech, download_id)["bytes_done"] > 0 and gate.holding(sha256_bytes(v1))
            ),
            30,
            what=f"some chunks, and more asked for ({gate})",
        )
        d = download(leech, download_id)  # at most GATE_BUDGET of 64 chunks: not finished
        assert d["status"] in ("active", "waiting") and d["bytes_done"] < SIZE, d

        st = os.stat(path)
        v2 = modify(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or `rsync -t` leave it
    finally:
        gate.open()
    d = wait_ended(leech, download_id, timeout=60)

    # The seeder noticed its file changed although the mtime is the old one, and announced
    # the new content. Only it had the old version: the download fails naming the version
    # offered, asked as NAME@SHA or by bare name (in clear, nothing proves the new version
    # is the seeder's), and publishes nothing, never a mix of the two.
    assert offered_sha(leech, seeder.username, "restored.bin") == {sha256_bytes(v2)}
    assert tree(leech.home / "temp") == {}
    assert d["status"] == "failed", d
    assert f"restored.bin@{sha256_bytes(v2)[:8]}" in d["reason"], d
    assert d["sha256"] == sha256_bytes(v1) and d["switched"] is None, d
    assert tree(leech.home / "downloads") == {}
    print(f"restored.bin ({'pinned' if pinned else 'bare name'}): {d['reason']}")

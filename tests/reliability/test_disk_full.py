"""Case 5: a download larger than the space left, in the download folder or in temp/.

A 4 MiB tmpfs is mounted (as root) where the leecher puts finished downloads,
or over its P2P_HOME/temp, and the leecher fetches a 6 MiB file. The download
must fail with a reason that says the disk is full, leave no partial file in
the download folder (hidden ones included) or in temp/, and the node must keep
working: a small download right after succeeds. The tmpfs is unmounted at
teardown, after the nodes have stopped. Skipped where mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakepeer import FakeFile, FakePeer
from node import Node, wait_until
from nodetools import (
    download,
    forbidden_log_text,
    queue,
    seed,
    sha256_file,
    tree,
    wait_ended,
    wait_known,
)

pytestmark = pytest.mark.reliability

TMPFS_SIZE = 4 * 1024 * 1024
BIG = 6 * 1024 * 1024
SMALL = 100 * 1024
CHUNK = 64 * 1024


def _mount_tmpfs(path: Path) -> None:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


def _unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:  # still busy: detach it now, the kernel frees it when unused
        subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_disk() -> Iterator[Callable[..., Path]]:
    """Factory: mount a 4 MiB tmpfs on a folder (created if needed). Unmounted at teardown.

    Requested before make_node, so its teardown runs after the nodes have stopped;
    the emptied mount point is then removed, and with `in_home` the node's home
    too when the harness has removed everything else in it (a passing test).
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[tuple[Path, bool]] = []

    def factory(path: Path, *, in_home: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        _mount_tmpfs(path)
        mounted.append((path, in_home))
        return path

    try:
        yield factory
    finally:
        for path, in_home in reversed(mounted):
            _unmount(path)
            for folder in (path, path.parent) if in_home else (path,):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def test_disk_full_fails_cleanly_and_the_node_keeps_working(
    small_disk: Callable[..., Path], make_node: Callable[..., Node]
) -> None:
    seeder = make_node("seed", P2P_CHUNK_SIZE=CHUNK)
    # Finished downloads go to a small disk; temp/ stays on the big one.
    full_downloads = small_disk(Path(tempfile.mkdtemp(prefix="p2pfull")))
    leech_dl = make_node("leechdl", P2P_DOWNLOAD_DIR=full_downloads)
    # temp/ is the small disk; finished downloads go to the big one.
    leech_tmp = make_node("leechtmp")
    small_disk(leech_tmp.home / "temp", in_home=True)
    leeches = (leech_dl, leech_tmp)
    for node in (seeder, *leeches):
        node.start(wait=False)
    for node in (seeder, *leeches):
        node.wait_alive()
    big, small = os.urandom(BIG), os.urandom(SMALL)
    seed(seeder, "big.bin", big)
    seed(seeder, "small.bin", small)
    for node in leeches:
        wait_known(node, "big.bin")
        wait_known(node, "small.bin")

    download_dirs = {leech_dl: full_downloads, leech_tmp: leech_tmp.home / "downloads"}
    big_ids = {node: queue(node, "big.bin") for node in leeches}
    for node, download_id in big_ids.items():
        d = wait_ended(node, download_id, timeout=60)
        print(f"{node.label}: {d['status']}: {d['reason']}")
        assert d["status"] == "failed", d
        reason = (d["reason"] or "").lower()
        assert "space" in reason or "full" in reason, d
        assert tree(download_dirs[node]) == {}, f"{node.label}: a partial file was left behind"
        assert tree(node.home / "temp") == {}, f"{node.label}: temp/ was not cleaned"

    # The node still works: a small download succeeds, into the same folders.
    for node in leeches:
        d = wait_ended(node, queue(node, "small.bin"), timeout=60)
        assert d["status"] == "done", d
        got = download_dirs[node] / "small.bin"
        assert got.read_bytes() == small and sha256_file(got) == d["sha256"]
        assert set(tree(download_dirs[node])) == {"small.bin"}
        assert tree(node.home / "temp") == {}
        beats = node.heartbeats()
        assert set(beats) == {"server", "announcer", "listener", "downloader"}, beats
        assert all(node.procs[r].poll() is None for r in beats), node
        assert forbidden_log_text(node) == []


def test_a_folder_too_full_is_found_before_fetching_and_a_whole_file_is_kept(
    small_disk: Callable[..., Path], make_node: Callable[..., Node], udp_port: int
) -> None:
    """Issue 36: the download folder's room is checked before a byte is fetched; a folder
    that fills while the file arrives pauses the download with the verified file kept,
    and `p2pctl resume` publishes it without fetching it again."""
    folder = small_disk(Path(tempfile.mkdtemp(prefix="p2pfull")))
    leech = make_node("leech", P2P_DOWNLOAD_DIR=folder)
    too_big = FakeFile("too-big.bin", os.urandom(TMPFS_SIZE + CHUNK), CHUNK)
    fits = FakeFile("fits.bin", os.urandom(3 * 1024 * 1024), 4 * CHUNK)
    last = fits.count - 1
    # One peer lacks the last chunk of fits.bin, so the download waits there; the other,
    # with the whole file, comes once the folder has filled up.
    partial = FakeFile(fits.name, fits.data, fits.chunk_size, have=set(range(last)))
    early = FakePeer([too_big, partial], udp_port, username="early").start()
    late: FakePeer | None = None
    try:
        leech.start()
        wait_known(leech, "too-big.bin")
        wait_known(leech, "fits.bin")
        refused = wait_ended(leech, queue(leech, "too-big.bin"))
        assert refused["status"] == "failed"
        assert f"the download folder {folder} is full" in refused["reason"]
        assert early.chunks_served == 0  # found before fetching

        held = queue(leech, "fits.bin")
        wait_until(
            lambda: (
                download(leech, held)["status"] == "waiting"
                and download(leech, held)["bytes_done"] == last * fits.chunk_size
            ),
            60,
            what="fits.bin to wait for its last chunk",
        )
        filler = folder / "filler"
        filler.write_bytes(b"\0" * (TMPFS_SIZE - 2 * 1024 * 1024))
        late = FakePeer([fits], udp_port, username="late").start()
        d = wait_until(
            lambda: (row := download(leech, held))["status"] == "paused" and row,
            60,
            what="fits.bin to pause with its folder full",
        )
        assert "the download folder is full" in d["reason"]
        assert f"p2pctl resume {held}" in d["reason"]
        assert set(tree(folder)) == {"filler"}  # no partial file in the folder
        kept = list((leech.home / "temp").iterdir())
        assert len(kept) == 1 and kept[0].stat().st_size == len(fits.data)
        served = early.chunks_served + late.chunks_served

        filler.unlink()
        resumed = leech.p2pctl("resume", str(held))
        assert resumed.returncode == 0, resumed.stderr
        done = wait_ended(leech, held)
        assert done["status"] == "done", done
        assert (folder / "fits.bin").read_bytes() == fits.data
        assert early.chunks_served + late.chunks_served == served  # nothing fetched again
    finally:
        early.close()
        if late is not None:
            late.close()


def test_a_read_only_download_folder_fails_small_and_big_files_before_fetching(
    small_disk: Callable[..., Path], make_node: Callable[..., Node], udp_port: int
) -> None:
    """Issue 36: a download folder that takes no files fails a download at once, one
    sentence, whether the file goes in a small-file batch or a job of its own."""
    folder = small_disk(Path(tempfile.mkdtemp(prefix="p2pro")))
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.strip() or done.returncode}")
    leech = make_node("leech", P2P_DOWNLOAD_DIR=folder)
    small = FakeFile("small.txt", os.urandom(3000), CHUNK)
    big = FakeFile("big.bin", os.urandom(20 * CHUNK), CHUNK)
    peer = FakePeer([small, big], udp_port, username="seed").start()
    try:
        leech.start()
        wait_known(leech, "small.txt")
        wait_known(leech, "big.bin")
        for name in ("small.txt", "big.bin"):
            d = wait_ended(leech, queue(leech, name))
            assert d["status"] == "failed", d
            assert d["reason"] == (
                f"cannot write into the download folder {folder}: Read-only file system"
            )
        assert peer.chunks_served == 0  # found before fetching
    finally:
        peer.close()

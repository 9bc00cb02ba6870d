"""The temp file's writer: order, endgame copies, halts and write errors, on real files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from p2pshare.services.downloader.writer import WRITE_PIECE, BlockWriter

CHUNK = 64 * 1024


class Harness:
    """A writer into a real temp file, with a done-set the verdicts fill as the job's
    chunk_verified would (under the writer's lock)."""

    def __init__(self, path: Path, *, flags: int = os.O_RDWR | os.O_CREAT) -> None:
        self.fd = os.open(path, flags, 0o600)
        self.done: set[int] = set()
        self.halt = threading.Event()
        self.errors: list[OSError] = []
        self.writer = BlockWriter(
            is_done=self.done.__contains__, halted=self.halt.is_set, failed=self.errors.append
        )
        self.writer.open(self.fd)

    def write(self, index: int, data: bytes, offset: int, then=None) -> bool:
        return self.writer.write(index, memoryview(bytearray(data)), offset, then)

    def verified(self, index: int, told: list[bool] | None = None):
        """A verdict: marks the chunk done if its bytes were written, as chunk_verified."""

        def then(wrote: bool) -> None:
            if told is not None:
                told.append(wrote)
            if wrote:
                self.done.add(index)

        return then

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(tmp_path / "t.part")
    yield h
    h.close()


def read(path: Path) -> bytes:
    return path.read_bytes()


def test_pieces_land_at_their_offsets(harness, tmp_path):
    assert harness.write(1, b"b" * CHUNK, CHUNK)
    assert harness.write(0, b"a" * CHUNK, 0)
    assert read(tmp_path / "t.part") == b"a" * CHUNK + b"b" * CHUNK


def test_a_piece_longer_than_a_write_piece_is_written_whole(harness, tmp_path):
    data = os.urandom(WRITE_PIECE * 2 + 123)
    assert harness.write(0, data, 0)
    assert read(tmp_path / "t.part") == data


def test_the_verdict_runs_after_the_bytes_are_in_the_file(harness, tmp_path):
    seen: list[bytes] = []
    harness.write(0, b"x" * CHUNK, 0, lambda wrote: seen.append(read(tmp_path / "t.part")))
    assert seen == [b"x" * CHUNK]


def test_first_copy_cannot_overwrite_a_verified_endgame_copy(harness, tmp_path):
    """The slow first peer's piece that arrives after the verified copy won is dropped."""
    harness.write(0, b"?" * (CHUNK // 2), 0)  # first half of the first copy
    told: list[bool] = []
    harness.write(0, b"v" * CHUNK, 0, harness.verified(0, told))
    assert told == [True]
    assert not harness.write(0, b"?" * (CHUNK // 2), CHUNK // 2)  # its second half, too late
    assert read(tmp_path / "t.part") == b"v" * CHUNK


def test_endgame_copy_of_a_chunk_already_done_is_not_written(harness, tmp_path):
    harness.write(0, b"a" * CHUNK, 0, harness.verified(0))
    told: list[bool] = []
    harness.write(0, b"z" * CHUNK, 0, told.append)
    assert told == [False]
    assert read(tmp_path / "t.part") == b"a" * CHUNK


def test_halt_drops_every_write(harness, tmp_path):
    harness.halt.set()
    told: list[bool] = []
    assert not harness.write(0, b"a" * CHUNK, 0, told.append)
    assert told == [False]
    assert read(tmp_path / "t.part") == b""


def test_write_error_is_told_once_and_nothing_more_is_written(tmp_path):
    (tmp_path / "ro.part").write_bytes(b"")
    h = Harness(tmp_path / "ro.part", flags=os.O_RDONLY)
    try:
        told: list[bool] = []
        assert not h.write(0, b"a" * CHUNK, 0, told.append)
        assert not h.write(1, b"b" * CHUNK, CHUNK, told.append)
        assert len(h.errors) == 1 and h.writer.broken
        assert told == [False, False]  # each verdict still runs: the chunk goes back
    finally:
        h.close()


def test_a_failing_verdict_does_not_break_the_writer(harness, tmp_path):
    def boom(wrote: bool) -> None:
        raise RuntimeError("a bug in a verdict")

    harness.write(1, b"b" * CHUNK, CHUNK, boom)
    assert harness.write(0, b"a" * CHUNK, 0)
    assert read(tmp_path / "t.part") == b"a" * CHUNK + b"b" * CHUNK


def test_writes_from_two_threads_never_interleave_with_a_verdict(harness, tmp_path):
    """Two peer threads write pieces of different chunks at once; each chunk's verdict
    sees exactly its own bytes, and every byte lands where it belongs."""
    chunks = 64
    checked: list[bool] = []

    def worker(start: int) -> None:
        for i in range(start, chunks, 2):
            payload = bytes([i]) * CHUNK

            def then(wrote: bool, i: int = i, payload: bytes = payload) -> None:
                got = os.pread(harness.fd, CHUNK, i * CHUNK)
                checked.append(wrote and got == payload)

            harness.write(i, payload, i * CHUNK, then)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert checked == [True] * chunks
    assert read(tmp_path / "t.part") == b"".join(bytes([i]) * CHUNK for i in range(chunks))


def test_drain_waits_for_a_write_under_way(harness):
    entered, release = threading.Event(), threading.Event()

    def slow(wrote: bool) -> None:
        entered.set()
        release.wait(10)

    t = threading.Thread(target=harness.write, args=(0, b"a" * CHUNK, 0, slow))
    t.start()
    assert entered.wait(10)
    drained = threading.Event()
    d = threading.Thread(target=lambda: (harness.writer.drain(), drained.set()))
    d.start()
    assert not drained.wait(0.2)  # still inside the write's hold of the lock
    release.set()
    assert drained.wait(10)
    t.join()
    d.join()

"""The temp file's one writer: order, endgame copies, halts and write errors, on real files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from p2pshare.services.block_writer import WRITE_PIECE, Block, BlockWriter, Verdict, Whole

CHUNK = 64 * 1024


class Harness:
    """A writer into a real temp file, with a done-set the verdicts fill as the job's
    chunk_verified would (on the writer's thread)."""

    def __init__(
        self, path: Path, *, flags: int = os.O_RDWR | os.O_CREAT, inline: bool = False
    ) -> None:
        self.fd = os.open(path, flags, 0o600)
        self.done: set[int] = set()
        self.halt = threading.Event()
        self.errors: list[OSError] = []
        self.returned: list[bytearray] = []
        self.writer = BlockWriter(
            is_done=self.done.__contains__,
            halted=self.halt.is_set,
            failed=self.errors.append,
            name="test-writer",
            inline=inline,
        )
        self.writer.open(self.fd)

    def block(self, index: int, data: bytes, offset: int) -> bytearray:
        buf = bytearray(data)
        self.writer.put(Block(index, buf, len(data), offset, self.returned.append))
        return buf

    def close(self) -> None:
        self.writer.close()
        os.close(self.fd)


@pytest.fixture(params=[False, True], ids=["thread", "inline"])
def harness(tmp_path: Path, request: pytest.FixtureRequest):
    # Inline (one CPU: no thread, each item under a lock) must keep every rule the
    # writer thread keeps.
    h = Harness(tmp_path / "t.part", inline=request.param)
    yield h
    h.close()


def read(path: Path) -> bytes:
    return path.read_bytes()


def test_blocks_land_at_their_offsets_and_buffers_come_back(harness, tmp_path):
    a = harness.block(1, b"b" * CHUNK, CHUNK)
    b = harness.block(0, b"a" * CHUNK, 0)
    harness.writer.drain()
    assert read(tmp_path / "t.part") == b"a" * CHUNK + b"b" * CHUNK
    assert harness.returned == [a, b]


def test_a_block_longer_than_a_piece_is_written_whole(harness, tmp_path):
    data = os.urandom(WRITE_PIECE * 2 + 123)
    harness.block(0, data, 0)
    harness.writer.drain()
    assert read(tmp_path / "t.part") == data


def test_verdict_runs_after_the_blocks_before_it(harness, tmp_path):
    seen: list[bytes] = []
    harness.block(0, b"x" * CHUNK, 0)
    harness.writer.put(Verdict(lambda: seen.append(read(tmp_path / "t.part"))))
    harness.writer.drain()
    assert seen == [b"x" * CHUNK]


def test_first_copy_cannot_overwrite_a_verified_endgame_copy(harness, tmp_path):
    """The slow first peer's blocks that arrive after the verified copy won are dropped,
    but their buffers still go back to that peer."""
    harness.block(0, b"?" * (CHUNK // 2), 0)  # first half of the first copy

    def won(wrote: bool) -> None:
        assert wrote
        harness.done.add(0)  # what chunk_verified does on the writer thread

    harness.writer.put(Whole(0, memoryview(bytearray(b"v" * CHUNK)), 0, won))
    late = harness.block(0, b"?" * (CHUNK // 2), CHUNK // 2)  # its second half, too late
    harness.writer.drain()
    assert read(tmp_path / "t.part") == b"v" * CHUNK
    assert late in harness.returned


def test_endgame_copy_of_a_chunk_already_done_is_not_written(harness, tmp_path):
    harness.block(0, b"a" * CHUNK, 0)
    harness.writer.put(Verdict(lambda: harness.done.add(0)))
    told: list[bool] = []
    harness.writer.put(Whole(0, memoryview(bytearray(b"z" * CHUNK)), 0, told.append))
    harness.writer.drain()
    assert told == [False]
    assert read(tmp_path / "t.part") == b"a" * CHUNK


def test_halt_drops_every_write(harness, tmp_path):
    harness.halt.set()
    buf = harness.block(0, b"a" * CHUNK, 0)
    harness.writer.drain()
    assert read(tmp_path / "t.part") == b""
    assert harness.returned == [buf]


def test_write_error_is_told_once_and_nothing_more_is_written(tmp_path):
    (tmp_path / "ro.part").write_bytes(b"")
    h = Harness(tmp_path / "ro.part", flags=os.O_RDONLY)
    try:
        first = h.block(0, b"a" * CHUNK, 0)
        second = h.block(1, b"b" * CHUNK, CHUNK)
        h.writer.drain()
        assert len(h.errors) == 1 and h.writer.broken
        assert h.returned == [first, second]  # no peer thread waits forever for a buffer
    finally:
        h.close()


def test_a_failing_callback_does_not_stop_the_writer(harness, tmp_path):
    def boom() -> None:
        raise RuntimeError("a bug in a verdict")

    harness.writer.put(Verdict(boom))
    harness.block(0, b"a" * CHUNK, 0)
    harness.writer.drain()
    assert read(tmp_path / "t.part") == b"a" * CHUNK


def test_close_writes_what_was_queued_and_ends_the_thread(tmp_path):
    h = Harness(tmp_path / "c.part")
    h.block(0, b"a" * CHUNK, 0)
    h.writer.close()
    assert not h.writer.is_alive()
    assert read(tmp_path / "c.part") == b"a" * CHUNK
    h.writer.drain()  # after the end: returns at once
    os.close(h.fd)

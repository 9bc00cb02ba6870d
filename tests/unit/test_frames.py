"""The chunk server's batches of request frames, from a real asyncio StreamReader."""

from __future__ import annotations

import asyncio
import json

import pytest

from p2pshare.services import protocol
from p2pshare.services.server.frames import FrameReader


def frame(op: str, **fields: object) -> bytes:
    body = json.dumps({"op": op, **fields}).encode()
    return protocol.FRAME_HEADER.pack(len(body)) + body


def body_of(data: bytes) -> bytes:
    return data[protocol.FRAME_HEADER.size :]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_every_frame_received_together_is_one_batch_in_order() -> None:
    frames = [frame("have", i=i) for i in range(5)]

    async def go() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(frames))
        return await FrameReader(reader).batch(1, 1)

    assert run(go()) == [body_of(f) for f in frames]


def test_a_batch_never_exceeds_its_limit_and_the_rest_comes_next() -> None:
    frames = [frame("catalog", n=i) for i in range(7)]

    async def go() -> list[list[bytes]]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(frames))
        frames_in = FrameReader(reader, max_batch=3)
        return [await frames_in.batch(1, 1) for _ in range(3)]

    assert run(go()) == [
        [body_of(f) for f in frames[0:3]],
        [body_of(f) for f in frames[3:6]],
        [body_of(frames[6])],
    ]


def test_a_frame_split_across_segments_waits_for_its_end() -> None:
    data = frame("have", sha="a" * 64) + frame("catalog")

    async def go() -> list[list[bytes]]:
        reader = asyncio.StreamReader()
        frames_in = FrameReader(reader)
        reader.feed_data(data[:3])  # not even a whole header
        first = asyncio.create_task(frames_in.batch(5, 5))
        await asyncio.sleep(0)
        assert not first.done()
        reader.feed_data(data[3:20])
        await asyncio.sleep(0)
        assert not first.done()
        reader.feed_data(data[20:])
        return [await first]

    assert run(go()) == [[body_of(frame("have", sha="a" * 64)), body_of(frame("catalog"))]]


def test_silence_times_out_idle_and_a_started_frame_times_out_sooner() -> None:
    async def idle() -> None:
        await FrameReader(asyncio.StreamReader()).batch(0.05, 5)

    async def half() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frame("have", x=1)[:-3])
        await FrameReader(reader).batch(5, 0.05)

    with pytest.raises(TimeoutError):
        run(idle())
    with pytest.raises(TimeoutError):
        run(half())


def test_a_trickled_frame_must_end_within_the_frame_timeout_however_it_trickles() -> None:
    data = frame("have", pad="x" * 200)

    async def go() -> None:
        reader = asyncio.StreamReader()
        frames_in = FrameReader(reader)

        async def trickle() -> None:
            for byte in data[:-1]:
                reader.feed_data(bytes([byte]))
                await asyncio.sleep(0.002)

        feeder = asyncio.create_task(trickle())
        try:
            await frames_in.batch(5, 0.1)
        finally:
            feeder.cancel()

    with pytest.raises(TimeoutError):
        run(go())


def test_a_header_announcing_too_much_is_refused_after_the_frames_before_it() -> None:
    good = frame("catalog")
    huge = protocol.FRAME_HEADER.pack(protocol.MAX_FRAME + 1)

    async def go() -> tuple[list[bytes], Exception | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(good + huge)
        frames_in = FrameReader(reader)
        first = await frames_in.batch(1, 1)
        try:
            await frames_in.batch(1, 1)
        except protocol.ProtocolError as exc:
            return first, exc
        return first, None

    first, error = run(go())  # type: ignore[misc]
    assert first == [body_of(good)]
    assert isinstance(error, protocol.MessageTooLarge)


def test_the_peer_closing_mid_frame_ends_the_batch_with_incomplete_read() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frame("catalog")[:5])
        reader.feed_eof()
        await FrameReader(reader).batch(1, 1)

    with pytest.raises(asyncio.IncompleteReadError):
        run(go())

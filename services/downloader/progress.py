"""A download's durable progress: what the peer threads verified, made durable in batches.

The peer threads add to a `Ledger` under the job's lock; the job's loop takes it
every FLUSH_SECONDS, fsyncs the temp file once, and only then records the newly
verified chunks in one transaction. A chunk is recorded as held only after the
fsync that made it durable, so a restart after SIGKILL or a power cut trusts
exactly what is on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from p2pshare.db import jobs as dbjobs
from p2pshare.db.engine import Database
from p2pshare.services import protocol


@dataclass
class Tally:
    chunks: int = 0
    bytes: int = 0
    bad_chunks: int = 0


@dataclass
class Ledger:
    """What happened since the last flush; the caller holds the job's lock to touch it."""

    verified: list[int] = field(default_factory=list)  # not yet fsynced
    tallies: dict[tuple[str, int], Tally] = field(default_factory=dict)
    new_bad: list[tuple[str, int]] = field(default_factory=list)
    received: int = 0

    def good(self, key: tuple[str, int], index: int, size: int) -> None:
        self.verified.append(index)
        tally = self.tallies.setdefault(key, Tally())
        tally.chunks += 1
        tally.bytes += size

    def bad(self, key: tuple[str, int]) -> None:
        self.tallies.setdefault(key, Tally()).bad_chunks += 1
        self.new_bad.append(key)


class DurableProgress:
    """The bitfield of chunks that are verified and on disk, and its record in `downloads`."""

    def __init__(self, spec: dbjobs.JobSpec, count: int, have: bytes) -> None:
        self.spec = spec
        self.count = count
        self.bits = bytearray(have) or protocol.bitfield_empty(count)

    def reset(self) -> None:
        self.bits = protocol.bitfield_empty(self.count)

    def bytes_done(self) -> int:
        return sum(
            protocol.chunk_length(self.spec.size, self.spec.chunk_size, i)
            for i in protocol.bitfield_indices(bytes(self.bits), self.count)
        )

    def take_bad(self, database: Database, batch: Ledger, *, now: float) -> list[tuple[str, int]]:
        """The sources found lying since the last flush, to mark on the download's row."""
        return batch.new_bad

    def flush(
        self,
        database: Database,
        fd: int,
        batch: Ledger,
        state: tuple[str, str | None],
        usernames: dict[tuple[str, int], str],
        *,
        now: float,
    ) -> str:
        """fsync the batch's chunks, then record them. Returns the download's status in the db
        (a cancel by the user shows here)."""
        if batch.verified:
            os.fdatasync(fd)  # one fsync per batch, never per chunk
            for i in batch.verified:
                protocol.bitfield_set(self.bits, i)
        progress = dbjobs.Progress(
            have=bytes(self.bits),
            bytes_done=self.bytes_done(),
            new_bytes_received=batch.received,
            new_bad_chunks=sum(t.bad_chunks for t in batch.tallies.values()),
            tallies=[
                dbjobs.SourceTally(a, p, usernames.get((a, p), ""), t.chunks, t.bytes, t.bad_chunks)
                for (a, p), t in batch.tallies.items()
            ],
            new_bad_peers=self.take_bad(database, batch, now=now),
            status=state[0],
            reason=state[1],
        )
        # Durable too (one fsync of the WAL a flush, beside the temp file's): a power cut
        # then costs only the chunks verified since the last flush, never all of them.
        with database.write(durable=bool(batch.verified)) as s:
            return dbjobs.record_progress(s, self.spec.download_id, progress, now=now)

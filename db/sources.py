"""Which peers are usable sources of a content, and the marks that make a peer unusable
for one: the one definition of both (the downloader's jobs and batches, queueing, the
torrent role's LAN fetches and the reports all ask here)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, text

from .schema import bad_peers

# A usable source, over `holdings h JOIN peers p ON p.id = h.peer_id`: a peer still known
# (silent ones are deleted with their holdings) that holds at least one chunk of the
# content, and is not marked bad for it.
USABLE = (
    "h.chunks_held > 0 AND NOT EXISTS (SELECT 1 FROM bad_peers b WHERE b.file_id = h.file_id"
    " AND b.address = p.address AND b.tcp_port = p.tcp_port)"
)


@dataclass(frozen=True)
class Source:
    address: str
    tcp_port: int
    username: str
    bitfield: bytes | None  # from the catalog; refreshed over TCP by the job
    fingerprint: str | None = None
    tls: bool = False


_SOURCES = text(
    "SELECT h.file_id, p.address, p.tcp_port, p.username, h.bitfield, p.fingerprint, p.tls"
    " FROM holdings h JOIN peers p ON p.id = h.peer_id JOIN files f ON f.id = h.file_id"
    f" WHERE h.file_id IN (SELECT value FROM json_each(:ids)) AND {USABLE}"
    " AND (NOT :whole OR h.chunks_held >= f.chunk_count) ORDER BY h.id"
)


def sources_of(
    conn: Connection, file_ids: Sequence[int], *, whole: bool = False
) -> dict[int, list[Source]]:
    """Per content, its usable sources, one per peer address and port (of a peer offering
    it under two names, the fuller holding); with `whole`, only those holding all of it."""
    out: dict[int, dict[tuple[str, int], Source]] = {fid: {} for fid in file_ids}
    rows = conn.execute(_SOURCES, {"ids": json.dumps(sorted(set(file_ids))), "whole": whole})
    for fid, address, port, username, held, fingerprint, tls in rows:
        bits = None if whole else held  # a whole holding is every chunk
        found = out[fid]
        prev = found.get((address, port))
        if prev is not None and (prev.bitfield is None or bits is not None):
            continue  # keep the fuller holding of the two names
        found[(address, port)] = Source(address, port, username, bits, fingerprint, bool(tls))
    return {fid: list(found.values()) for fid, found in out.items()}


def mark_bad(conn: Connection, marks: Sequence[tuple[int, str, int]], *, now: float) -> None:
    """Mark each (file id, address, port) bad for that file: it sent a chunk or a manifest
    that fails verification. A peer marked again counts one more bad chunk."""
    if not marks:
        return
    conn.execute(
        text(
            "INSERT INTO bad_peers (address, tcp_port, file_id, bad_chunks, marked_at)"
            " VALUES (:address, :port, :fid, 1, :now)"
            " ON CONFLICT (address, tcp_port, file_id) DO UPDATE SET"
            " bad_chunks = bad_chunks + 1, marked_at = excluded.marked_at"
        ),
        [{"fid": fid, "address": a, "port": p, "now": now} for fid, a, p in marks],
    )


def expire_bad_peers(conn: Connection, cutoff: float) -> int:
    """Forgive peers marked bad before cutoff (a file's bad sender may have been fixed or
    replaced by then); returns how many marks went."""
    result = conn.execute(delete(bad_peers).where(bad_peers.c.marked_at < cutoff))
    return int(result.rowcount)

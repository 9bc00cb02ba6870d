"""Manifests fetched when a download needs them: which contents lack their
chunk hashes, who offers them, and the chunk hashes recorded once a manifest proved its
root. A catalog entry brings a content's key and size only; for a one-chunk file that is
its whole manifest (its only entry is the file's SHA-256)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

from .local_index import INSERT_CHUNKS as _INSERT_CHUNKS
from .sources import USABLE, mark_bad
from .status import Status
from .values import ContentKey


@dataclass(frozen=True)
class Unhashed:
    """A content this database knows without its chunk hashes."""

    file_id: int
    key: ContentKey
    size: int
    chunks: int


@dataclass(frozen=True)
class Holder:
    """A live peer offering a content, as the downloader reaches it."""

    address: str
    tcp_port: int
    fingerprint: str | None
    tls: bool
    username: str = ""
    peer_id: int = 0  # whose budget its manifests count against


_UNHASHED = text(
    "SELECT f.id, f.sha256, f.chunk_size, f.root, f.size, f.chunk_count FROM files f"
    " WHERE f.id IN (SELECT value FROM json_each(:ids)) AND f.chunk_count > 0 AND NOT EXISTS"
    " (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0) ORDER BY f.id"
)
_HOLDERS = text(
    "SELECT DISTINCT h.file_id, p.address, p.tcp_port, p.fingerprint, p.tls, p.username, p.id"
    " FROM holdings h JOIN peers p ON p.id = h.peer_id"
    f" WHERE h.file_id IN (SELECT value FROM json_each(:ids)) AND {USABLE}"
    " ORDER BY p.last_seen DESC"
)


def unhashed(conn: Connection, file_ids: Sequence[int]) -> list[Unhashed]:
    """Of these contents, those with chunks but no chunk hashes here."""
    rows = conn.execute(_UNHASHED, {"ids": json.dumps(sorted(set(file_ids)))})
    return [Unhashed(fid, (sha, cs, root), size, count) for fid, sha, cs, root, size, count in rows]


def holders(conn: Connection, file_ids: Sequence[int]) -> dict[int, list[Holder]]:
    """Per content, its usable sources (db.sources), as the downloader reaches them."""
    out: dict[int, list[Holder]] = {fid: [] for fid in file_ids}
    rows = conn.execute(_HOLDERS, {"ids": json.dumps(sorted(set(file_ids)))})
    for fid, address, port, fingerprint, tls, username, peer_id in rows:
        out[fid].append(Holder(address, port, fingerprint, bool(tls), username, peer_id))
    return out


def one_chunk_entries(content: Unhashed) -> list[str] | None:
    """The manifest of a one-chunk file, from its key alone; None if the key cannot be
    one (its root is not the hash of its SHA-256)."""
    sha, _, root = content.key
    if content.chunks != 1 or hashlib.sha256(bytes.fromhex(sha)).hexdigest() != root:
        return None
    return [sha]


def mark_liars(conn: Connection, liars: Sequence[tuple[int, str, int]], *, now: float) -> None:
    """Mark each (file id, address, port) bad for that file: it sent a manifest that does
    not hash to the root it offered (inside a write transaction)."""
    mark_bad(conn, liars, now=now)


_NOTE = text(
    "UPDATE downloads SET reason = :reason WHERE file_id IN (SELECT value FROM json_each(:ids))"
    " AND status = :queued AND reason IS NOT :reason"
)


def note_waiting(conn: Connection, file_ids: Sequence[int], reason: str) -> None:
    """Say why queued downloads of these contents have not started: their manifest did not
    come (inside a write transaction); `history` and `p2pctl download` show it."""
    ids = json.dumps(sorted(set(file_ids)))
    conn.execute(_NOTE, {"reason": reason, "ids": ids, "queued": Status.QUEUED})


def manifest_rows(
    manifests: Mapping[Unhashed, Sequence[str]],
) -> Iterator[tuple[Unhashed, int, str]]:
    """The chunk rows of these manifests, as (content, index, entry), each content's first
    row after its others: a content counts as hashed once its first row is in (`unhashed`,
    the catalog's `known_contents`), so a manifest written in several transactions is
    never taken for whole before its last one."""
    for content, entries in manifests.items():
        for i in range(1, len(entries)):
            yield content, i, entries[i]
        if entries:
            yield content, 0, entries[0]


def record_manifest_rows(conn: Connection, rows: Sequence[tuple[Unhashed, int, str]]) -> None:
    """Record chunk hashes of manifests that proved their roots (inside a write
    transaction); a content hashed meanwhile keeps what it has."""
    chunk_rows = [(c.file_id, i, min(c.key[1], c.size - i * c.key[1]), e) for c, i, e in rows]
    if chunk_rows:
        conn.execute(_INSERT_CHUNKS, {"rows": json.dumps(chunk_rows)})


def note_unreachable(conn: Connection, reasons: dict[int, str]) -> None:
    """Say on the queued downloads of these contents why they have not started: no peer
    offering them answered for the manifest (inside a write transaction)."""
    for fid, why in reasons.items():
        note_waiting(conn, [fid], why)


_QUEUED_FOR = text(
    "SELECT id FROM downloads WHERE file_id IN (SELECT value FROM json_each(:ids))"
    " AND status = :queued ORDER BY id"
)


def queued_for(conn: Connection, file_ids: Sequence[int]) -> list[int]:
    """The queued downloads of these contents."""
    ids = json.dumps(sorted(set(file_ids)))
    return list(conn.scalars(_QUEUED_FOR, {"ids": ids, "queued": Status.QUEUED}))

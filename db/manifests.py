"""Manifests fetched when a download needs them (issue 34): which contents lack their
chunk hashes, who offers them, and the chunk hashes recorded once a manifest proved its
root. A catalog entry brings a content's key and size only; for a one-chunk file that is
its whole manifest (its only entry is the file's SHA-256)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from p2pshare.db.inlists import in_slices, marks
from p2pshare.db.values import ContentKey


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


def unhashed(conn: sqlite3.Connection, file_ids: Sequence[int]) -> list[Unhashed]:
    """Of these contents, those with chunks but no chunk hashes here."""
    out: list[Unhashed] = []
    for part in in_slices(sorted(set(file_ids))):
        out.extend(
            Unhashed(fid, (sha, cs, root), size, count)
            for fid, sha, cs, root, size, count in conn.execute(
                "SELECT f.id, f.sha256, f.chunk_size, f.root, f.size, f.chunk_count FROM files f"
                f" WHERE f.id IN ({marks(part)}) AND f.chunk_count > 0 AND NOT EXISTS"
                " (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0)",
                part,
            )
        )
    return out


def holders(conn: sqlite3.Connection, file_ids: Sequence[int]) -> dict[int, list[Holder]]:
    """Per content, the live peers offering any of it, minus those marked bad for it."""
    out: dict[int, list[Holder]] = {fid: [] for fid in file_ids}
    for part in in_slices(sorted(set(file_ids))):
        for fid, address, port, fingerprint, tls, username, peer_id in conn.execute(
            "SELECT DISTINCT h.file_id, p.address, p.tcp_port, p.fingerprint, p.tls, p.username,"
            " p.id"
            " FROM holdings h JOIN peers p ON p.id = h.peer_id"
            f" WHERE h.file_id IN ({marks(part)}) AND NOT EXISTS (SELECT 1 FROM bad_peers b"
            " WHERE b.file_id = h.file_id AND b.address = p.address AND b.tcp_port = p.tcp_port)"
            " ORDER BY p.last_seen DESC",
            part,
        ):
            out[fid].append(Holder(address, port, fingerprint, bool(tls), username, peer_id))
    return out


def one_chunk_entries(content: Unhashed) -> list[str] | None:
    """The manifest of a one-chunk file, from its key alone; None if the key cannot be
    one (its root is not the hash of its SHA-256)."""
    sha, _, root = content.key
    if content.chunks != 1 or hashlib.sha256(bytes.fromhex(sha)).hexdigest() != root:
        return None
    return [sha]


def mark_liars(
    conn: sqlite3.Connection, liars: Sequence[tuple[int, str, int]], *, now: float
) -> None:
    """Mark each (file id, address, port) bad for that file: it sent a manifest that does
    not hash to the root it offered (inside a write transaction)."""
    conn.executemany(
        "INSERT INTO bad_peers (address, tcp_port, file_id, bad_chunks, marked_at)"
        " VALUES (?, ?, ?, 1, ?) ON CONFLICT (address, tcp_port, file_id) DO UPDATE SET"
        " bad_chunks = bad_chunks + 1, marked_at = excluded.marked_at",
        [(address, port, fid, now) for fid, address, port in liars],
    )


def note_waiting(conn: sqlite3.Connection, file_ids: Sequence[int], reason: str) -> None:
    """Say why queued downloads of these contents have not started: their manifest did not
    come (inside a write transaction); `history` and `p2pctl download` show it."""
    for part in in_slices(sorted(set(file_ids))):
        conn.execute(
            f"UPDATE downloads SET reason = ? WHERE file_id IN ({marks(part)})"
            " AND status = 'queued' AND reason IS NOT ?",
            [reason, *part, reason],
        )


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


def record_manifest_rows(
    conn: sqlite3.Connection, rows: Sequence[tuple[Unhashed, int, str]]
) -> None:
    """Record chunk hashes of manifests that proved their roots (inside a write
    transaction); a content hashed meanwhile keeps what it has."""
    conn.executemany(
        "INSERT OR IGNORE INTO chunks (file_id, chunk_index, size, sha256) VALUES (?, ?, ?, ?)",
        ((c.file_id, i, min(c.key[1], c.size - i * c.key[1]), e) for c, i, e in rows),
    )


def note_unreachable(conn: sqlite3.Connection, reasons: dict[int, str]) -> None:
    """Say on the queued downloads of these contents why they have not started: no peer
    offering them answered for the manifest (inside a write transaction)."""
    conn.executemany(
        "UPDATE downloads SET reason = ? WHERE file_id = ? AND status = 'queued'"
        " AND reason IS NOT ?",
        ((why, fid, why) for fid, why in reasons.items()),
    )


def queued_for(conn: sqlite3.Connection, file_ids: Sequence[int]) -> list[int]:
    """The queued downloads of these contents."""
    out: list[int] = []
    for part in in_slices(sorted(set(file_ids))):
        out.extend(
            row[0]
            for row in conn.execute(
                f"SELECT id FROM downloads WHERE file_id IN ({marks(part)}) AND status = 'queued'",
                part,
            )
        )
    return out

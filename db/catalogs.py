"""Queries behind peers' catalogs: a page of a peer's catalog applied to its holdings (the
listener's way), a whole catalog with its manifests at once (how the benchmark and tests
seed a database), and the sweep of contents nothing refers to any more."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from p2pshare.db.budgets import within_catalog_budget
from p2pshare.db.engine import driver_connection
from p2pshare.db.index import ContentKey, HashedFile, orphan_file
from p2pshare.db.inlists import in_slices, marks
from p2pshare.db.models import File, Peer
from p2pshare.services.settings import DEFAULT_PEER_CATALOG_ENTRIES


class Offered(NamedTuple):
    """One entry of a peer's catalog, after validation (a tuple: a page holds thousands)."""

    name: str
    sha256: str
    chunk_size: int
    root: str
    size: int
    have: bytes | None  # None: every chunk
    chunks_held: int

    @property
    def key(self) -> ContentKey:
        return (self.sha256, self.chunk_size, self.root)


@dataclass(frozen=True)
class KnownContent:
    file_id: int
    size: int
    complete: bool  # chunk hashes are here (or the file is empty)


# KiB of page cache for the connection applying catalog pages.
APPLY_CACHE_KIB = 24 * 1024


@dataclass(frozen=True)
class Page:
    """Part of a peer's catalog, after validation: the changes after version `start` up
    to `end` of its log `epoch` (None: a protocol 2.0 peer, whose whole catalog is one
    page). `reset`: the catalog from the start, so what was held of the peer goes first."""

    epoch: str | None
    start: int
    end: int
    reset: bool
    offered: list[Offered]
    gone: list[tuple[str, str]]  # (name, sha256)


class Applied(NamedTuple):
    """What applying a page did: entries recorded, and holdings it removed (a reset's
    old ones, entries gone), which may leave contents nobody offers."""

    kept: int
    dropped: int


class NotContinuous(Exception):
    """A page that does not follow what this database holds of the peer's catalog."""


def apply_page(
    session: Session,
    peer_id: int,
    node_id: str,
    page: Page,
    *,
    now: float,
    entry_budget: int = DEFAULT_PEER_CATALOG_ENTRIES,
) -> Applied | None:
    """Apply a page of a peer's catalog to its holdings. Returns what it did, None if
    the peer is gone (or `peer_id` now belongs to another node). Raises
    NotContinuous when the page does not start where the peer's holdings stand.

    Contents new here get a `files` row without chunk hashes: the downloader fetches a
    manifest when a download needs it. An entry whose size contradicts what is known of
    its content is left out (a lie, or a collision; never let it overwrite what we know),
    and so are entries past the peer's `entry_budget` (P2P_PEER_CATALOG_ENTRIES).
    """
    conn = driver_connection(session)
    row = conn.execute(
        "SELECT node_id, catalog_epoch, catalog_synced FROM peers WHERE id = ?", (peer_id,)
    ).fetchone()
    if row is None or row[0] != node_id:
        return None
    dropped = 0
    if page.reset and page.start == 0:
        dropped = conn.execute("DELETE FROM holdings WHERE peer_id = ?", (peer_id,)).rowcount
    elif (page.epoch, page.start) != (row[1], row[2]):
        raise NotContinuous(f"page from v{page.start} of {page.epoch}; held: v{row[2]} of {row[1]}")
    offered = within_catalog_budget(
        conn, peer_id, page.offered, reset=page.reset and page.start == 0,
        limit=entry_budget, now=now,
    )  # fmt: skip
    kept = _record_offers(conn, peer_id, offered, now=now) if offered else 0
    if page.gone:
        dropped += conn.executemany(
            "DELETE FROM holdings WHERE peer_id = ? AND name = ?"
            " AND file_id IN (SELECT id FROM files WHERE sha256 = ?)",
            [(peer_id, name, sha) for name, sha in page.gone],
        ).rowcount
    conn.execute(
        "UPDATE peers SET catalog_synced = ?, catalog_epoch = ? WHERE id = ?",
        (page.end, page.epoch, peer_id),
    )
    _expire_peer(session, peer_id)
    return Applied(kept, dropped)


def _record_offers(
    conn: sqlite3.Connection, peer_id: int, offered: Sequence[Offered], *, now: float
) -> int:
    """Record a page's entries as the peer's holdings, adding a `files` row (without
    chunk hashes) for each content not known here; returns the entries kept. The page
    goes into a temporary table in one statement, and from there into `files` and
    `holdings` in one statement each: SQLite matches entries to contents itself, rather
    than Python row by row."""
    # A page's rows land all over the index of files by SHA-256: a larger page cache than
    # SQLite's 2 MB default keeps the b-tree pages they touch (this connection is the
    # listener's).
    conn.execute(f"PRAGMA cache_size=-{APPLY_CACHE_KIB}")
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS page_offers (name TEXT, sha256 TEXT,"
        " chunk_size INTEGER, root TEXT, size INTEGER, bitfield BLOB, chunks_held INTEGER)"
    )
    conn.executemany("INSERT INTO temp.page_offers VALUES (?, ?, ?, ?, ?, ?, ?)", offered)
    try:
        conn.execute(
            "INSERT OR IGNORE INTO files (sha256, size, chunk_size, root, chunk_count, first_seen)"
            " SELECT sha256, size, chunk_size, root, (size + chunk_size - 1) / chunk_size, ?"
            " FROM temp.page_offers",
            (now,),
        )
        # Joined on size too: an entry whose size contradicts its content's is left out.
        return conn.execute(
            "INSERT INTO holdings (peer_id, file_id, name, chunks_held, bitfield)"
            " SELECT ?, f.id, o.name, o.chunks_held, o.bitfield FROM temp.page_offers o"
            " JOIN files f ON f.sha256 = o.sha256 AND f.chunk_size = o.chunk_size"
            " AND f.root = o.root AND f.size = o.size WHERE true"
            " ON CONFLICT (peer_id, file_id, name) DO UPDATE SET"
            " chunks_held = excluded.chunks_held, bitfield = excluded.bitfield",
            (peer_id,),
        ).rowcount
    finally:
        conn.execute("DELETE FROM temp.page_offers")


def _expire_peer(session: Session, peer_id: int) -> None:
    """A Peer this session still holds is older than what was written through the driver."""
    cached = session.identity_map.get(session.identity_key(Peer, peer_id))
    if cached is not None:
        session.expire(cached)


def known_contents(session: Session, keys: Iterable[ContentKey]) -> dict[ContentKey, KnownContent]:
    """What this database already knows of each (sha256, chunk_size, root)."""
    return known_contents_in(driver_connection(session), keys)


def known_contents_in(
    conn: sqlite3.Connection, keys: Iterable[ContentKey]
) -> dict[ContentKey, KnownContent]:
    """known_contents on a plain connection (the listener's fetch threads keep one each:
    a SQLAlchemy session and transaction per catalog cost more than the query)."""
    # Plain sqlite3: every catalog fetched runs this twice, and building the statements
    # through SQLAlchemy cost ten times what SQLite spends answering them.
    keys = set(keys)
    shas = sorted({sha for sha, _, _ in keys})
    out: dict[ContentKey, KnownContent] = {}
    for part in in_slices(shas):
        rows = conn.execute(
            "SELECT f.sha256, f.chunk_size, f.root, f.id, f.size, f.chunk_count,"
            " EXISTS (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0)"
            f" FROM files f WHERE f.sha256 IN ({marks(part)})",
            part,
        )
        for sha, cs, root, fid, size, count, hashed in rows:
            if (sha, cs, root) in keys:
                out[(sha, cs, root)] = KnownContent(fid, size, count == 0 or bool(hashed))
    return out


def apply_catalog(
    session: Session,
    peer_id: int,
    version: int,
    offered: Sequence[Offered],
    manifests: dict[ContentKey, list[str]],
    *,
    now: float,
    node_id: str | None = None,
) -> int | None:
    """Replace a peer's holdings with its whole catalog and the manifests given, at once.
    Returns entries kept, None if the peer is gone (or, given `node_id`, if `peer_id` now
    belongs to another node). The listener applies catalogs page by page (`apply_page`)
    and leaves manifests to downloads; this is how the benchmark and the tests seed a
    database with peers' catalogs whose manifests are here already.

    Entries whose content is new here but came without a manifest (the caller passes
    only manifests that proved their root), or whose size contradicts what we already
    know of that content, are left out. Written in bulk: a 10,000-file catalog is a few statements.
    """
    conn = driver_connection(session)
    row = conn.execute("SELECT node_id FROM peers WHERE id = ?", (peer_id,)).fetchone()
    if row is None or (node_id is not None and row[0] != node_id):
        return None
    known = known_contents(session, (o.key for o in offered))
    created = _add_contents(session, known, _missing(known, offered, manifests), now=now)
    wanted: dict[tuple[int, str], Offered] = {}
    for entry in offered:
        key = entry.key
        content = known.get(key)
        if content is not None and content.size != entry.size:
            continue  # a lie, or a collision; never let it overwrite what we know
        file_id = created.get(key) if content is None or not content.complete else content.file_id
        if file_id is not None:
            wanted[(file_id, entry.name)] = entry
    _replace_holdings(session, peer_id, wanted)
    conn.execute("UPDATE peers SET catalog_synced = ? WHERE id = ?", (version, peer_id))
    # Plain sqlite3 (an ORM `get` per catalog cost as much as the rest): a Peer this
    # session still holds learns the new value too.
    cached = session.identity_map.get(session.identity_key(Peer, peer_id))
    if cached is not None:
        set_committed_value(cached, "catalog_synced", version)
    return len(wanted)


def _add_contents(
    session: Session,
    known: dict[ContentKey, KnownContent],
    missing: dict[ContentKey, HashedFile],
    *,
    now: float,
) -> dict[ContentKey, int]:
    """Insert the `files` rows (of contents not known) and chunk hashes of `missing`, as
    `known` found them in this transaction; returns their file ids."""
    conn = driver_connection(session)
    ids: dict[ContentKey, int] = {}
    for key, h in missing.items():
        content = known.get(key)
        if content is not None:
            ids[key] = content.file_id
            continue
        cur = conn.execute(
            "INSERT INTO files (sha256, size, chunk_size, root, chunk_count, first_seen)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (h.sha256, h.size, h.chunk_size, h.root, len(h.chunk_hashes), now),
        )
        assert cur.lastrowid is not None
        ids[key] = cur.lastrowid
    conn.executemany(
        "INSERT OR IGNORE INTO chunks (file_id, chunk_index, size, sha256) VALUES (?, ?, ?, ?)",
        (
            (ids[key], i, size, digest)
            for key, h in missing.items()
            for i, (size, digest) in enumerate(zip(h.chunk_sizes, h.chunk_hashes, strict=True))
        ),
    )
    return ids


def _missing(
    known: dict[ContentKey, KnownContent],
    offered: Sequence[Offered],
    manifests: dict[ContentKey, list[str]],
) -> dict[ContentKey, HashedFile]:
    """Contents offered that this database lacks (or lacks the chunk hashes of) and whose
    manifest came and fits the offered size."""
    missing: dict[ContentKey, HashedFile] = {}
    for entry in offered:
        key = entry.key
        content = known.get(key)
        if content is not None and content.complete:
            continue
        hashes = manifests.get(key)
        fits = hashes is not None and len(hashes) == -(-entry.size // entry.chunk_size)
        if fits and hashes is not None and (content is None or content.size == entry.size):
            missing[key] = _hashed(entry, hashes)
    return missing


def delete_orphan_files_after(
    session: Session, after_id: int, limit: int
) -> tuple[int, int | None]:
    """Delete the orphans among the `limit` files rows after id `after_id`, so a large table
    is swept in short transactions. Returns (rows deleted, last id looked at, or None
    once past the last row)."""
    ids = list(
        session.scalars(select(File.id).where(File.id > after_id).order_by(File.id).limit(limit))
    )
    if not ids:
        return 0, None
    result = session.execute(
        delete(File).where(File.id >= ids[0], File.id <= ids[-1], orphan_file())
    )
    return result.rowcount or 0, ids[-1]  # type: ignore[attr-defined]


def _replace_holdings(
    session: Session, peer_id: int, wanted: dict[tuple[int, str], Offered]
) -> None:
    conn = driver_connection(session)
    existing = {
        (file_id, name): (hid, held, bits)
        for hid, file_id, name, held, bits in conn.execute(
            "SELECT id, file_id, name, chunks_held, bitfield FROM holdings WHERE peer_id = ?",
            (peer_id,),
        )
    }
    gone = [row[0] for key, row in existing.items() if key not in wanted]
    for part in in_slices(gone):
        conn.execute(f"DELETE FROM holdings WHERE id IN ({marks(part)})", part)
    new, changed = [], []
    for (file_id, name), entry in wanted.items():
        row = existing.get((file_id, name))
        if row is None:
            new.append((peer_id, file_id, name, entry.chunks_held, entry.have))
        elif (row[1], row[2]) != (entry.chunks_held, entry.have):
            changed.append((entry.chunks_held, entry.have, row[0]))
    conn.executemany(
        "INSERT INTO holdings (peer_id, file_id, name, chunks_held, bitfield)"
        " VALUES (?, ?, ?, ?, ?)",
        new,
    )
    conn.executemany("UPDATE holdings SET chunks_held = ?, bitfield = ? WHERE id = ?", changed)


def _hashed(entry: Offered, hashes: list[str]) -> HashedFile:
    sizes = [min(entry.chunk_size, entry.size - i * entry.chunk_size) for i in range(len(hashes))]
    return HashedFile(entry.size, 0, entry.sha256, entry.chunk_size, hashes, sizes, entry.root)

"""Queries behind peers' catalogs: a page of a peer's catalog applied to its holdings (the
listener's way), a whole catalog with its manifests at once (how the benchmark and tests
seed a database), and the sweep of contents nothing refers to any more."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection, delete, insert, select, text, update

from .budgets import within_catalog_budget
from .index import ContentKey, HashedFile, orphan_file
from .lists import json_fields
from .local_index import ensure_contents
from .schema import files, holdings, peers


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
    conn: Connection,
    peer_id: int,
    node_id: str,
    page: Page,
    *,
    now: float,
    entry_budget: int,
) -> Applied | None:
    """Apply a page of a peer's catalog to its holdings. Returns what it did, None if
    the peer is gone (or `peer_id` now belongs to another node). Raises
    NotContinuous when the page does not start where the peer's holdings stand.

    Contents new here get a `files` row without chunk hashes: the downloader fetches a
    manifest when a download needs it. An entry whose size contradicts what is known of
    its content is left out (a lie, or a collision; never let it overwrite what we know),
    and so are entries past the peer's `entry_budget` (P2P_PEER_CATALOG_ENTRIES).
    """
    p = peers.c
    row = conn.execute(
        select(p.node_id, p.catalog_epoch, p.catalog_synced).where(p.id == peer_id)
    ).first()
    if row is None or row.node_id != node_id:
        return None
    dropped = 0
    if page.reset and page.start == 0:
        gone = conn.execute(delete(holdings).where(holdings.c.peer_id == peer_id))
        dropped = gone.rowcount
    elif (page.epoch, page.start) != (row.catalog_epoch, row.catalog_synced):
        raise NotContinuous(
            f"page from v{page.start} of {page.epoch}; held: v{row.catalog_synced}"
            f" of {row.catalog_epoch}"
        )
    offered = within_catalog_budget(
        conn, peer_id, page.offered, reset=page.reset and page.start == 0,
        limit=entry_budget, now=now,
    )  # fmt: skip
    kept = _record_offers(conn, peer_id, offered, now=now) if offered else 0
    if page.gone:
        dropped += conn.execute(
            text(
                "DELETE FROM holdings WHERE peer_id = :peer AND name = :name"
                " AND file_id IN (SELECT id FROM files WHERE sha256 = :sha)"
            ),
            [{"peer": peer_id, "name": name, "sha": sha} for name, sha in page.gone],
        ).rowcount
    conn.execute(
        update(peers)
        .where(p.id == peer_id)
        .values(catalog_synced=page.end, catalog_epoch=page.epoch)
    )
    return Applied(kept, dropped)


# A page's entries, from one JSON parameter: [[name, sha256, chunk_size, root, size,
# have as hex or null, chunks_held], ...]. One statement whatever the page's size, with
# no per-entry parameters for Python to convert.
_PAGE_INTO_TEMP = text(
    f"INSERT INTO temp.page_offers SELECT {json_fields(5)},"
    " p2p_unhex(json_extract(value, '$[5]')), json_extract(value, '$[6]') FROM json_each(:page)"
)


def _record_offers(
    conn: Connection, peer_id: int, offered: Sequence[Offered], *, now: float
) -> int:
    """Record a page's entries as the peer's holdings, adding a `files` row (without
    chunk hashes) for each content not known here; returns the entries kept. The page
    goes into a temporary table in one statement, and from there into `files` and
    `holdings` in one statement each: SQLite matches entries to contents itself, rather
    than Python row by row."""
    # A page's rows land all over the index of files by SHA-256: a larger page cache than
    # SQLite's 2 MB default keeps the b-tree pages they touch (this connection is the
    # listener's).
    conn.exec_driver_sql(f"PRAGMA cache_size=-{APPLY_CACHE_KIB}")
    conn.execute(
        text(
            "CREATE TEMP TABLE IF NOT EXISTS page_offers (name TEXT, sha256 TEXT,"
            " chunk_size INTEGER, root TEXT, size INTEGER, bitfield BLOB, chunks_held INTEGER)"
        )
    )
    page = json.dumps([(*o[:5], None if o.have is None else o.have.hex(), o[6]) for o in offered])
    conn.execute(_PAGE_INTO_TEMP, {"page": page})
    try:
        conn.execute(
            text(
                "INSERT OR IGNORE INTO files"
                " (sha256, size, chunk_size, root, chunk_count, first_seen)"
                " SELECT sha256, size, chunk_size, root, (size + chunk_size - 1) / chunk_size,"
                " :now FROM temp.page_offers"
            ),
            {"now": now},
        )
        # Joined on size too: an entry whose size contradicts its content's is left out.
        return conn.execute(
            text(
                "INSERT INTO holdings (peer_id, file_id, name, chunks_held, bitfield)"
                " SELECT :peer, f.id, o.name, o.chunks_held, o.bitfield FROM temp.page_offers o"
                " JOIN files f ON f.sha256 = o.sha256 AND f.chunk_size = o.chunk_size"
                " AND f.root = o.root AND f.size = o.size WHERE true"
                " ON CONFLICT (peer_id, file_id, name) DO UPDATE SET"
                " chunks_held = excluded.chunks_held, bitfield = excluded.bitfield"
            ),
            {"peer": peer_id},
        ).rowcount
    finally:
        conn.execute(text("DELETE FROM temp.page_offers"))


def held_of(conn: Connection, peer_id: int, node_id: str) -> tuple[str | None, int]:
    """(epoch, version) of the peer's catalog this database holds: (None, 0) before its
    first catalog (or when `peer_id` is gone or now another node's)."""
    p = peers.c
    row = conn.execute(
        select(p.catalog_epoch, p.catalog_synced).where(p.id == peer_id, p.node_id == node_id)
    ).first()
    if row is None or row.catalog_epoch is None or row.catalog_synced < 0:
        return None, 0
    return row.catalog_epoch, row.catalog_synced


_KNOWN = text(
    "SELECT f.sha256, f.chunk_size, f.root, f.id, f.size, f.chunk_count,"
    " EXISTS (SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.chunk_index = 0)"
    " FROM files f WHERE f.sha256 IN (SELECT value FROM json_each(:shas))"
)


def known_contents(conn: Connection, keys: Iterable[ContentKey]) -> dict[ContentKey, KnownContent]:
    """What this database already knows of each (sha256, chunk_size, root)."""
    keys = set(keys)
    out: dict[ContentKey, KnownContent] = {}
    shas = json.dumps(sorted({sha for sha, _, _ in keys}))
    for sha, cs, root, fid, size, count, hashed in conn.execute(_KNOWN, {"shas": shas}):
        if (sha, cs, root) in keys:
            out[(sha, cs, root)] = KnownContent(fid, size, count == 0 or bool(hashed))
    return out


def apply_catalog(
    conn: Connection,
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
    know of that content, are left out. Written in bulk: a catalog is a few statements.
    """
    owner = conn.scalar(select(peers.c.node_id).where(peers.c.id == peer_id))
    if owner is None or (node_id is not None and owner != node_id):
        return None
    known = known_contents(conn, (o.key for o in offered))
    created = ensure_contents(conn, _missing(known, offered, manifests).values(), now=now)
    wanted: dict[tuple[int, str], Offered] = {}
    for entry in offered:
        key = entry.key
        content = known.get(key)
        if content is not None and content.size != entry.size:
            continue  # a lie, or a collision; never let it overwrite what we know
        file_id = created.get(key) if content is None or not content.complete else content.file_id
        if file_id is not None:
            wanted[(file_id, entry.name)] = entry
    _replace_holdings(conn, peer_id, wanted)
    conn.execute(update(peers).where(peers.c.id == peer_id).values(catalog_synced=version))
    return len(wanted)


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
    conn: Connection, after_id: int, limit: int
) -> tuple[int, int | None]:
    """Delete the orphans among the `limit` files rows after id `after_id`, so a large table
    is swept in short transactions. Returns (rows deleted, last id looked at, or None
    once past the last row)."""
    f = files.c
    ids = list(conn.scalars(select(f.id).where(f.id > after_id).order_by(f.id).limit(limit)))
    if not ids:
        return 0, None
    result = conn.execute(delete(files).where(f.id >= ids[0], f.id <= ids[-1], orphan_file()))
    return result.rowcount, ids[-1]


def _replace_holdings(
    conn: Connection, peer_id: int, wanted: dict[tuple[int, str], Offered]
) -> None:
    h = holdings.c
    existing = {
        (file_id, name): (hid, held, bits)
        for hid, file_id, name, held, bits in conn.execute(
            select(h.id, h.file_id, h.name, h.chunks_held, h.bitfield).where(h.peer_id == peer_id)
        )
    }
    gone = [row[0] for key, row in existing.items() if key not in wanted]
    if gone:
        conn.execute(
            text("DELETE FROM holdings WHERE id IN (SELECT value FROM json_each(:ids))"),
            {"ids": json.dumps(gone)},
        )
    new, changed = [], []
    for (file_id, name), entry in wanted.items():
        row = existing.get((file_id, name))
        values = {"chunks_held": entry.chunks_held, "bitfield": entry.have}
        if row is None:
            new.append({"peer_id": peer_id, "file_id": file_id, "name": name, **values})
        elif (row[1], row[2]) != (entry.chunks_held, entry.have):
            changed.append({"hid": row[0], **values})
    if new:
        conn.execute(insert(holdings), new)
    if changed:
        conn.execute(
            text("UPDATE holdings SET chunks_held = :chunks_held, bitfield = :bitfield"
                 " WHERE id = :hid"),
            changed,
        )  # fmt: skip


def _hashed(entry: Offered, hashes: list[str]) -> HashedFile:
    sizes = [min(entry.chunk_size, entry.size - i * entry.chunk_size) for i in range(len(hashes))]
    return HashedFile(entry.size, 0, entry.sha256, entry.chunk_size, hashes, sizes, entry.root)

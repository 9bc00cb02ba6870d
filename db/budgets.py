"""Budgets per peer (README "Budgets per peer"): what one peer's catalog and manifests may
make this node store, and the record of a peer that reached a budget (`peers.over_budget`).

A peer may lie about everything it offers, and every lie it can make cost this node has
to be bounded by that peer alone, so that a hostile peer uses up its own budget and no
other peer's. The entries of its catalog are kept up to P2P_PEER_CATALOG_ENTRIES; the
chunk rows its manifests make this node store, while no file of this node's own proves
them, up to P2P_PEER_MANIFEST_ROWS (a manifest that would pass it is not even asked for).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import TypeVar

from sqlalchemy import Connection, func, select, text, update

from .schema import holdings, peers

CATALOG_BUDGET = "P2P_PEER_CATALOG_ENTRIES"
MANIFEST_BUDGET = "P2P_PEER_MANIFEST_ROWS"

T = TypeVar("T")


def within_catalog_budget(
    conn: Connection,
    peer_id: int,
    offered: Sequence[T],
    *,
    reset: bool,
    limit: int,
    now: float,
) -> Sequence[T]:
    """The entries of a catalog page to keep: all while the peer's catalog stays within
    `limit` entries, else as many as fit (the rest are not stored, and the peer is
    recorded over budget). Inside the caller's write transaction, before the page's
    holdings are written (after a reset's went).

    `peers.catalog_entries` counts from above (entries written, not minus those a later
    page changes or removes), so the exact count is taken only once that passes `limit`.
    """
    counted = 0
    if not reset:
        found = conn.scalar(select(peers.c.catalog_entries).where(peers.c.id == peer_id))
        counted = int(found or 0)
    if counted + len(offered) > limit:
        counted = int(conn.scalar(select(func.count()).where(holdings.c.peer_id == peer_id)) or 0)
        room = max(0, limit - counted)
        if len(offered) > room:
            offered = offered[:room]
            record_over_budget(conn, peer_id, CATALOG_BUDGET, limit, now=now)
    conn.execute(
        update(peers).where(peers.c.id == peer_id).values(catalog_entries=counted + len(offered))
    )
    return offered


_MANIFEST_ROWS = text(
    "SELECT m.peer_id, sum(m.chunk_rows) FROM manifest_sources m"
    " WHERE m.peer_id IN (SELECT value FROM json_each(:ids)) AND NOT EXISTS"
    " (SELECT 1 FROM local_files l WHERE l.file_id = m.file_id) GROUP BY m.peer_id"
)


def manifest_rows_used(conn: Connection, peer_ids: Collection[int]) -> dict[int, int]:
    """Per peer, the chunk rows its manifests made this node store that no file of this
    node's own proves yet (a finished download or a shared file of that content does)."""
    used = {peer_id: 0 for peer_id in peer_ids}
    for peer_id, rows in conn.execute(_MANIFEST_ROWS, {"ids": json.dumps(sorted(used))}):
        used[peer_id] = int(rows)
    return used


def record_manifest_sources(
    conn: Connection, sources: Sequence[tuple[int, int, int]], *, now: float
) -> None:
    """Charge each (file id, peer id, chunk rows) to that peer: its manifest gave the
    content its chunk hashes (inside a write transaction)."""
    if not sources:
        return
    conn.execute(
        text(
            "INSERT OR IGNORE INTO manifest_sources (file_id, peer_id, chunk_rows, learned_at)"
            " SELECT :fid, :peer, :rows, :now WHERE EXISTS (SELECT 1 FROM peers WHERE id = :peer)"
        ),
        [{"fid": fid, "peer": peer_id, "rows": rows, "now": now} for fid, peer_id, rows in sources],
    )


def record_over_budget(
    conn: Connection, peer_id: int, budget: str, limit: int, *, now: float
) -> bool:
    """Record that the peer reached `budget` (a setting's name) at `now`, beside any other
    budget it reached; returns whether it had not reached this one before (inside a write
    transaction)."""
    row = conn.execute(select(peers.c.over_budget).where(peers.c.id == peer_id)).first()
    if row is None:
        return False
    before = row.over_budget or ""
    others = [p for p in before.split("; ") if p and not p.startswith(f"{budget} ")]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    text_ = "; ".join(sorted([*others, f"{budget} ({limit}) at {stamp}"]))
    conn.execute(update(peers).where(peers.c.id == peer_id).values(over_budget=text_))
    return not before.startswith(f"{budget} ") and f"; {budget} " not in before

"""This node's catalog as a log of changes: what peers fetch, from where they left off.

Every entry this node offers, a (file, name) pair, is one row of `catalog_log` with the
sequence number of its last change; an entry no longer offered stays as a tombstone
(`removed`) so a peer that knew it learns it went. The sequence numbers come from
`node.catalog_version`, which only grows, so "what changed after N" is every row with
`seq > N`, in order, and the newest `seq` is the catalog version peers are told of.
This is Syncthing's index model (BEP: index IDs and sequence numbers), applied to
offers rather than to a folder's files.

The rows are kept by SQLite triggers on `local_files` and `downloads`, the two tables
whose rows are the offers (`db.serving.offers`): every module that writes them (the
indexer, the downloader's jobs and batches, the torrent role, p2pctl's cancels) moves
the log in the same transaction without knowing of it, and none can forget to. One
exception, for speed: rows inserted into `local_files`, which only `db.index` does, get
their entries from it in one statement a batch (`offer_new_local_files`): a trigger a
row would cost a first index more than the rest of its database work.

`node.catalog_epoch` names the log: a peer that held this node's catalog up to N under
another epoch (this database was reset or replaced) fetches it whole again, as does one
whose N lies below `node.catalog_floor`, the newest tombstone compacted away.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, text

from .status import KEEPING_TEMP, sql_in

# Tombstones kept beyond the entries still offered: enough for a peer away a while to
# catch up by changes; past it the oldest go, and a peer further behind fetches whole.
# So the log is bounded by the share (live entries + this), never by its history.
MIN_TOMBSTONES = 10_000
EPOCH_HEX = 16

_OFFERING = sql_in(tuple(sorted(KEEPING_TEMP)))  # the order the triggers were made with


def _refresh(fid: str, name: str) -> str:
    """Trigger statements that bring the entry (fid, name) in step with what the node
    offers of it now: whole (a local file), partial (a download's verified chunks) or
    nothing (a tombstone, if it was ever offered). Moves the version only on a change."""
    whole = f"EXISTS (SELECT 1 FROM local_files WHERE file_id = {fid} AND name = {name})"
    part = (
        f"(SELECT have FROM downloads WHERE file_id = {fid} AND name = {name}"
        f" AND status IN ({_OFFERING}) AND bytes_done > 0 ORDER BY bytes_done DESC LIMIT 1)"
    )
    have = f"(CASE WHEN {whole} THEN NULL ELSE {part} END)"
    gone = f"(NOT {whole} AND {part} IS NULL)"
    entry = f"catalog_log c WHERE c.file_id = {fid} AND c.name = {name}"
    changed = (
        f"(CASE WHEN {gone} THEN EXISTS (SELECT 1 FROM {entry} AND c.removed = 0)"
        f" ELSE NOT EXISTS (SELECT 1 FROM {entry} AND c.removed = 0 AND c.have IS {have}) END)"
    )
    return _write_if(changed, fid, name, have, gone)


def _write_if(changed: str, fid: str, name: str, have: str, gone: str) -> str:
    """Move the version when `changed`, and then write the entry at it. Inside a trigger,
    changes() counts the rows of the trigger's own statement before (SQLite's
    sqlite3_changes), so `changed` is evaluated once."""
    return (
        f"UPDATE node SET catalog_version = catalog_version + 1 WHERE id = 1 AND {changed};\n"
        "INSERT INTO catalog_log (file_id, name, seq, have, removed, gone_sha256)"
        f" SELECT {fid}, {name}, (SELECT catalog_version FROM node WHERE id = 1), {have}, {gone},"
        f" CASE WHEN {gone} THEN (SELECT sha256 FROM files WHERE id = {fid}) END"
        " WHERE changes() > 0"
        " ON CONFLICT (file_id, name) DO UPDATE SET seq = excluded.seq, have = excluded.have,"
        " removed = excluded.removed, gone_sha256 = excluded.gone_sha256;\n"
    )


def offer_new_local_files(conn: Connection, *, after_id: int) -> None:
    """The catalog entries of the local_files rows inserted with ids above `after_id`: each
    offered whole, one change each unless already offered so (the same content under the
    same name in both folders), numbered on from the version (inside the caller's
    write transaction)."""
    _run(
        conn,
        "INSERT INTO catalog_log (file_id, name, seq, have, removed, gone_sha256)"
        " SELECT l.file_id, l.name,"
        " (SELECT catalog_version FROM node WHERE id = 1) + row_number() OVER (ORDER BY l.id),"
        " NULL, 0, NULL FROM local_files l WHERE l.id > :after AND NOT EXISTS (SELECT 1"
        " FROM catalog_log c WHERE c.file_id = l.file_id AND c.name = l.name"
        " AND c.removed = 0 AND c.have IS NULL)"
        " ON CONFLICT (file_id, name) DO UPDATE SET seq = excluded.seq, have = NULL,"
        " removed = 0, gone_sha256 = NULL",
        after=after_id,
    )
    _run(
        conn,
        "UPDATE node SET catalog_version = (SELECT max(seq) FROM catalog_log)"
        " WHERE id = 1 AND catalog_version < (SELECT max(seq) FROM catalog_log)",
    )


def _run(conn: Connection, sql: str, **params: Any) -> Any:
    return conn.execute(text(sql), params)


def _trigger(name: str, event: str, when: str, body: str) -> str:
    return f"CREATE TRIGGER {name} AFTER {event} FOR EACH ROW WHEN {when} BEGIN\n{body}END"


# Partial offers: a download's `have` moves with every progress write; its other columns
# matter only when they change what is offered (name, content, status, first bytes).
_DOWNLOAD_MOVED = (
    "(OLD.have IS NOT NEW.have OR OLD.status IS NOT NEW.status"
    " OR OLD.file_id IS NOT NEW.file_id OR OLD.name IS NOT NEW.name"
    " OR (OLD.bytes_done > 0) IS NOT (NEW.bytes_done > 0))"
)

TRIGGERS = (
    _trigger(
        "catalog_local_delete", "DELETE ON local_files", "1", _refresh("OLD.file_id", "OLD.name")
    ),
    _trigger(
        "catalog_local_update",
        "UPDATE OF file_id, name ON local_files",
        "OLD.file_id IS NOT NEW.file_id OR OLD.name IS NOT NEW.name",
        _refresh("OLD.file_id", "OLD.name") + _refresh("NEW.file_id", "NEW.name"),
    ),
    _trigger(
        "catalog_download_insert",
        "INSERT ON downloads",
        "NEW.file_id IS NOT NULL AND NEW.bytes_done > 0",
        _refresh("NEW.file_id", "NEW.name"),
    ),
    _trigger(
        "catalog_download_delete",
        "DELETE ON downloads",
        "OLD.file_id IS NOT NULL AND OLD.bytes_done > 0",
        _refresh("OLD.file_id", "OLD.name"),
    ),
    _trigger(
        "catalog_download_old",
        "UPDATE OF have, status, bytes_done, file_id, name ON downloads",
        f"OLD.file_id IS NOT NULL AND {_DOWNLOAD_MOVED}",
        _refresh("OLD.file_id", "OLD.name"),
    ),
    _trigger(
        "catalog_download_new",
        "UPDATE OF have, status, bytes_done, file_id, name ON downloads",
        "NEW.file_id IS NOT NULL AND (OLD.file_id IS NOT NEW.file_id OR OLD.name IS NOT NEW.name)",
        _refresh("NEW.file_id", "NEW.name"),
    ),
)


TRIGGER_NAMES = tuple(ddl.split()[2] for ddl in TRIGGERS)


def start(conn: Connection) -> None:
    """The log's triggers and epoch, the log filled with what the node offers now (inside
    the caller's schema transaction, once the table exists: a new database, or an upgrade)."""
    _run(
        conn,
        "INSERT OR IGNORE INTO node (id, catalog_version, catalog_floor, announce_wanted_at,"
        " updated_at) VALUES (1, 0, 0, 0, 0)",
    )
    _run(conn, "UPDATE node SET catalog_epoch = :epoch, catalog_floor = 0 WHERE id = 1",
         epoch=new_epoch())  # fmt: skip
    for ddl in TRIGGERS:
        _run(conn, ddl)
    # What is offered already (an upgraded node): one entry each, numbered from the
    # version peers last heard, so the first announcement after the upgrade moves it.
    _run(
        conn,
        "INSERT OR IGNORE INTO catalog_log (file_id, name, seq, have, removed)"
        " SELECT file_id, name, (SELECT catalog_version FROM node WHERE id = 1)"
        " + row_number() OVER (ORDER BY id), NULL, 0 FROM local_files",
    )
    _run(
        conn,
        "INSERT OR IGNORE INTO catalog_log (file_id, name, seq, have, removed)"
        " SELECT file_id, name, (SELECT catalog_version FROM node WHERE id = 1)"
        " + (SELECT count(*) FROM local_files) + row_number() OVER (ORDER BY id), have, 0"
        f" FROM downloads WHERE file_id IS NOT NULL AND status IN ({_OFFERING})"
        " AND bytes_done > 0",
    )
    _run(
        conn,
        "UPDATE node SET catalog_version = max(catalog_version,"
        " (SELECT coalesce(max(seq), 0) FROM catalog_log)) WHERE id = 1",
    )


def new_epoch() -> str:
    return secrets.token_hex(EPOCH_HEX // 2)


@dataclass(frozen=True)
class LogState:
    """Where this node's log stands: its identity, its newest change, and the oldest
    point a peer may catch up from by changes."""

    epoch: str
    version: int
    floor: int


def state(conn: Connection) -> LogState:
    row = _run(
        conn, "SELECT catalog_epoch, catalog_version, catalog_floor FROM node WHERE id = 1"
    ).first()
    if row is None or row[0] is None:
        return LogState("", 0, 0)
    return LogState(row[0], row[1], row[2])


class LogRow(NamedTuple):
    """One change of the log (a tuple: a page is thousands)."""

    seq: int
    name: str
    sha256: str
    size: int
    chunk_size: int
    root: str
    have: bytes | None
    removed: bool


def rows_after(conn: Connection, after: int, limit: int, *, removed: bool = True) -> list[LogRow]:
    """The next `limit` changes after sequence number `after`, oldest first (tombstones
    left out with removed=False: a peer fetching whole has nothing to remove)."""
    return [
        LogRow(seq, name, sha, size or 0, cs or 0, root or "", have, bool(gone))
        for seq, gone, name, sha, size, cs, root, have in page_rows(
            conn, after, limit, removed=removed
        )
    ]


PageRow = tuple[int, int, str, str, int | None, int | None, str | None, bytes | None]


def page_rows(conn: Connection, after: int, limit: int, *, removed: bool = True) -> list[PageRow]:
    """rows_after as SQLite gives them, for the server's pages (thousands a page: no
    object each): (seq, removed, name, sha256, size, chunk_size, root, have); a
    tombstone's size, chunk size and root are NULL once its content is forgotten."""
    where = "" if removed else " AND c.removed = 0"
    rows = _run(
        conn,
        "SELECT c.seq, c.removed, c.name, coalesce(c.gone_sha256, f.sha256), f.size,"
        " f.chunk_size, f.root, c.have FROM catalog_log c LEFT JOIN files f ON f.id = c.file_id"
        f" WHERE c.seq > :after{where} ORDER BY c.seq LIMIT :limit",
        after=after,
        limit=limit,
    )
    return [tuple(row) for row in rows]


def compact(conn: Connection) -> int:
    """Drop the oldest tombstones beyond max(MIN_TOMBSTONES, entries offered), raising
    the floor past them; returns how many went. Call inside a write transaction."""
    # Through the tombstones' partial index: the whole log is counted only when they
    # are many (the housekeeping calls this every few seconds).
    dead = int(_run(conn, "SELECT count(*) FROM catalog_log WHERE removed = 1").scalar_one())
    if dead <= MIN_TOMBSTONES:
        return 0
    live = int(_run(conn, "SELECT count(*) FROM catalog_log").scalar_one()) - dead
    excess = dead - max(MIN_TOMBSTONES, live)
    if excess <= 0:
        return 0
    floor = _run(
        conn,
        "SELECT seq FROM catalog_log WHERE removed = 1 ORDER BY seq LIMIT 1 OFFSET :skip",
        skip=excess - 1,
    ).scalar_one()
    _run(conn, "DELETE FROM catalog_log WHERE removed = 1 AND seq <= :floor", floor=floor)
    _run(conn, "UPDATE node SET catalog_floor = max(catalog_floor, :floor) WHERE id = 1",
         floor=floor)  # fmt: skip
    return excess

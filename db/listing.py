"""The large listings, `p2pctl files` and `p2pctl peers` and the web page's tables: one
SQL statement each, grouped, counted, sorted and paged by SQLite, so a page costs what it
shows and no offer becomes a Python object unless it is printed. The query plans are
checked by bench/cli_timing.py (every table is read through an index).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection, TextClause, text

from p2pshare.db.names import like_prefilter, matches, name_ranges

__all__ = [
    "FileRow",
    "PeerRow",
    "count_files",
    "count_peers",
    "files_page",
    "iter_files",
    "iter_peers",
    "link_state",
    "matches",
    "name_versions",
]


@dataclass(frozen=True)
class PeerRow:
    username: str
    address: str
    tcp_port: int
    files: int
    last_seen: float
    bad_files: int
    node_id: str
    fingerprint: str | None  # SHA-256 of its certificate, its identity across restarts
    tls: bool  # it takes TLS connections only
    # tls, clear, or why this node and it cannot talk (one encrypts, the other not)
    link: str
    catalog_version: int  # as it announced it
    catalog_synced: int  # the version this node holds (-1: not fetched yet)
    # Which of its budgets per peer it reached and when (peers.over_budget); None: none.
    over_budget: str | None = None

    @property
    def catalog_behind(self) -> int | None:
        """Changes of its catalog this node has yet to take in; None before the first fetch."""
        return (
            None if self.catalog_synced < 0 else max(0, self.catalog_version - self.catalog_synced)
        )


@dataclass(frozen=True)
class FileRow:
    name: str
    size: int
    chunks: int
    sha256: str
    here: bool
    peers: int
    complete_peers: int


# One row per (name, SHA-256): offers of one content under several manifest roots (a
# liar's among them) are one row, and a name shared here and offered by peers too is
# one row. SQLite reads the offers in name order off ix_holdings_name, as ranges
# (names.name_ranges: where a pattern's names can be; every name without one), grouped
# per (name, file_id) as they come, so nothing is sorted and the first rows come at
# once; count(*) is the peers of a (name, file) since a peer offers it under a name once
# (UNIQUE peer_id, file_id, name). `_merged` joins what is shared here and folds the
# roots of one content, a name at a time.
_HELD = """
WITH r(low, high) AS (VALUES {ranges})
SELECT h.name, f.sha256, f.size, f.chunk_count, f.id, count(*), sum(h.bitfield IS NULL)
FROM {holdings} JOIN files f ON f.id = h.file_id
WHERE h.name >= {low} AND h.name < {high} AND {held}
GROUP BY h.name, h.file_id ORDER BY h.name, h.file_id"""
_HERE = """
SELECT l.name, f.sha256, f.size, f.chunk_count, f.id, 0, 0
FROM local_files l JOIN files f ON f.id = l.file_id WHERE {here} ORDER BY l.name"""
# The (name, SHA-256) pairs offered, and those shared here that no peer offers.
_COUNT = """
WITH r(low, high) AS (VALUES {ranges})
SELECT (SELECT count(*) FROM (
          SELECT DISTINCT h.name, f.sha256 FROM {holdings} JOIN files f ON f.id = h.file_id
          WHERE h.name >= {low} AND h.name < {high} AND {held}))
     + (SELECT count(*) FROM (
          SELECT DISTINCT l.name, f.sha256 FROM local_files l JOIN files f ON f.id = l.file_id
          WHERE {here} AND NOT EXISTS (
            SELECT 1 FROM holdings o JOIN files g ON g.id = o.file_id
            WHERE o.name = l.name AND g.sha256 = f.sha256)))"""


def _matching(column: str) -> str:
    # names.like_prefilter: a test in C that every name the pattern matches passes (a
    # name with a character outside printable ASCII always does), so p2p_matches runs
    # in Python only on the few that may match.
    prefilter = f"(:like IS NULL OR {column} LIKE :like ESCAPE '\\' OR {column} GLOB '*[^ -~]*')"
    return f"(:pattern IS NULL OR ({prefilter} AND p2p_matches({column}, :pattern)))"


@functools.lru_cache(maxsize=64)
def _files_sql(template: str, ranges: int) -> TextClause:
    # One range (every name, or one prefix in one case) is read in index order, with no
    # sort; several are read one after another, and their (few) rows sorted.
    one = ranges == 1
    sql = template.format(
        ranges=", ".join(f"(:low{i}, :high{i})" for i in range(ranges)),
        holdings="holdings h" if one else "r CROSS JOIN holdings h",
        low=":low0" if one else "r.low",
        high=":high0" if one else "r.high",
        held=_matching("h.name"),
        here=_matching("l.name"),
    )
    return text(sql)


class Query(NamedTuple):
    sql: TextClause
    params: dict[str, object]


def files_queries(pattern: str | None) -> dict[str, Query]:
    """The statements of the files listing: "held" (the offers), "here" (shared here)
    and "count" (how many rows the listing has)."""
    ranges = name_ranges(pattern)
    # Paging is done on the merged rows (iter_files), so no LIMIT or OFFSET here.
    params: dict[str, object] = {"pattern": pattern or None, "like": like_prefilter(pattern)}
    for i, (low, high) in enumerate(ranges):
        params[f"low{i}"], params[f"high{i}"] = low, high
    return {
        kind: Query(_files_sql(template, len(ranges)), params)
        for kind, template in (("held", _HELD), ("here", _HERE), ("count", _COUNT))
    }


_Offer = tuple[str, str, int, int, int, int, int]  # name, sha256, size, chunks, id, peers, whole


def _merged(held: Iterable[_Offer], here: Iterable[_Offer]) -> Iterator[FileRow]:
    """Offers and local files, both by name, as rows by name then SHA-256; a content's
    size and chunks are those of its lowest file id."""
    tagged = heapq.merge(
        ((o, False) for o in held), ((o, True) for o in here), key=lambda t: t[0][0]
    )
    for name, group in itertools.groupby(tagged, key=lambda t: t[0][0]):
        rows: dict[str, list[int]] = {}  # sha256 -> [lowest id, size, chunks, here, peers, whole]
        for (_, sha, size, chunks, fid, peers, whole), local in group:
            row = rows.get(sha)
            if row is None:
                rows[sha] = [fid, size, chunks, int(local), peers, whole or 0]
                continue
            if fid < row[0]:
                row[:3] = [fid, size, chunks]
            row[3] |= local
            row[4] += peers
            row[5] += whole or 0
        for sha in sorted(rows):
            _, size, chunks, is_here, peers, whole = rows[sha]
            yield FileRow(name, size, chunks, sha, bool(is_here), peers, whole)


# Most recently heard first (ix_peers_last_seen, whose entries end in the rowid: no
# sort); the files and bad marks of only the rows on the page, each an index range.
PEERS_SQL = text("""
SELECT p.username, p.address, p.tcp_port,
       (SELECT count(DISTINCT h.file_id) FROM holdings h WHERE h.peer_id = p.id),
       p.last_seen,
       (SELECT count(*) FROM bad_peers b WHERE b.address = p.address AND b.tcp_port = p.tcp_port),
       p.node_id, p.fingerprint, p.tls, p.catalog_version, p.catalog_synced, p.over_budget
FROM peers p ORDER BY p.last_seen DESC, p.id DESC LIMIT :limit OFFSET :offset""")
COUNT_PEERS_SQL = text("SELECT count(*) FROM peers")
OWN_ENCRYPT_SQL = text(
    "SELECT value FROM role_settings WHERE role = 'listener' AND name = 'encrypt'"
)


def page_params(pattern: str | None, limit: int | None, offset: int) -> dict[str, object]:
    # LIMIT -1 is SQLite's "no limit".
    return {
        "pattern": pattern or None,
        "like": like_prefilter(pattern),
        "limit": -1 if limit is None else limit,
        "offset": offset,
    }


def iter_files(
    conn: Connection,
    pattern: str | None = None,
    *,
    limit: int | None = None,
    offset: int = 0,
) -> Iterator[FileRow]:
    """Files shared here and known on the network, one row per (name, SHA-256), by name
    then SHA-256; PATTERN as `matches` reads it; rows made as they are consumed."""
    queries = files_queries(pattern)
    held, here = (conn.execute(*queries[kind]) for kind in ("held", "here"))
    end = None if limit is None else offset + limit
    yield from itertools.islice(_merged(held, here), offset, end)


def files_page(
    conn: Connection, pattern: str | None, *, limit: int, offset: int = 0
) -> tuple[list[FileRow], int]:
    """One page of `iter_files` and how many rows there are in all."""
    return list(iter_files(conn, pattern, limit=limit, offset=offset)), count_files(conn, pattern)


def count_files(conn: Connection, pattern: str | None = None) -> int:
    """How many rows `iter_files` gives without a limit."""
    return int(conn.execute(*files_queries(pattern)["count"]).scalar_one())


_NAMED = "name IN (SELECT value FROM json_each(:names))"
_NAME_VERSIONS = text(
    "SELECT k.name, count(DISTINCT f.sha256) FROM ("
    f"SELECT name, file_id FROM holdings WHERE {_NAMED} UNION "
    f"SELECT name, file_id FROM local_files WHERE {_NAMED}"
    ") k JOIN files f ON f.id = k.file_id GROUP BY k.name"
)


def name_versions(conn: Connection, names: list[str]) -> dict[str, int]:
    """For each name, how many different contents (SHA-256s) it is listed with."""
    rows = conn.execute(_NAME_VERSIONS, {"names": json.dumps(sorted(set(names)))})
    return {name: int(n) for name, n in rows}


def iter_peers(conn: Connection, *, limit: int | None = None, offset: int = 0) -> Iterator[PeerRow]:
    """Live peers, most recently heard first, with how many files each offers and for how
    many it is marked bad."""
    found = conn.execute(OWN_ENCRYPT_SQL).fetchone()
    own = None if found is None else found[0] == "yes"
    for user, address, port, files, seen, bad, node_id, fp, tls, cv, synced, over in conn.execute(
        PEERS_SQL, page_params(None, limit, offset)
    ):
        yield PeerRow(
            user,
            address,
            port,
            files,
            seen,
            bad,
            node_id,
            fp,
            bool(tls),
            link_state(own, bool(tls)),
            cv,
            synced,
            over,
        )


def count_peers(conn: Connection) -> int:
    return int(conn.execute(COUNT_PEERS_SQL).scalar_one())


def shared_usernames(conn: Connection) -> dict[str, list[str]]:
    """Names that more than one machine announces (by address): name -> addresses. A
    name is what `history` and the page show a source by, so two machines under one
    name would look like one."""
    rows = conn.execute(
        text(
            "SELECT username, group_concat(address, ', ') FROM"
            " (SELECT DISTINCT username, address FROM peers ORDER BY username, address)"
            " GROUP BY username HAVING count(*) > 1"
        )
    )
    return {name: addresses.split(", ") for name, addresses in rows}


def link_state(own_encrypt: bool | None, peer_tls: bool) -> str:
    """How this node talks to a peer, as `p2pctl peers` says it."""
    if own_encrypt is None or own_encrypt == peer_tls:
        return "tls" if peer_tls else "clear"
    if own_encrypt:
        return "cannot talk: it does not encrypt, this node does"
    return "cannot talk: it encrypts, this node does not"

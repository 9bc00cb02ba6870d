"""The listings in SQL (db/listing.py): the same rows as the Python they replaced, on a
random network with liars' roots, partial holders, local files and names that case
folding treats differently in Python and SQLite; pages that add up to the whole; the
query plans on their indexes; JSON streamed exactly as before; the web page's first page
and totals."""

from __future__ import annotations

import fnmatch
import io
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, TextClause, text

from p2pshare.cli import render
from p2pshare.db import listing, names
from p2pshare.db.engine import Database
from p2pshare.db.listing import FileRow
from p2pshare.services.web import dashboard
from p2pshare.services.web.sampler import RateSampler

NOW = 1_750_000_000.0
# Names where Python's str.lower() and SQLite's lower()/LIKE disagree (non-ASCII case,
# the Kelvin sign that lowers to ASCII 'k'), glob metacharacters, and plain ones.
NAMES = [
    "Énorme.TXT",
    "énorme.txt",
    "straße/Notes.md",
    "\u212aelvin.bin",  # KELVIN SIGN
    "kelvin.bin",
    "album/01 [live].flac",
    "album/02.flac",
    "a*b?.txt",
    "report.pdf",
    "Report.PDF",
    "x/y/z.iso",
    "ÅSA/ö.jpg",
]
PATTERNS = [
    None,
    "",
    "k",
    "KELVIN",
    "énorme",
    "ÉNORME",
    "*.flac",
    "album/0[12]*",
    "album/0[!1]*",
    "*[[]live]*",
    "*.PDF",
    "a*b?",
    "ö",
    "Å",
    "/",
    "zzz",
    # anchored globs: read as ranges of the name index (names.name_ranges)
    "k*",
    "KEL*",
    "album/*",
    "Album/0?.*",
    "x/y/*",
    "report.*",
    "é*",
]


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "p2p.db"
    Database.open(path).close()
    yield path


def seed_network(path: Path, rng: random.Random, peers: int = 40) -> None:
    """Contents under several roots (a liar's), peers offering them whole or in part under
    names from NAMES, some of them here too, and bad marks."""
    conn = sqlite3.connect(path)
    contents = []  # (sha, size, chunk_count)
    fid = 0
    for c in range(15):
        sha = f"{c:064x}"
        size = rng.randrange(1, 10**7)
        for r in range(rng.choice([1, 1, 2, 3])):  # several roots or chunk sizes
            fid += 1
            count = rng.randrange(1, 50)
            conn.execute(
                "INSERT INTO files (id, sha256, size, chunk_size, root, chunk_count, first_seen)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fid, sha, size, 16384 * (r + 1), f"{r:064x}", count, NOW),
            )
            contents.append(fid)
    for p in range(1, peers + 1):
        conn.execute(
            "INSERT INTO peers (id, node_id, username, address, tcp_port, catalog_version,"
            " announce_seq, catalog_synced, fingerprint, tls, first_seen, last_seen)"
            " VALUES (?, ?, ?, '127.0.0.2', ?, 1, 1, 1, NULL, ?, ?, ?)",
            (p, f"{p:032x}", f"peer{p}", 5000 + p, p % 3 == 0, NOW, NOW - rng.choice([1, 2, 3])),
        )
        for name in rng.sample(NAMES, rng.randrange(0, 6)):
            for f in rng.sample(contents, rng.choice([1, 1, 2])):
                conn.execute(
                    "INSERT OR IGNORE INTO holdings (peer_id, file_id, name, chunks_held,"
                    " bitfield) VALUES (?, ?, ?, 1, ?)",
                    (p, f, name, None if rng.random() < 0.6 else b"\x80"),
                )
        if p % 7 == 0:
            conn.execute(
                "INSERT INTO bad_peers (address, tcp_port, file_id, bad_chunks, marked_at)"
                " VALUES ('127.0.0.2', ?, ?, 1, ?)",
                (5000 + p, rng.choice(contents), NOW),
            )
    for root in ("share", "download"):
        for name in rng.sample(NAMES, 4):
            conn.execute(
                "INSERT INTO local_files (root, name, file_id, size, mtime_ns, ctime_ns, inode,"
                " indexed_at) VALUES (?, ?, ?, 1, 1, 1, 1, ?)",
                (root, name, rng.choice(contents), NOW),
            )
    conn.commit()
    conn.close()


def matches(name: str, pattern: str | None) -> bool:
    """The rule as it read before it moved into SQL."""
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()


def reference_files(conn: sqlite3.Connection, pattern: str | None) -> list[FileRow]:
    """db/reports.list_files as it was, in Python over every row."""
    here = set(conn.execute("SELECT name, file_id FROM local_files"))
    network = {
        (name, fid): (n, whole)
        for name, fid, n, whole in conn.execute(
            "SELECT name, file_id, count(DISTINCT peer_id), sum(bitfield IS NULL)"
            " FROM holdings GROUP BY name, file_id"
        )
    }
    keys = {k for k in here | set(network) if matches(k[0], pattern)}
    files = {r[0]: r for r in conn.execute("SELECT id, sha256, size, chunk_count FROM files")}
    merged: dict[tuple[str, str], FileRow] = {}
    for name, fid in sorted(keys):
        _, sha, size, count = files[fid]
        n, whole = network.get((name, fid), (0, 0))
        row = FileRow(name, size, count, sha, (name, fid) in here, n, whole)
        prev = merged.get((name, sha))
        if prev is not None:
            row = FileRow(
                name,
                prev.size,
                prev.chunks,
                sha,
                prev.here or row.here,
                prev.peers + row.peers,
                prev.complete_peers + row.complete_peers,
            )
        merged[(name, sha)] = row
    return [merged[k] for k in sorted(merged)]


@contextmanager
def reading(db_path: Path) -> Iterator[Connection]:
    """A read transaction on the database as the node and p2pctl open it."""
    database = Database.open_existing(db_path)
    try:
        with database.read() as conn:
            yield conn
    finally:
        database.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_files_are_the_rows_the_python_gave(db_path: Path, seed: int) -> None:
    seed_network(db_path, random.Random(seed))
    conn = sqlite3.connect(db_path)
    with reading(db_path) as core:
        for pattern in PATTERNS:
            want = reference_files(conn, pattern)
            got = list(listing.iter_files(core, pattern))
            assert got == want, pattern
            assert listing.count_files(core, pattern) == len(want)
        # The listing is not trivially everything or nothing.
        assert len(reference_files(conn, None)) > 10 and reference_files(conn, "zzz") == []
        assert [r.name for r in listing.iter_files(core, "k")]  # the Kelvin sign folds to 'k'
    conn.close()


# Letters whose case folding or NFC composition crosses between ASCII and the rest.
FOLDING = "aAkKsSeEiIfF/1.\u212a\u017f\u0301\u0307\u00e9\u0130\u00df\ufb00\ufb01"


@given(
    name=st.text(FOLDING, max_size=8),
    start=st.text(FOLDING, max_size=6),
    rest=st.sampled_from(["*", "?*", "[ks]*", "*e", "?"]),
)
@settings(max_examples=3000, deadline=None)
def test_every_matching_name_lies_in_a_range(name: str, start: str, rest: str) -> None:
    pattern = start + rest
    ranges = names.name_ranges(pattern)
    inside = any(
        low <= name and (high == names.END_OF_NAMES or name < high) for low, high in ranges
    )
    assert inside or not names.matches(name, pattern), (name, pattern, ranges)


def test_an_anchored_glob_reads_a_few_ranges() -> None:
    assert names.name_ranges("photos") == [("", names.END_OF_NAMES)]  # a substring
    assert names.name_ranges("*.jpg") == [("", names.END_OF_NAMES)]
    ranges = names.name_ranges("d125/*")
    assert ("d125/", "d1250") in ranges and ("D125/", "D1250") in ranges
    assert len(ranges) == 11  # two cases of d, and a non-ASCII character after each start
    assert len(names.name_ranges("abcdefghij/*")) <= 1 + 2 * 2**5  # cut at five letters


def test_pages_add_up_to_the_whole(db_path: Path) -> None:
    seed_network(db_path, random.Random(4))
    with reading(db_path) as conn:
        pages_add_up(conn)


def pages_add_up(conn: Connection) -> None:
    whole = list(listing.iter_files(conn))
    pages: list[FileRow] = []
    for offset in range(0, len(whole) + 7, 7):
        pages += listing.iter_files(conn, limit=7, offset=offset)
    assert pages == whole
    for offset in (0, 5, len(whole) - 1, len(whole), len(whole) + 3):
        page, total = listing.files_page(conn, None, limit=7, offset=offset)
        assert (page, total) == (whole[offset : offset + 7], len(whole))
    assert listing.files_page(conn, "zzz", limit=7) == ([], 0)
    peers = list(listing.iter_peers(conn))
    assert len(peers) == listing.count_peers(conn) == 40
    paged = [p for o in range(0, 40, 9) for p in listing.iter_peers(conn, limit=9, offset=o)]
    assert paged == peers
    assert [p.last_seen for p in peers] == sorted((p.last_seen for p in peers), reverse=True)
    # Files and bad marks per peer, as the old GROUP BY subqueries counted them.
    for p in peers:
        pid = int(p.node_id, 16)
        files = conn.exec_driver_sql(
            "SELECT count(DISTINCT file_id) FROM holdings WHERE peer_id = ?", (pid,)
        ).scalar_one()
        bad = conn.exec_driver_sql(
            "SELECT count(*) FROM bad_peers WHERE tcp_port = ?", (p.tcp_port,)
        ).scalar_one()
        assert (p.files, p.bad_files, p.link) == (files, bad, "tls" if p.tls else "clear")


def test_query_plans_use_the_indexes(db_path: Path) -> None:
    seed_network(db_path, random.Random(5), peers=200)
    with reading(db_path) as conn:
        conn.exec_driver_sql("ANALYZE")
        plans_use_the_indexes(conn)


def plans_use_the_indexes(conn: Connection) -> None:
    def plan(sql: TextClause, params: dict[str, object]) -> str:
        explain = text(f"EXPLAIN QUERY PLAN {sql.text}")
        return " | ".join(r[3] for r in conn.execute(explain, params))

    page = listing.page_params(None, 100, 0)
    every = listing.files_queries(None)
    held = plan(*every["held"])
    # Every offer is read once, in name order from the index, grouped as it comes: no
    # sort, so the first rows come at once; each file is one rowid lookup.
    assert "SEARCH h USING INDEX ix_holdings_name (name>? AND name<?)" in held, held
    assert "SEARCH f USING INTEGER PRIMARY KEY" in held, held
    assert "TEMP B-TREE" not in held, held
    assert "ix_holdings_name" in plan(*every["count"])
    # An anchored glob seeks its ranges of the name index instead of reading every offer.
    anchored = plan(*listing.files_queries("peer0500/*")["held"])
    assert "SEARCH h USING INDEX ix_holdings_name (name>? AND name<?)" in anchored, anchored
    assert "SCAN h" not in anchored and "SCAN holdings" not in anchored, anchored
    peers = plan(listing.PEERS_SQL, page)
    assert "ix_peers_last_seen" in peers, peers
    assert "TEMP B-TREE" not in peers, peers  # no sort of every peer for one page


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"name": 'quote " and \\ and\nnewline', "size": 1, "here": True, "fp": None}],
        [{"b": 1.5, "a": "Énorme \u212a", "c": False}, {"b": 2, "a": "", "c": True}],
    ],
)
def test_streamed_json_is_what_emit_json_printed(rows: list[dict[str, object]]) -> None:
    before, after = io.StringIO(), io.StringIO()
    with redirect_stdout(before):
        render.emit_json(rows)
    with redirect_stdout(after):
        render.emit_json_stream(iter(rows))
    assert after.getvalue() == before.getvalue()
    lines = io.StringIO()
    with redirect_stdout(lines):
        render.emit_jsonl(iter(rows))
    assert [json.loads(line) for line in lines.getvalue().splitlines()] == rows


def test_web_page_shows_the_first_page_and_the_totals(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO files (id, sha256, size, chunk_size, root, chunk_count, first_seen)"
        " VALUES (1, ?, 10, 16384, '', 1, 0), (2, ?, 20, 16384, '', 1, 0)",
        ("a" * 64, "b" * 64),
    )
    for p in range(1, 151):
        conn.execute(
            "INSERT INTO peers (id, node_id, username, address, tcp_port, catalog_version,"
            " announce_seq, catalog_synced, tls, first_seen, last_seen)"
            " VALUES (?, ?, ?, '127.0.0.2', ?, 1, 1, 1, 0, 0, ?)",
            (p, f"{p:032x}", f"peer{p:03d}", 5000 + p, NOW + p),
        )
        conn.execute(
            "INSERT INTO holdings (peer_id, file_id, name, chunks_held) VALUES (?, 1, ?, 1)",
            (p, f"f{p:03d}.bin"),
        )
    # The 100th name on the page is offered with a second content too (on page two).
    conn.execute(
        "INSERT INTO holdings (peer_id, file_id, name, chunks_held) VALUES (1, 2, 'f100.bin', 1)"
    )
    conn.commit()
    conn.close()
    database = Database(db_path)
    try:
        v = dashboard.view(database, RateSampler(), None, now=time.time())
        assert len(v["files"]) == dashboard.FILE_ROWS == 100
        assert (v["files_total"], v["files_more"]) == (151, 51)
        assert len(v["peers"]) == dashboard.PEER_ROWS and v["peers_total"] == 150
        assert v["peers"][0].username == "peer150"  # most recently heard first
        last = v["files"][-1]
        assert (last.name, last.sha256) == ("f100.bin", "a" * 64)
        assert v["pick"][(last.name, last.sha256)] == f"f100.bin@{'a' * 16}"
        assert v["pick"][("f001.bin", "a" * 64)] == "f001.bin"
        state = dashboard.state_json(v)
        assert (state["files_total"], state["peers_total"]) == (151, 150)
        html = dashboard_html(v)
        assert "The first 100 of 151 files" in html
        assert "of 150 peers" in html
        v = dashboard.view(database, RateSampler(), "f00*", now=time.time())
        assert (len(v["files"]), v["files_total"], v["files_more"]) == (9, 9, 0)
    finally:
        database.close()


def dashboard_html(v: dict[str, object]) -> str:
    from p2pshare.services.web.context import make_env

    env = make_env()
    return "".join(
        env.get_template(f"live_{name}.html").render(v=v, csrf="x", share_on=False)
        for name in ("files", "peers")
    )

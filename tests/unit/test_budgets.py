"""Budgets per peer (db/budgets.py, the manifest reply bound), on a temp-file database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_serving import hashed

from p2pshare.db import budgets
from p2pshare.db import index as dbindex
from p2pshare.db import manifests as dbmanifests
from p2pshare.db import serving as dbserving
from p2pshare.db.engine import Database
from p2pshare.services import protocol
from p2pshare.services.downloader import manifests as fetch
from p2pshare.services.settings import SettingsError, load_settings

CS = 16384


def add_peer(db: Database, peer_id: int) -> None:
    with db.write() as s:
        s.exec_driver_sql(
            "INSERT INTO peers (id, node_id, username, address, tcp_port, catalog_version,"
            " announce_seq, catalog_synced, tls, first_seen, last_seen)"
            " VALUES (?, ?, ?, '127.0.0.2', ?, 1, 1, -1, 0, 0, 0)",
            (peer_id, f"{peer_id:032x}", f"peer{peer_id}", 5000 + peer_id),
        )


def hold(db: Database, peer_id: int, count: int) -> None:
    with db.write() as s:
        conn = s
        for i in range(count):
            sha = hashlib.sha256(f"{peer_id}-{i}".encode()).hexdigest()
            cur = conn.exec_driver_sql(
                "INSERT INTO files (sha256, size, chunk_size, root, chunk_count, first_seen)"
                " VALUES (?, 10, ?, ?, 1, 0)",
                (sha, CS, protocol.one_chunk_root(sha)),
            )
            conn.exec_driver_sql(
                "INSERT INTO holdings (peer_id, file_id, name, chunks_held) VALUES (?, ?, ?, 1)",
                (peer_id, cur.lastrowid, f"f{i}"),
            )


def test_a_page_past_the_catalog_budget_keeps_what_fits_and_records_the_peer(
    db: Database,
) -> None:
    add_peer(db, 1)
    add_peer(db, 2)
    hold(db, 1, 8)
    with db.write() as s:
        conn = s
        conn.exec_driver_sql("UPDATE peers SET catalog_entries = 8 WHERE id = 1")
        kept = budgets.within_catalog_budget(
            conn, 1, list(range(5)), reset=False, limit=10, now=0.0
        )
        honest = budgets.within_catalog_budget(
            conn, 2, list(range(5)), reset=False, limit=10, now=0.0
        )
    assert kept == [0, 1] and honest == [0, 1, 2, 3, 4]
    rows = dict(db_rows(db, "SELECT id, over_budget FROM peers"))
    assert rows[1] == "P2P_PEER_CATALOG_ENTRIES (10) at 1970-01-01T00:00:00Z"
    assert rows[2] is None
    # A reset starts the count again; the count is from above, so the exact one is taken
    # only once it passes the budget (here 8 held + 10 > 12: counted, and room for 4).
    with db.write() as s:
        conn = s
        assert (
            budgets.within_catalog_budget(conn, 1, [1] * 10, reset=True, limit=12, now=0)
            == [1] * 10
        )
        assert (
            budgets.within_catalog_budget(conn, 1, [2] * 10, reset=False, limit=12, now=0)
            == [2] * 4
        )


def test_over_budget_names_each_budget_once_with_its_latest_time(db: Database) -> None:
    add_peer(db, 1)
    with db.write() as s:
        conn = s
        first = budgets.record_over_budget(conn, 1, budgets.MANIFEST_BUDGET, 5, now=0.0)
        again = budgets.record_over_budget(conn, 1, budgets.MANIFEST_BUDGET, 5, now=60.0)
        other = budgets.record_over_budget(conn, 1, budgets.CATALOG_BUDGET, 7, now=0.0)
    assert (first, again, other) == (True, False, True)
    assert db_rows(db, "SELECT over_budget FROM peers") == [
        (
            "P2P_PEER_CATALOG_ENTRIES (7) at 1970-01-01T00:00:00Z; "
            "P2P_PEER_MANIFEST_ROWS (5) at 1970-01-01T00:01:00Z",
        )
    ]


def test_manifest_rows_count_until_a_file_of_our_own_proves_them(db: Database) -> None:
    add_peer(db, 1)
    add_peer(db, 2)
    content = hashed(1)
    with db.write() as s:
        ids = dbindex.ensure_files(s, [content, hashed(2)], now=0.0)
        file_a, file_b = ids[content.key], ids[hashed(2).key]
        budgets.record_manifest_sources(
            s, [(file_a, 1, 4), (file_b, 1, 4), (file_b, 2, 4)], now=0.0
        )
    with db.read() as s:
        assert budgets.manifest_rows_used(s, [1, 2, 3]) == {1: 8, 2: 0, 3: 0}
    with db.write() as s:
        dbindex.record_local_files(s, "download", [("a.bin", content)], now=1.0)
    with db.read() as s:
        assert budgets.manifest_rows_used(s, [1]) == {1: 4}


def test_a_manifest_learned_from_a_peer_is_not_served_as_our_own(db: Database) -> None:
    learned, own = hashed(1), hashed(2)
    with db.write() as s:
        dbindex.ensure_files(s, [learned], now=0.0)  # its chunk rows, no file of ours
        dbindex.record_local_files(s, "share", [("own.bin", own)], now=0.0)
    with db.read() as s:
        served = dbserving.chunk_hashes(s, [learned.key, own.key])
    assert served == {own.key: own.chunk_hashes}


def test_a_manifest_reply_is_bounded_by_what_was_asked() -> None:
    key = protocol.FileKey("a" * 64, CS, "b" * 64)
    small = protocol.manifest_reply_bytes({key: 3 * CS})
    bomb = protocol.manifest_reply_bytes({key: protocol.MAX_CHUNKS_PER_FILE * CS})
    assert small < 128 * 1024
    assert 2 * 32 * protocol.MAX_CHUNKS_PER_FILE * 4 // 3 < bomb < 3 * 32 * (1 << 20) * 4 // 3


@pytest.mark.parametrize("name", ["P2P_PEER_CATALOG_ENTRIES", "P2P_PEER_MANIFEST_ROWS"])
def test_budget_settings_take_a_positive_count(tmp_path: Path, name: str) -> None:
    env = {"P2P_HOME": str(tmp_path), "P2P_USERNAME": "me"}
    settings = load_settings({**env, name: "1000"})
    assert 1000 in (settings.peer_catalog_entries, settings.peer_manifest_rows)
    for bad in ("0", "many"):
        with pytest.raises(SettingsError, match=name):
            load_settings({**env, name: bad})


def db_rows(db: Database, query: str) -> list[tuple[object, ...]]:
    with db.read() as s:
        return list(s.exec_driver_sql(query))


def content(file_id: int, chunks: int) -> dbmanifests.Unhashed:
    sha = hashlib.sha256(str(file_id).encode()).hexdigest()
    return dbmanifests.Unhashed(file_id, (sha, CS, "0" * 64), chunks * CS, chunks)


def test_a_peer_is_asked_only_for_manifests_within_its_budget() -> None:
    mallory = dbmanifests.Holder("127.0.0.3", 5003, None, False, "mallory", peer_id=3)
    honest = dbmanifests.Holder("127.0.0.2", 5002, None, False, "bob", peer_id=2)
    bomb, big, small, shared = content(1, 1 << 20), content(2, 600), content(3, 300), content(4, 50)
    holders = {1: [mallory], 2: [mallory], 3: [mallory], 4: [mallory, honest]}
    # mallory's earlier manifests, not yet proven, count: 200 of its 1,000 rows are used.
    plan = fetch._plan([bomb, big, small, shared], holders, {3: 200, 2: 0}, 1000)
    # 200 + 600 fit, 300 more would not; 50 more still do (and bob is asked for them too).
    assert plan.by_peer == {mallory: [big, shared], honest: [shared]}
    assert plan.over_peers == {3: mallory}
    assert plan.over_budget == {1: ["mallory (127.0.0.3:5003)"], 3: ["mallory (127.0.0.3:5003)"]}


def test_manifest_requests_hold_a_bounded_number_of_entries() -> None:
    step = protocol.MANIFEST_ENTRIES_PER_REQUEST
    contents = [content(1, step // 2), content(2, step // 2), content(3, 1), content(4, 2 * step)]
    assert [[c.file_id for c in group] for group in fetch._requests(contents)] == [
        [1, 2],
        [3],
        [4],
    ]
    many = [content(i, 1) for i in range(protocol.MAX_MANIFEST_FILES + 1)]
    assert [len(group) for group in fetch._requests(many)] == [protocol.MAX_MANIFEST_FILES, 1]


def test_a_round_asks_a_bounded_number_of_entries_of_all_peers_together() -> None:
    peers = [
        dbmanifests.Holder("127.0.0.2", 5000 + i, None, False, f"id{i}", peer_id=i)
        for i in range(8)
    ]
    half = fetch.ROUND_ENTRIES // 2
    contents = [content(i, half) for i in range(8)]
    plan = fetch._plan(contents, {i: [peers[i]] for i in range(8)}, {}, 1 << 20)
    assert plan.by_peer == {peers[0]: [contents[0]], peers[1]: [contents[1]]}
    assert not plan.over_peers

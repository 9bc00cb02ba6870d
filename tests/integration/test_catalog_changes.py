"""Catalogs by change (issue 34): a peer learns what changed in another's catalog, not the
whole catalog again; a whole catalog comes in pages; a reset log is fetched whole; a node
of protocol 2.0 still gets a whole catalog.

What moved is read from the listener's one line per fetch ("catalog of ADDR:PORT changes
vN..vM: K entries in P pages" or "whole at vM: ..."), which counts the entries (and the
entries gone) that crossed the wire, so each test asserts what moved, not how fast."""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from p2pshare.services import protocol
from p2pshare.services.net.client import PeerClient

pytestmark = pytest.mark.integration

TIMEOUT = 90.0
FETCH_LINE = re.compile(
    r"catalog of [0-9.]+:(\d+) (whole at|changes v\d+\.\.) v(\d+): (\d+) entries in (\d+) page"
)


def fetches(node, since: int = 0) -> list[tuple[str, int, int, int]]:
    """(kind, version reached, entries, pages) of each catalog fetch logged after offset `since`."""
    return [
        ("whole" if m[2] == "whole at" else "changes", int(m[3]), int(m[4]), int(m[5]))
        for m in FETCH_LINE.finditer(node.log("listener")[since:])
    ]


def held(node, peer) -> dict[str, str]:
    """name -> SHA-256 of what `node` holds of `peer`'s offers."""
    return dict(
        node.sql(
            "SELECT h.name, f.sha256 FROM holdings h JOIN files f ON f.id = h.file_id"
            " JOIN peers p ON p.id = h.peer_id WHERE p.username = ?",
            (peer.username,),
        )
    )


def offered(node) -> dict[str, str]:
    return dict(
        node.sql("SELECT l.name, f.sha256 FROM local_files l JOIN files f ON f.id = l.file_id")
    )


def test_a_change_moves_only_what_changed_and_a_removal_reaches_the_peer(make_node, wait_until):
    a, b = make_node("a"), make_node("b")
    for i in range(40):
        (a.share / "docs" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (a.share / "docs" / f"{i:02d}.txt").write_bytes(f"file {i}\n".encode() * 50)
    a.start()
    wait_until(lambda: len(offered(a)) == 40, TIMEOUT, what="a to index its 40 files")
    b.start()
    wait_until(lambda: held(b, a) == offered(a), TIMEOUT, what="b to hold a's catalog")
    mark = len(b.log("listener"))

    # One file rewritten, one added: three entries move (the new content, the old one gone,
    # the new file), not the catalog.
    rewritten = b"a new version\n" * 100
    (a.share / "docs" / "07.txt").write_bytes(rewritten)
    (a.share / "docs" / "new.txt").write_bytes(b"brand new\n")
    want = hashlib.sha256(rewritten).hexdigest()
    wait_until(
        lambda: held(b, a).get("docs/07.txt") == want and "docs/new.txt" in held(b, a),
        TIMEOUT,
        what="b to see the rewritten and the new file",
    )
    wait_until(lambda: held(b, a) == offered(a), TIMEOUT, what="b to settle on a's catalog")
    # The listener logs a fetch once its last page is committed: wait for the line.
    wait_until(
        lambda: sum(entries for _, _, entries, _ in fetches(b, mark)) >= 3,
        TIMEOUT,
        what="b's listener to log the fetches",
    )
    moved = fetches(b, mark)
    assert moved and all(kind == "changes" for kind, *_ in moved), moved
    assert sum(entries for _, _, entries, _ in moved) == 3, moved

    # A file removed: one entry gone, and b no longer holds it.
    mark = len(b.log("listener"))
    (a.share / "docs" / "13.txt").unlink()
    wait_until(
        lambda: "docs/13.txt" not in held(b, a), TIMEOUT, what="b to forget the removed file"
    )
    assert held(b, a) == offered(a)
    wait_until(lambda: fetches(b, mark), TIMEOUT, what="b's listener to log the fetch")
    moved = fetches(b, mark)
    assert [(kind, entries) for kind, _, entries, _ in moved] == [("changes", 1)], moved
    # b holds a's catalog up to the version a has reached, in a's log.
    version, epoch = a.sql("SELECT catalog_version, catalog_epoch FROM node")[0]
    wait_until(
        lambda: (
            b.sql(
                "SELECT catalog_synced, catalog_epoch FROM peers WHERE username = ?", (a.username,)
            )
            == [(version, epoch)]
        ),
        TIMEOUT,
        what="b's record of a's catalog to reach a's version",
    )
    [row] = b.p2pctl_json("peers")
    assert (row["catalog_version"], row["catalog_synced"]) == (version, version)
    table = b.p2pctl("peers")
    assert table.returncode == 0 and "up to date" in table.stdout, table.stdout


def test_a_catalog_of_several_pages_arrives_whole_and_a_reset_log_is_fetched_whole(
    make_node, wait_until
):
    a, b = make_node("a"), make_node("b")
    count = protocol.PAGE_ENTRIES + 100  # two pages
    for i in range(count):
        folder = a.share / f"d{i % 50:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i:05d}.bin").write_bytes(i.to_bytes(4, "big"))
    a.start()
    wait_until(lambda: len(offered(a)) == count, 300, what=f"a to index {count} files")
    b.start()
    wait_until(lambda: held(b, a) == offered(a), 300, what="b to hold a's whole catalog")
    wait_until(lambda: fetches(b), TIMEOUT, what="b's listener to log the fetch")
    [(kind, version, entries, pages)] = fetches(b)
    assert (kind, entries, pages) == ("whole", count, 2)

    # a loses its database (a new log) and most of its share while it is down: b fetches
    # the new catalog whole, and holds nothing a offered before.
    a.stop()
    for path in a.db_path.parent.glob("p2p.db*"):
        path.unlink()
    for path in sorted(a.share.rglob("*.bin"))[10:]:
        path.unlink()
    (a.share / "fresh.txt").write_bytes(b"after the reset\n")
    mark = len(b.log("listener"))
    a.start()
    wait_until(lambda: len(offered(a)) == 11, TIMEOUT, what="a to index what is left")
    wait_until(lambda: held(b, a) == offered(a), TIMEOUT, what="b to hold a's new catalog")
    wait_until(lambda: fetches(b, mark), TIMEOUT, what="b's listener to log the fetch")
    assert fetches(b, mark)[0][0] == "whole"


def test_a_node_of_protocol_2_0_still_gets_the_whole_catalog(make_node, wait_until):
    a = make_node("a")
    (a.share / "one.txt").write_bytes(b"one\n")
    (a.share / "two.txt").write_bytes(b"two\n")
    a.start()
    wait_until(lambda: len(offered(a)) == 2, TIMEOUT, what="a to index its files")
    # What a node before catalogs by change sends: {"op": "catalog"}, and nothing else.
    with PeerClient("127.0.0.1", a.tcp_port(), key=None) as client:
        client.deadline = time.monotonic() + TIMEOUT
        version, entries = client.catalog()
    assert version == a.scalar("SELECT catalog_version FROM node")
    assert {e.name: e.file.sha256 for e in entries} == offered(a)


def test_a_restarted_peer_costs_the_changes_made_meanwhile_not_its_catalog(make_node, wait_until):
    # b must not forget a while it restarts (a peer silent for the TTL goes with its offers).
    a, b = make_node("a"), make_node("b", P2P_PEER_TTL=120)
    for i in range(30):
        (a.share / f"{i:02d}.txt").write_bytes(f"file {i}\n".encode())
    a.start()
    wait_until(lambda: len(offered(a)) == 30, TIMEOUT, what="a to index its files")
    b.start()
    wait_until(lambda: held(b, a) == offered(a), TIMEOUT, what="b to hold a's catalog")
    first_id = a.node_id()
    mark = len(b.log("listener"))

    a.restart()  # a new node id, the same database and certificate
    wait_until(lambda: a.node_id() not in (None, first_id), TIMEOUT, what="a's new node id")
    (a.share / "after.txt").write_bytes(b"written after the restart\n")
    wait_until(lambda: "after.txt" in held(b, a), TIMEOUT, what="b to see a's new file")
    # One row for a, holding what it held before plus the one change.
    assert b.sql("SELECT node_id FROM peers WHERE username = ?", (a.username,)) == [(a.node_id(),)]
    assert held(b, a) == offered(a)
    wait_until(lambda: fetches(b, mark), TIMEOUT, what="b's listener to log the fetch")
    moved = fetches(b, mark)
    assert [(kind, entries) for kind, _, entries, _ in moved] == [("changes", 1)], moved

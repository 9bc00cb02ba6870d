"""Power cuts (LazyFS) at each kind of cut point: nothing acknowledged is lost, nothing wrong
is ever visible or offered, nothing is fetched twice, the database stays sound.

One round per cut point (tests/reliability/powerloss.py says what a round does and
counts); `bench/powerloss.py` runs 20 random ones and prints the table. LazyFS is built
from ../shared/tools/powerloss by its build.sh (Debian packages installed as root when
missing); where it cannot build or FUSE cannot mount, the test skips saying why.
P2P_POWERLOSS_SEED=N repeats a run's random cut points.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable

import pytest
from node import Node
from powerloss import HEADERS, KINDS, LazyFS, Rounds, Unavailable, build_lazyfs, seed_content
from tabulate import tabulate

pytestmark = pytest.mark.reliability

# Small enough for CI's budget (a round is a node started twice), slow enough (the
# seeder's upload limit) that each cut point falls inside what it names.
BIG_MIB = 16
SMALL_FILES = 120
UPLOAD_LIMIT = 8_000_000
# A cut in the middle of the big file is left to bench/powerloss.py: its resume is what the
# kill -9 tests already show, and each round costs CI two node starts.
CI_KINDS = tuple(k for k in KINDS if k != "big")


def test_power_cuts_lose_nothing_acknowledged_and_show_nothing_wrong(
    make_node: Callable[..., Node], udp_port: int
) -> None:
    try:
        build_lazyfs()
        fs = LazyFS()
        fs.mount()
    except Unavailable as exc:
        pytest.skip(f"power loss cannot be simulated here: {exc}")
    seed = int(os.environ.get("P2P_POWERLOSS_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    seeder = make_node("seed", P2P_UPLOAD_LIMIT=UPLOAD_LIMIT)
    content = seed_content(seeder, big_mib=BIG_MIB, small_files=SMALL_FILES, rng=rng)
    seeder.start(("server", "announcer", "listener"))
    rounds = Rounds(seeder, content, fs, udp_port)
    failed = True
    try:
        for kind in CI_KINDS:
            rounds.run(kind, rng)
        failed = False
    finally:
        print(f"P2P_POWERLOSS_SEED={seed}")
        print(tabulate([r.row() for r in rounds.results], headers=HEADERS))
        for r in rounds.results:
            print(f"round {r.number}: {r.timeline()}")
        rounds.close(keep=failed)
        fs.close() if not failed else fs.umount()
    problems = [f"round {r.number} ({r.kind}): {p}" for r in rounds.results for p in r.problems]
    assert not problems, "\n".join(problems)


# A process that moves the catalog version with cheap (NORMAL) commits, as the indexer
# does, then (with "serve") has the server's ServedDurably make the version it would
# send a peer durable; it prints the version and waits for its SIGKILL.
SERVE_CHILD = r"""
import sys, time
from pathlib import Path
from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database
from p2pshare.services.server.served import ServedDurably
db = Database.open(Path(sys.argv[1]))
for _ in range(5):
    with db.write() as s:
        version = dbnode.bump_catalog_version(s, now=time.time())
if sys.argv[2] == "serve":
    ServedDurably(db)(version)
print(version, flush=True)
time.sleep(600)
"""


def test_a_catalog_version_served_to_peers_survives_a_power_cut() -> None:
    """Without the durable commit the same cut rolls the version back (checked too, so the
    test shows what it guards against): a peer holding it would skip the changes the node
    then numbers again."""
    try:
        build_lazyfs()
        fs = LazyFS(cache_size="64mb")
        fs.mount()
    except Unavailable as exc:
        pytest.skip(f"power loss cannot be simulated here: {exc}")
    found: dict[str, tuple[int, int]] = {}
    try:
        for mode in ("serve", "cheap"):
            db_path = fs.mnt / mode / "p2p.db"
            db_path.parent.mkdir()
            child = subprocess.Popen(
                [sys.executable, "-c", SERVE_CHILD, str(db_path), mode],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            told = int(child.stdout.readline())
            child.kill()  # by its PID: nothing may fsync after the cut
            child.wait(30)
            fs.clear_cache()
            fs.reboot()
            conn = sqlite3.connect(db_path)
            try:
                after = int(conn.execute("SELECT catalog_version FROM node").fetchone()[0])
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                conn.close()
            found[mode] = (told, after)
    finally:
        fs.close()
    print(f"catalog version told, then after the cut: {found}")
    assert found["serve"][1] >= found["serve"][0], found
    assert found["cheap"][1] < found["cheap"][0], f"the cut dropped nothing: {found}"

"""A download that cannot progress says so at once (issue 36): a peer that still offers
the file but refuses connections is named, with why, in `history`, on the progress bar
and on the page within seconds, whether it refused before giving the file's manifest or
died in the middle of the transfer; the download fails after P2P_WAIT_TIMEOUT with that
reason rather than sitting at 0 % for ever."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
from fakepeer import FakeFile, FakePeer
from node import ROLES, Node

CHUNK = 256 * 1024
# Over the small-file batch's limit (1 MiB, four chunks): a job of its own.
DATA = random.Random(36).randbytes(8 * CHUNK + 5)
DIES = random.Random(37).randbytes(8 * CHUNK + 7)
WAIT = 8  # P2P_WAIT_TIMEOUT: long enough to be seen waiting, short enough for a test


def test_a_peer_that_refuses_is_named_and_the_download_fails_with_why(
    make_node: Callable[..., Node],
    udp_port: int,
    wait_until: Callable[..., Any],
) -> None:
    leech = make_node("leech", P2P_WAIT_TIMEOUT=str(WAIT))
    gone = FakePeer([FakeFile("refused.bin", DATA, CHUNK)], udp_port, username="gone").start()
    dies = FakePeer(
        [FakeFile("dies.bin", DIES, CHUNK)], udp_port, username="dies", quit_at=4
    ).start()
    try:
        leech.start((*ROLES, "web"))  # the page says it too
        for name in ("refused.bin", "dies.bin"):
            wait_until(lambda n=name: known(leech, n), 60, what=f"the offer of {name}")
        gone.refuse_connections()  # before the leech asked for the manifest
        assert leech.p2pctl("download", "dies.bin", "--no-wait").returncode == 0
        follow_refused(leech, gone, dies, wait_until)
    finally:
        gone.close()
        dies.close()


def known(node: Node, name: str) -> bool:
    return bool(node.sql("SELECT 1 FROM holdings WHERE name = ?", (name,)))


def follow_refused(
    leech: Node, gone: FakePeer, dies: FakePeer, wait_until: Callable[..., Any]
) -> None:
    follow = subprocess.Popen(
        [sys.executable, "-m", "p2pshare.cli.main", "download", "refused.bin"],
        env=leech.env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        named = f"cannot talk to gone (127.0.0.1:{gone.port}): connection refused"
        died = f"cannot talk to dies (127.0.0.1:{dies.port}): connection refused"

        def both_say_why() -> bool:
            rows = {r["name"]: r for r in leech.p2pctl_json("history")}
            return (
                # Queued: no peer gave its manifest; waiting: started, then its peer died.
                rows.get("refused.bin", {}).get("status") == "queued"
                and rows["refused.bin"]["reason"] == named
                and rows.get("dies.bin", {}).get("status") == "waiting"
                and rows["dies.bin"]["reason"] == died
            )

        wait_until(both_say_why, WAIT * 3, what="history naming the peers that refuse")
        port = leech.scalar("SELECT value FROM role_settings WHERE role='web' AND name='port'")
        page = httpx.get(f"http://127.0.0.1:{port}/live", timeout=30).text
        assert named in page and died in page
        _, err = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 1
    assert err.splitlines()[-1] == f"error: download failed: {named} for {WAIT} s"
    failed = ("failed", f"{named} for {WAIT} s")
    assert "Traceback" not in err
    wait_until(
        lambda: (
            {r["name"]: (r["status"], r["reason"]) for r in leech.p2pctl_json("history")}
            == {"dies.bin": ("failed", f"{died} for {WAIT} s"), "refused.bin": failed}
        ),
        WAIT * 3,
        what="dies.bin to fail with why",
    )

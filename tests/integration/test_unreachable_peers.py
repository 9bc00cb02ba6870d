"""A download that cannot progress says so at once (issue 36): a peer that still offers
the file but refuses connections is named, with why, in `history` and on the progress
bar within seconds, and the download fails after P2P_WAIT_TIMEOUT with that reason
rather than sitting `active` at 0 % for ever."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from conftest import Node
from fakepeer import FakeFile, FakePeer

CHUNK = 256 * 1024
# Over the small-file batch's limit (1 MiB, four chunks): a job of its own.
DATA = random.Random(36).randbytes(8 * CHUNK + 5)
WAIT = 8  # P2P_WAIT_TIMEOUT: long enough to be seen waiting, short enough for a test


def test_a_peer_that_refuses_is_named_and_the_download_fails_with_why(
    make_node: Callable[..., Node],
    udp_port: int,
    wait_until: Callable[..., Any],
) -> None:
    leech = make_node("leech", P2P_WAIT_TIMEOUT=str(WAIT))
    gone = FakePeer([FakeFile("refused.bin", DATA, CHUNK)], udp_port, username="gone").start()
    try:
        leech.start()
        wait_until(lambda: leech.holdings_of("gone") > 0, 60, what="the offer of refused.bin")
        gone.refuse_connections()
        follow_refused(leech, gone, wait_until)
    finally:
        gone.close()


def follow_refused(leech: Node, gone: FakePeer, wait_until: Callable[..., Any]) -> None:
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

        def waiting_with_why() -> bool:
            rows = leech.p2pctl_json("history")
            return bool(rows) and rows[0]["status"] == "waiting" and rows[0]["reason"] == named

        wait_until(waiting_with_why, WAIT * 3, what="history naming the peer that refuses")
        _, err = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 1
    assert err.splitlines()[-1] == f"error: download failed: {named} for {WAIT} s"
    assert "Traceback" not in err

"""The listener's DropLog, called from its receiving loop and its writer's thread at once:
every drop is counted exactly once in the log, a line or part of a per-second count."""

from __future__ import annotations

import itertools
import logging
import re
import sys
import threading

import pytest

from p2pshare.services.listener import role
from p2pshare.services.listener.role import DropLog

CALLS = 20_000
THREADS = 4


def test_every_drop_is_logged_once_however_many_threads_drop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = itertools.count()
    # A new "second" every 500 calls, so the counts are written often, from any thread.
    monkeypatch.setattr(role.time, "monotonic", lambda: next(ticks) // 500)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as it goes
    drops = DropLog()
    try:
        with caplog.at_level(logging.WARNING, logger="p2p.listener"):
            threads = [
                threading.Thread(
                    target=lambda: [drops.drop("127.0.0.1", "x") for _ in range(CALLS)]
                )
                for _ in range(THREADS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            drops.window = -1  # the next drop writes the last second's count
            drops.drop("127.0.0.1", "last")
    finally:
        sys.setswitchinterval(previous)
    text = "\n".join(r.getMessage() for r in caplog.records)
    lines = text.count("dropped datagram from")
    counted = sum(int(n) for n in re.findall(r"dropped (\d+) more bad datagrams", text))
    assert lines + counted == THREADS * CALLS + 1

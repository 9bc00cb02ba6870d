"""Options for the whole suite.

P2P_TEST_CPU_HOG=1 runs the suite on a busy machine, as CI's shared machine often is:
one busy process per core but one (at least one) spins for the whole pytest run,
and each is killed by its PID when the run ends. A test that passes only on a quiet
machine fails this way at once instead of now and then.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

import pytest

HOG_ENV = "P2P_TEST_CPU_HOG"
# A busy loop and nothing else: no I/O, no memory, no children of its own.
HOG_CODE = "while True: pass"

_hogs: list[subprocess.Popen[bytes]] = []


def hog_count() -> int:
    """Busy processes to start: every core but one, at least one."""
    return max(1, (os.cpu_count() or 1) - 1)


def start_hogs() -> list[int]:
    """Start the busy processes (once) and return their PIDs."""
    if not _hogs:
        for _ in range(hog_count()):
            _hogs.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOG_CODE],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        atexit.register(stop_hogs)  # also if pytest dies before pytest_sessionfinish
    return [p.pid for p in _hogs]


def stop_hogs() -> None:
    """Kill each busy process we started, by its PID, and reap it."""
    while _hogs:
        proc = _hogs.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter prints the header
def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get(HOG_ENV) == "1":
        start_hogs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_hogs()


def pytest_report_header(config: pytest.Config) -> str | None:
    if os.environ.get(HOG_ENV) != "1":
        return None
    pids = ", ".join(str(p.pid) for p in _hogs) or "not started yet"
    return f"{HOG_ENV}=1: {hog_count()} busy process(es) beside the tests (pids {pids})"

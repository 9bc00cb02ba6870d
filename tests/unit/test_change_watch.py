"""ChangeWatch.wait_changed: asleep until another connection commits, a poke, or the
timeout. The waits here are long (60 s) and the joins generous, so a wake that never
comes fails the test however busy the machine, and nothing is timed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2pshare.db import watch as watchmod
from p2pshare.db.engine import Database
from p2pshare.db.watch import ChangeWatch, WriteNotify

LONG = 60.0
JOIN = 30.0


@pytest.fixture(params=["inotify", "polling"])
def watch(
    request: pytest.FixtureRequest, db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ChangeWatch]:
    if request.param == "polling":
        monkeypatch.setattr(WriteNotify, "open", classmethod(lambda cls, path: None))
    else:
        probe = WriteNotify.open(db.path)
        if probe is None:
            pytest.skip("no inotify here")
        probe.close()
    w = db.watch()
    w.enable_poke()
    assert w.changed()  # the first look; from here on only new commits count
    yield w
    w.close()


def waiting(watch: ChangeWatch) -> tuple[threading.Thread, list[bool], threading.Event]:
    """A thread in wait_changed(LONG), and its answer once it returns."""
    answer: list[bool] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        answer.append(watch.wait_changed(LONG))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(JOIN)
    return thread, answer, started


def commit(path: Path) -> None:
    """One commit by another connection (one transaction: two would be two changes)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.executescript(
        "BEGIN; CREATE TABLE IF NOT EXISTS scratch (x); INSERT INTO scratch VALUES (1); COMMIT;"
    )
    other.close()


def finished(thread: threading.Thread, answer: list[bool]) -> bool:
    thread.join(JOIN)
    return not thread.is_alive() and len(answer) == 1


def test_a_commit_by_another_connection_ends_the_wait(watch: ChangeWatch) -> None:
    # A fresh database's schema is checkpointed as it is made, and the first commit after
    # that (restarting the WAL) was seen to move data_version twice, a spurious second wake
    # for a waiter. One commit first, so the commit below is one change, as a running
    # node's are.
    commit(watch.path)
    watch.changed()
    thread, answer, _ = waiting(watch)
    commit(watch.path)
    assert finished(thread, answer), "a commit did not wake the waiter"
    assert answer == [True]
    assert not watch.changed()  # that commit was the one it reported


def test_a_poke_ends_the_wait_saying_nothing_changed(watch: ChangeWatch) -> None:
    thread, answer, _ = waiting(watch)
    watch.poke()
    assert finished(thread, answer), "a poke did not wake the waiter"
    assert answer == [False]


def test_a_poke_before_the_wait_ends_it_at_once(watch: ChangeWatch) -> None:
    watch.poke()  # e.g. a job ended while the loop was busy: the next wait must not sleep
    thread, answer, _ = waiting(watch)
    assert finished(thread, answer)
    assert answer == [False]


def test_a_commit_made_before_the_wait_is_reported_at_once(watch: ChangeWatch) -> None:
    commit(watch.path)
    thread, answer, _ = waiting(watch)
    assert finished(thread, answer)
    assert answer == [True]


def test_a_wait_that_times_out_says_nothing_changed(watch: ChangeWatch) -> None:
    assert watch.wait_changed(0.0) is False


def test_writes_to_other_files_in_the_folder_are_not_the_databases(db: Database) -> None:
    notify = WriteNotify.open(db.path)
    if notify is None:
        pytest.skip("no inotify here")
    try:
        assert not notify.drain()
        (db.path.parent / "other.log").write_text("a line\n")
        assert not notify.drain()  # an event, but not about the database
        commit(db.path)
        assert notify.drain()
        assert not notify.drain()  # drained
    finally:
        notify.close()


def test_a_poke_after_close_writes_nowhere(db: Database) -> None:
    w = db.watch()
    w.enable_poke()
    w.close()
    w.poke()  # a job ending while the role stops: no error, and no stray byte in a reused fd


def test_without_inotify_the_watch_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Callable[..., object]] = []
    monkeypatch.setattr(watchmod.ctypes, "CDLL", lambda *a, **k: calls.append(a) or object())
    assert WriteNotify.open(Path("/nonexistent/p2p.db")) is None
    assert calls


def test_a_checkpoint_that_empties_the_wal_ends_the_settling_at_once(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every role's checkpoint truncates the WAL when the node is quiet: a write event with
    no commit behind it. The watch looks once more and sleeps again, rather than looking
    nine more times over half a second, which every waiter of an idle node did each time."""
    commit(db.path)
    w = db.watch()
    try:
        w.changed()
        other = sqlite3.connect(db.path, isolation_level=None)
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        other.close()
        w.changed()  # restarting the WAL may move the counter: the settling comes after
        looks: list[bool] = []
        real = w.changed
        monkeypatch.setattr(w, "changed", lambda: looks.append(real()) or looks[-1])
        assert w._settle(time.monotonic() + LONG, False) == (False, False)
        assert looks == [False, False]
        commit(db.path)  # and a commit after it is still seen
        assert w._settle(time.monotonic() + LONG, False) == (True, False)
    finally:
        w.close()

"""The downloader's batches move the catalog version on one clock, at a pace set by the
catalog's size, and a move they owe is made later, never lost."""

from __future__ import annotations

import pytest

from p2pshare.db import node as dbnode
from p2pshare.db.engine import Database
from p2pshare.services.downloader import catalog_bumps
from p2pshare.services.downloader.catalog_bumps import CatalogBumps


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(catalog_bumps.time, "monotonic", c)
    return c


def version(db: Database) -> int:
    with db.read() as s:
        return dbnode.catalog_version(s)


def test_one_move_per_gap_and_the_rest_owed(clock: Clock) -> None:
    bumps = CatalogBumps()
    assert bumps.due() and not bumps.owed
    bumps.moved(entries=100)  # a small catalog: the shortest gap
    clock.now += catalog_bumps.BUMP_SECONDS / 2
    assert not bumps.due() and bumps.owed  # a second batch's group, too soon
    clock.now += catalog_bumps.BUMP_SECONDS / 2
    assert bumps.due() and not bumps.owed


def test_the_gap_grows_with_the_catalog(clock: Clock) -> None:
    bumps = CatalogBumps()
    assert bumps.due()
    bumps.moved(entries=10_000)
    gap = 10_000 * catalog_bumps.SECONDS_PER_ENTRY
    assert gap > catalog_bumps.BUMP_SECONDS
    clock.now += gap - 0.01
    assert not bumps.due()
    clock.now += 0.01
    assert bumps.due()


def test_an_owed_move_is_made_once_its_gap_passed_or_at_once_when_stopping(
    clock: Clock, db: Database
) -> None:
    bumps = CatalogBumps()
    bumps.settle(db)
    assert version(db) == 0  # nothing owed, nothing moves
    assert bumps.due()
    bumps.moved(entries=0)
    assert not bumps.due()
    bumps.settle(db)
    assert version(db) == 0 and bumps.owed  # still inside the gap
    clock.now += catalog_bumps.BUMP_SECONDS
    bumps.settle(db)
    assert version(db) == 1 and not bumps.owed
    assert not bumps.due()  # the settled move started a gap of its own
    bumps.settle(db, force=True)
    assert version(db) == 2 and not bumps.owed

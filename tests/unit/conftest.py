"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pshare.db.engine import Database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh database in the test's own folder, closed afterwards."""
    database = Database.open(tmp_path / "p2p.db")
    yield database
    database.close()

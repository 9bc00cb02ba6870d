"""The sqlite3 connection under a Core connection, for the modules still written in plain
sqlite3 while they move to Core (nothing is cached above it, so nothing goes stale)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import Connection


def driver_connection(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `conn`'s transaction (begun if it was not)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw

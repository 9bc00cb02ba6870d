"""The schema version and its error, apart from the tables (`db.schema`) so that p2pctl
can name them without importing SQLAlchemy (its commands that read no database)."""

from __future__ import annotations

SCHEMA_VERSION = 11


class SchemaError(Exception):
    """The database cannot be used by this version of p2pshare."""

"""The schema version and its error, apart from the engine so that code reading the
database without SQLAlchemy (`db.quick`) checks the same version."""

from __future__ import annotations

SCHEMA_VERSION = 11


class SchemaError(Exception):
    """The database cannot be used by this version of p2pshare."""

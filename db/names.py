"""How a user's pattern matches a file name: pure code, no SQLAlchemy, shared by the
reports (`db.reports`) and the plain-sqlite3 queueing path (`db.queueing`)."""

from __future__ import annotations

import fnmatch


def matches(name: str, pattern: str | None) -> bool:
    """A glob when the pattern has wildcards, else a case-insensitive substring."""
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()

"""How a user's pattern matches a file name: pure code, no SQLAlchemy, shared by the
reports (`db.reports`) and the plain-sqlite3 queueing path (`db.queueing`).

One rule everywhere (`files`, `download`, a folder, `--all`, `pause`): names and
patterns are compared in Unicode NFC and case-folded. macOS writes names decomposed
(NFD: `e` and a combining accent), while a person types the composed `é`; the two look
the same and must match. An exact name still means that name alone.
"""

from __future__ import annotations

import fnmatch
import unicodedata


def fold(text: str) -> str:
    """A name or pattern as compared: NFC, case-folded."""
    return unicodedata.normalize("NFC", text).casefold()


def matches(name: str, pattern: str | None) -> bool:
    """A glob when the pattern has wildcards, else a substring; both in NFC, any case."""
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(fold(name), fold(pattern))
    return fold(pattern) in fold(name)


def same_name(name: str, typed: str) -> bool:
    """The name exactly as typed, but for how its accents are encoded (NFC)."""
    return name == typed or unicodedata.normalize("NFC", name) == unicodedata.normalize(
        "NFC", typed
    )


def in_folder(name: str, folder: str) -> bool:
    """`name` lies under `folder` (which ends in '/'), by the same rule as `matches`."""
    return fold(name).startswith(fold(folder))

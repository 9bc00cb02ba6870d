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


_PRINTABLE_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F))


def like_prefilter(pattern: str | None) -> str | None:
    """A LIKE pattern that every name `matches(name, pattern)` accepts also matches, when
    the name is printable ASCII (None: no such filter). For such a name, NFC and case
    folding are lowering, which LIKE ignores for ASCII, so the pattern's longest literal
    run (ASCII only) must be in it: SQLite tests that in C, and the Python `matches` runs
    only on the names that pass it (a million offers: 1.2 -> 0.2 s). Names with any other
    character are for `matches` alone (the caller's SQL lets them through)."""
    if not pattern:
        return None
    runs, run, i = [], "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in "*?[":
            runs.append(run)
            run = ""
            if ch == "[":  # a bracket set: skip to its end (fnmatch's rule: ']' first is literal)
                j = i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1
                j = pattern.find("]", j + (pattern[j : j + 1] == "]"))
                i = len(pattern) if j < 0 else j
        else:
            run += ch
        i += 1
    runs.append(run)
    literal = max(runs, key=len)
    if not literal or not _PRINTABLE_ASCII.issuperset(literal):
        return None
    escaped = literal.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def same_name(name: str, typed: str) -> bool:
    """The name exactly as typed, but for how its accents are encoded (NFC)."""
    return name == typed or unicodedata.normalize("NFC", name) == unicodedata.normalize(
        "NFC", typed
    )


def in_folder(name: str, folder: str) -> bool:
    """`name` lies under `folder` (which ends in '/'), by the same rule as `matches`."""
    return fold(name).startswith(fold(folder))

"""How a user's pattern matches a file name: pure code, no SQLAlchemy, shared by the
reports (`db.reports`) and the plain-sqlite3 queueing path (`db.queueing`).

One rule everywhere (`files`, `download`, a folder, `--all`, `pause`): names and
patterns are compared in Unicode NFC and case-folded. macOS writes names decomposed
(NFD: `e` and a combining accent), while a person types the composed `é`; the two look
the same and must match. An exact name still means that name alone.
"""

from __future__ import annotations

import fnmatch
import re
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
    only on the names that pass it. Names with any other
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


# SQLite orders TEXT before every BLOB: a range ending here runs to the last name.
END_OF_NAMES = b"\xff"
# The case variants of a prefix double with each letter; past this many letters the
# prefix is cut (a shorter prefix still bounds the names, just less tightly).
_MAX_PREFIX_LETTERS = 5


def name_ranges(pattern: str | None) -> list[tuple[str, str | bytes]]:
    """Half-open ranges [low, high) of names, in SQLite's BINARY order (code point order),
    outside which no name `matches(name, pattern)`: a glob's literal start, in every case,
    as index seeks instead of a pass over every name. [("", END_OF_NAMES)] when the
    pattern does not anchor the start.

    Why it is sound: NFC and case folding leave a name's ASCII start as it is but for
    case, except its last character, which may compose with a combining mark after it,
    and then folds to a character starting with that letter in lower case. So a name
    matching a pattern that starts with the ASCII literal P either starts with P in some
    case, or starts with P[:j] in some case followed by a character past ASCII (the
    Kelvin sign folds to k, for one)."""
    prefix = _ascii_start(pattern)
    letters = [i for i, ch in enumerate(prefix) if ch.isalpha()]
    if len(letters) > _MAX_PREFIX_LETTERS:
        prefix = prefix[: letters[_MAX_PREFIX_LETTERS]]
    if not prefix:
        return [("", END_OF_NAMES)]
    ranges: list[tuple[str, str | bytes]] = [("\x80", END_OF_NAMES)]
    for j in range(1, len(prefix)):
        ranges += [(start + "\x80", _after(start)) for start in _cases(prefix[:j])]
    ranges += [(start, _after(start)) for start in _cases(prefix)]
    return sorted(ranges)


def _ascii_start(pattern: str | None) -> str:
    """A glob's literal start, up to its first wildcard, as far as it is ASCII; the
    character before a non-ASCII one goes too (NFC may compose the two). A substring
    pattern anchors nothing."""
    if not pattern or not any(ch in pattern for ch in "*?["):
        return ""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    end = next((i for i, ch in enumerate(literal) if ord(ch) > 0x7F), None)
    return literal if end is None else literal[: max(0, end - 1)]


def _cases(text: str) -> list[str]:
    variants = [""]
    for ch in text:
        variants = [v + c for v in variants for c in dict.fromkeys((ch.lower(), ch.upper()))]
    return variants


def _after(start: str) -> str:
    """The first string past every string that starts with `start` (ASCII, not empty)."""
    return start[:-1] + chr(ord(start[-1]) + 1)


def same_name(name: str, typed: str) -> bool:
    """The name exactly as typed, but for how its accents are encoded (NFC)."""
    return name == typed or unicodedata.normalize("NFC", name) == unicodedata.normalize(
        "NFC", typed
    )


def in_folder(name: str, folder: str) -> bool:
    """`name` lies under `folder` (which ends in '/'), by the same rule as `matches`."""
    return fold(name).startswith(fold(folder))

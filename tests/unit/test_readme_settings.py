"""Every setting the code reads is in the README's settings section: the README is where
a user looks for them, and the project's rules have it list every one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where the code names a variable it reads: the settings, the node's config record, the
# roles' start-up script and p2pctl.
SOURCES = [
    *sorted((ROOT / "services").rglob("*.py")),
    ROOT / "services" / "run-role.sh",
    *sorted((ROOT / "cli").rglob("*.py")),
]


def settings_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Settings\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def variables_read() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        names |= set(re.findall(r"\bP2P_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def test_the_readme_names_every_setting() -> None:
    section = settings_section()
    names = variables_read()
    assert "P2P_HOME" in names  # the scan found the settings at all
    assert sorted(n for n in names if f"`{n}`" not in section) == []

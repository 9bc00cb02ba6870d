"""Every SQL example of the README and docs/ runs on a node's database, with nothing newer
than the SQLite Ubuntu 22.04 ships (3.37; Debian 12 has 3.40): issue 36 found one needing
3.42 (`unixepoch('now','subsec')`)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from p2pshare.db.engine import Database

ROOT = Path(__file__).resolve().parents[2]
# The README links the details; docs/database.md holds most of the examples.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What SQLite added after 3.37, as the examples would spell it.
NEWER_THAN_3_37 = (
    "unixepoch(",  # 3.38
    "->",  # 3.38
    "format(",  # 3.38
    "unhex(",  # 3.41
    "subsec",  # 3.42
    "timediff(",  # 3.43
    "octet_length(",  # 3.43
    "concat(",  # 3.44
    "concat_ws(",  # 3.44
    "string_agg(",  # 3.44
)


def statements() -> list[str]:
    blocks = [
        block
        for doc in DOCS
        for block in re.findall(r"```sql\n(.*?)```", doc.read_text(), flags=re.S)
    ]
    out, pending = [], ""
    for block in blocks:
        for line in block.splitlines():
            if line.lstrip().startswith("--"):
                continue
            pending += line + "\n"
            if sqlite3.complete_statement(pending):
                out.append(pending.strip())
                pending = ""
    assert pending.strip() == ""
    return out


@pytest.mark.parametrize("statement", statements())
def test_a_readme_query_runs_on_old_sqlite(tmp_path: Path, statement: str) -> None:
    text = statement.lower()
    assert not [f for f in NEWER_THAN_3_37 if re.search(rf"(?<!\w){re.escape(f)}", text)]
    Database.open(tmp_path / "p2p.db").close()
    conn = sqlite3.connect(tmp_path / "p2p.db")
    try:
        conn.execute(statement).fetchall()
    finally:
        conn.close()

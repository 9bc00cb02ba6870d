"""A list of values goes into a statement as one JSON parameter (db/lists.py): every value
answers, and a connection prepares one statement text whatever the list's length."""

from __future__ import annotations

import pytest
from sqlalchemy import column, create_engine, event, select, table, text

from p2pshare.db.lists import json_values


@pytest.mark.parametrize("count", [0, 1, 2, 4, 5, 63, 64, 65, 499, 500, 501, 1234, 40_000])
def test_every_value_answers_and_one_statement_text(count: int) -> None:
    engine = create_engine("sqlite://")
    texts: set[str] = set()

    @event.listens_for(engine, "before_cursor_execute")
    def seen(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        texts.add(statement)

    t = table("t", column("id"), column("v"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": f"v{i}"} for i in range(2000)])
        texts.clear()
        for n in (count, count // 2 + 1):
            wanted = [f"v{i}" for i in range(0, 2 * n, 2)]
            got = conn.scalars(select(t.c.v).where(t.c.v.in_(json_values(wanted))))
            assert sorted(got) == sorted(v for v in wanted if int(v[1:]) < 2000)
    assert len(texts) == 1

"""IN lists go in slices of a few fixed lengths, so a connection keeps a few prepared
statements per query, not one per length (10-15 MB of RSS a connection at 10,000 files)."""

from __future__ import annotations

import sqlite3

import pytest

from p2pshare.db.inlists import LENGTHS, SLICE, in_slices, marks, padded


@pytest.mark.parametrize("count", [1, 2, 4, 5, 63, 64, 65, 499, 500, 501, 1234])
def test_slices_keep_every_value_in_order_padded_to_few_lengths(count: int) -> None:
    values = list(range(count))
    parts = list(in_slices(values))
    assert all(len(p) in LENGTHS for p in parts)
    seen: list[int] = []
    for part in parts:
        real = part[: min(SLICE, count - len(seen))]
        assert set(part) == set(real)  # padding repeats the slice's last value only
        seen += real
    assert seen == values


def test_no_values_no_slices_and_a_smaller_slice_size_is_kept() -> None:
    assert list(in_slices([])) == []
    assert [len(p) for p in in_slices(list(range(300)), 250)] == [256, 64]


def test_padding_changes_no_answer_and_few_statement_texts() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"v{i}",) for i in range(2000)])
    texts = set()
    for n in range(1, 1200, 7):
        wanted = [f"v{i}" for i in range(0, 2 * n, 2)]
        got = []
        for part in in_slices(wanted):
            sql = f"SELECT v FROM t WHERE v IN ({marks(part)}) ORDER BY id"
            texts.add(sql)
            got += [v for (v,) in conn.execute(sql, part)]
        assert sorted(got) == sorted(v for v in wanted if int(v[1:]) < 2000)
        conn.execute(f"DELETE FROM t WHERE v IN ({marks(padded(['nope']))})", padded(["nope"]))
    assert len(texts) == len(LENGTHS)

"""Lists of many values as one parameter: `x IN (SELECT value FROM json_each(:list))`.

One statement text however many values (SQLite prepares it once and caches it), and no
limit on bound parameters per statement."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import BindParameter, TextualSelect, bindparam, column, text


def json_fields(count: int, source: str = "value") -> str:
    """The first `count` items of each JSON array `source` (a `json_each` row's value), as
    SQL columns: for rows passed as one JSON parameter."""
    return ", ".join(f"json_extract({source}, '$[{i}]')" for i in range(count))


def json_values(values: Iterable[object]) -> TextualSelect:
    """SELECT value FROM json_each(the values as JSON), for `column.in_(...)`."""
    param: BindParameter[str] = bindparam("values", json.dumps(list(values)), unique=True)
    return text("SELECT value FROM json_each(:values)").bindparams(param).columns(column("value"))

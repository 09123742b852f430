"""The `_dw_versions` key text of many rows at once, fast for the common integer key.

Must equal `dualwrite.events.key_text` exactly (the live apply path writes the same keys): for one `int`
value that is `json.dumps([v])` = `[v]`; bool is a subclass of int but encodes as `true`/`false`, so the
shortcut checks the exact type. Everything else goes through key_text itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table

from dualwrite.apply.rule import pk_columns
from dualwrite.events import key_text


def key_positions(table: Table, columns: Sequence[str]) -> list[int]:
    """Positions of the primary key columns (in key order) within `columns` (column keys)."""
    names = [table.c[c].name for c in columns]
    return [names.index(c) for c in pk_columns(table)]


def key_texts(values: Sequence[Sequence[Any]], positions: Sequence[int]) -> list[str]:
    """key_text of every row's primary key values (taken at `positions`)."""
    if len(positions) == 1:
        (i,) = positions
        out = []
        append = out.append
        for row in values:
            v = row[i]
            append(f"[{v}]" if type(v) is int else key_text([v]))
        return out
    return [key_text([row[i] for i in positions]) for row in values]

"""Keyset pagination over a table's primary key (composite and text keys too; never OFFSET).

A chunk is read in ONE SQLite read transaction together with `_dw_meta.last_seq` = S, so the chunk
reflects every change up to S and is applied with version S (DESIGN-NOTES §3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, select, tuple_

from dualwrite.apply import pk_columns
from dualwrite.events import decode_value, key_text
from dualwrite.internal import meta


def encode_key(values: list[Any] | tuple[Any, ...]) -> str:
    """The JSON text stored in a checkpoint (the same canonical form as the apply rule's key text)."""
    return key_text(list(values))


def decode_key(text: str | None) -> tuple[Any, ...] | None:
    if text is None:
        return None
    return tuple(decode_value(v) for v in json.loads(text))


@dataclass
class Chunk:
    rows: list[dict[str, Any]]
    version: int  # last_seq read in the same SQLite transaction
    last_key: tuple[Any, ...] | None  # primary key of the last row (the next chunk starts after it)


def read_chunk(engine: Engine, table: Table, after: tuple[Any, ...] | None, limit: int) -> Chunk:
    pk = pk_columns(table)
    cols = [table.c[c] for c in pk]
    stmt = select(table)
    if after is not None:
        if len(cols) == 1:
            stmt = stmt.where(cols[0] > after[0])
        else:
            stmt = stmt.where(tuple_(*cols) > tuple_(*after))
    stmt = stmt.order_by(*cols).limit(limit)
    with engine.connect() as conn, conn.begin():
        # Read last_seq first: the deferred transaction's snapshot starts here and covers the rows too.
        version = conn.execute(select(meta.c.value).where(meta.c.name == "last_seq")).scalar() or 0
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
    last = tuple(rows[-1][c] for c in pk) if rows else None
    return Chunk(rows=rows, version=int(version), last_key=last)


def count_rows(engine: Engine, table: Table) -> int:
    from sqlalchemy import func

    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(table)).scalar() or 0
        conn.rollback()
    return int(n)

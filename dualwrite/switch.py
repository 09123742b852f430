"""Moving the write primary between backends without split brain or a reused seq.

The old primary is retired first, under its own lock (SQLite: BEGIN IMMEDIATE; Postgres: the UPDATE of
`is_primary` waits for every writer holding it FOR SHARE), so no write can commit there afterwards;
its final `last_seq` is read in the same transaction. The new primary's `last_seq` is raised above it
and it is marked primary. Writers that meet a retired side re-read the phase and retry (adapter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Integer, func, select, text

from dualwrite.bookkeeping import read_meta, write_meta

if TYPE_CHECKING:
    from dualwrite.engines import Backends
    from dualwrite.tables import Tables


def switch_primary(backends: Backends, tables: Tables, new_primary: str) -> int:
    """Make `new_primary` ('sqlite' or 'postgres') the only primary; return the seq it continues from.
    Moving to Postgres moves every id sequence of `tables` past the keys SQLite handed out."""
    old = "sqlite" if new_primary == "postgres" else "postgres"
    with backends.write_engine(old).begin() as conn:
        write_meta(conn, "is_primary", 0)
        old_last = read_meta(conn, "last_seq") or 0
    with backends.write_engine(new_primary).begin() as conn:
        new_last = max(read_meta(conn, "last_seq") or 0, old_last)
        write_meta(conn, "last_seq", new_last)
        if new_primary == "postgres":
            reset_sequences(conn, tables.tables())
        write_meta(conn, "is_primary", 1)
    return new_last


def reset_sequences(conn: Connection, tables: list) -> None:  # type: ignore[type-arg]
    """Move each serial/identity sequence past the table's max key: rows the SQLite primary inserted
    arrived with explicit ids, so Postgres' own sequences are still at their start."""
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        quoted = conn.dialect.identifier_preparer.quote(table.name)  # parsed as SQL: mixed case needs quotes
        seq = conn.execute(select(func.pg_get_serial_sequence(quoted, pk[0].name))).scalar()
        if seq:
            top = conn.execute(select(func.max(pk[0]))).scalar() or 0
            conn.execute(text("SELECT setval(CAST(:seq AS regclass), :v, :called)"),
                         {"seq": seq, "v": max(top, 1), "called": top > 0})

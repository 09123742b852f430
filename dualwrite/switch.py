"""Moving the write primary between backends without split brain or a reused seq.

The old primary is retired first, under its own lock (SQLite: BEGIN IMMEDIATE; Postgres: the UPDATE of
`is_primary` waits for every writer holding it FOR SHARE), so no write can commit there afterwards;
its final `last_seq` is read in the same transaction. The new primary's `last_seq` is raised above it
and it is marked primary. Writers that meet a retired side re-read the phase and retry (adapter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dualwrite.bookkeeping import move_sequences_past_keys, read_meta, write_meta

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
            move_sequences_past_keys(conn, tables.tables())
        write_meta(conn, "is_primary", 1)
    return new_last

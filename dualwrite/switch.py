"""Moving the write primary between backends without split brain or a reused seq or id.

The old primary is retired first, under its own lock (SQLite: BEGIN IMMEDIATE; Postgres: the UPDATE of
`is_primary` waits for every writer holding it FOR SHARE), so no write can commit there afterwards;
its final `last_seq` is read in the same transaction. The new primary's `last_seq` is raised above it
and it is marked primary, each side recording the new phase in the same transaction (phase_record.py).
Writers that meet a retired side re-read the phase and retry (adapter).

Moving to Postgres also moves the id sequence of every captured table with a generated integer key
past every id SQLite handed out: the largest key SQLite holds (read in the retiring transaction, so
final) and, for AUTOINCREMENT tables, `sqlite_sequence`, as well as the largest key Postgres holds.
Postgres' own max alone is not enough: a row SQLite committed just before it was retired may still be
on its way to Postgres (the inline apply, or the replay), and the id Postgres would hand out next is
then taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Integer, Table, func, select

from dualwrite.bookkeeping import move_sequences_past_keys, read_meta, write_meta
from dualwrite.phase import Record
from dualwrite.phase_record import write_record

if TYPE_CHECKING:
    from dualwrite.engines import Backends
    from dualwrite.tables import Tables


def switch_primary(backends: Backends, tables: Tables, new_primary: str, *, record: Record | None = None) -> int:
    """Make `new_primary` ('sqlite' or 'postgres') the only primary; return the seq it continues from.
    Moving to Postgres moves every id sequence of `tables` past the keys SQLite handed out. `record`: the
    phase of record this switch is for, written in both sides' switch transactions (phase_record.py)."""
    old = "sqlite" if new_primary == "postgres" else "postgres"
    with backends.write_engine(old).begin() as conn:
        write_meta(conn, "is_primary", 0)
        old_last = read_meta(conn, "last_seq") or 0
        floors = sqlite_max_keys(conn, tables.tables()) if old == "sqlite" else {}
        if record is not None:
            write_record(conn, record)
    with backends.write_engine(new_primary).begin() as conn:
        new_last = max(read_meta(conn, "last_seq") or 0, old_last)
        write_meta(conn, "last_seq", new_last)
        if new_primary == "postgres":
            move_sequences_past_keys(conn, tables.tables(), floors)
        write_meta(conn, "is_primary", 1)
        if record is not None:
            write_record(conn, record)
    return new_last


def sqlite_max_keys(conn: Connection, tables: Iterable[Table]) -> dict[str, int]:
    """On SQLite: per table with a single integer key, the largest id it handed out (its largest key, or
    sqlite_sequence's value when higher: AUTOINCREMENT never hands a deleted id out again)."""
    out = {}
    for table in tables:
        pk = list(table.primary_key.columns)
        if len(pk) == 1 and pk[0].type._type_affinity is Integer:  # noqa: SLF001 - the generic type
            out[table.name] = int(conn.execute(select(func.max(pk[0]))).scalar() or 0)
    if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").first():
        for name, seq in conn.exec_driver_sql("SELECT name, seq FROM sqlite_sequence").all():
            if name in out:
                out[name] = max(out[name], int(seq or 0))
    return out

"""Chunk range versions: one version per copied key range instead of a `_dw_versions` row per key.

A backfill chunk read from SQLite at version S holds every key of its span (after, upto] that existed at
S. Instead of a version row per copied key, the copier records the span once in `_dw_ranges` (tbl, span,
seq = S) on Postgres; per-key rows in `_dw_versions` remain only for keys the live log touched (and
their tombstones). The version of a key is then

    max(its own `_dw_versions` seq, the largest seq of the ranges covering it, 0)

and the apply rule is unchanged: an image or delete with version v applies iff v > that version. A
range also covers the keys its chunk did NOT find: an image older than S of a key deleted before S is
stale even before the key's own delete event arrives (the chunk saw it gone).

When the chunk's transaction applies a span it makes the target equal the source at S for every key
whose own version is not newer than S: rows of the chunk are written, rows of the span the chunk does
not hold are deleted (they were deleted by S; their delete events, older than S, would now be stale).
Keys with an own version newer than S (a live change that reached Postgres first) are left alone.

Race-freedom: the range check of a live apply reads `_dw_ranges` in its statement's snapshot, which
cannot see a chunk transaction that commits after the snapshot was taken. So chunk transactions and
live applies of a ranged table exclude each other with a transaction-scoped advisory lock: a live apply
takes it shared, in a statement before its claim (its claim's snapshot then sees every chunk committed
before it), a chunk transaction exclusively, before it reads anything on Postgres (it then sees every
live apply committed before it, and none can start until it commits). Live applies never block each
other; a live apply waits at most for one chunk transaction.

Only tables whose key is one integer column are ranged (the span is an int8range, and SQLite's order of
such keys is Postgres' order); any other table keeps one version row per copied key.
"""

from __future__ import annotations

import zlib

from sqlalchemy import Connection, Integer, Table

from dualwrite.bookkeeping import RANGES

__all__ = [
    "RANGES",
    "LOCK_CLASS",
    "not_covered",
    "exclusive_lock_sql",
    "located",
    "lock_id",
    "ranged_key",
    "shared_lock_sql",
]

LOCK_CLASS = 0x44570002  # first key of the two-int advisory lock ("DW" ranges); leases use ...0001


def located(conn: Connection) -> str | None:
    """The schema of `_dw_ranges` on this Postgres connection (its search_path finds it), or None."""
    row = conn.exec_driver_sql(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%(t)s)",
        {"t": RANGES},
    ).first()
    return None if row is None else str(row[0])


def ranged_key(table: Table) -> str | None:
    """The key column's name if `table` can carry range versions (one integer key column), else None."""
    pk = list(table.primary_key.columns)
    if len(pk) != 1 or pk[0].type._type_affinity is not Integer:  # noqa: SLF001 - the generic type
        return None
    return pk[0].name


def lock_id(state_schema: str, table: str) -> int:
    """Second key of the table's advisory lock (state schemas of other deployments do not share it)."""
    return zlib.crc32(f"{state_schema}\x00{table}".encode()) - 2**31


def literal(value: str) -> str:
    """A SQL string literal, safe in statements that later pass through pyformat (`%` doubled)."""
    return "'" + value.replace("'", "''").replace("%", "%%") + "'"


def not_covered(tbl: str, key_sql: str, seq_sql: str) -> str:
    """SQL: no range of `tbl` covering the key `key_sql` is at version `seq_sql` or newer."""
    return (
        f"NOT EXISTS (SELECT 1 FROM {RANGES} r WHERE r.tbl = {literal(tbl)} "
        f"AND r.span @> CAST({key_sql} AS bigint) AND r.seq >= {seq_sql})"
    )


def shared_lock_sql(state_schema: str, table: str) -> str:
    return f"SELECT pg_advisory_xact_lock_shared({LOCK_CLASS}, {lock_id(state_schema, table)})"


def exclusive_lock_sql(state_schema: str, table: str) -> str:
    return f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, {lock_id(state_schema, table)})"

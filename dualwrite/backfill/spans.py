"""The Copier's path for ranged tables (apply/ranges.py): a chunk applies its whole span at version S.

In the chunk's transaction, holding the table's range lock exclusively (no live apply of the table runs
until it commits; every one committed before is visible): the keys of the span whose own version is
newer than S are left alone; every other row of the span already on Postgres is deleted and the
chunk's rows are COPYed in; the span is recorded in `_dw_ranges` with S (ranges it dominates, contained
and older, are dropped). No version row is written per key. On a fresh target the probes find nothing
and the chunk is one COPY; a re-run over a full target deletes and re-writes its span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table

from dualwrite.apply import ranges
from dualwrite.apply.rule import ApplyResult
from dualwrite.apply.statements import statements
from dualwrite.backfill.copy_format import binary_capable, binary_oids, column_types, converted, converters, copy_rows

Span = tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]
BINARY = True
_SPAN = "int8range(CAST(%(lo)s AS bigint), CAST(%(hi)s AS bigint), '(]')"


def _bound(key: tuple[Any, ...] | None) -> int | None | bool:
    """The int bound of a span end (None: unbounded); False when it is not one integer."""
    if key is None:
        return None
    if len(key) != 1 or type(key[0]) is not int:
        return False
    return key[0]


def load_span(
    conn: Connection, table: Table, columns: Sequence[str], values: Sequence[Sequence[Any]], version: int, span: Span
) -> ApplyResult | None:
    """Apply the chunk as its span's contents at `version`; None if this chunk cannot be ranged (the
    caller then versions its keys one by one)."""
    sql = statements.get(conn, table)
    if not sql.ranged or sql.state_schema is None:
        return None
    lo, hi = _bound(span[0]), _bound(span[1])
    names = [table.c[c].name for c in columns]
    pos = names.index(sql.pk[0])
    if lo is False or hi is False or any(type(row[pos]) is not int for row in values):
        return None
    # The commit need not wait for its WAL flush: a crash loses the chunk with its checkpoint (the same
    # transaction), and any later commit that is flushed flushes this one first (WAL order).
    conn.exec_driver_sql(f"SET LOCAL synchronous_commit = off; {ranges.exclusive_lock_sql(sql.state_schema, sql.name)}")
    prep = conn.dialect.identifier_preparer
    target, key = prep.format_table(table), prep.quote(sql.pk[0])
    where = " AND ".join([f"{key} > %(lo)s"] * (lo is not None) + [f"{key} <= %(hi)s"] * (hi is not None)) or "true"
    bounds = {"t": sql.name, "lo": lo, "hi": hi, "s": version}
    # one round trip: the span's rows already there, the ranges of the span at S or newer (a re-run with
    # nothing new, another worker: their keys stay), and whether any key of the table has its own version
    present, held, own = conn.exec_driver_sql(
        f"SELECT ARRAY(SELECT {key} FROM {target} WHERE {where}), "
        f"ARRAY(SELECT ARRAY[lower(span), upper(span)] FROM {ranges.RANGES} WHERE tbl = %(t)s "
        f"AND seq >= %(s)s AND span && {_SPAN}), EXISTS (SELECT 1 FROM _dw_versions WHERE tbl = %(t)s)",
        bounds,
    ).one()
    newer: set[int] = set()
    if held:
        keys = set(present) | {row[pos] for row in values}
        newer = {k for k in keys if any((a is None or a <= k) and (b is None or k < b) for a, b in held)}
    if own:
        probe = {f"[{k}]" for k in present} | {f"[{row[pos]}]" for row in values}
        found = conn.exec_driver_sql(
            "SELECT pk FROM _dw_versions WHERE tbl = %(t)s AND pk = ANY(%(k)s) AND seq >= %(s)s",
            {"t": sql.name, "k": sorted(probe - {f"[{k}]" for k in newer}), "s": version},
        )
        newer |= {int(r[0][1:-1]) for r in found}
    doomed = [k for k in present if k not in newer]
    if doomed:  # the chunk's rows are written again below; the others were deleted by S
        conn.exec_driver_sql(f"DELETE FROM {target} WHERE {key} = ANY(%(k)s)", {"k": doomed})
    rows = [row for row in values if row[pos] not in newer] if newer else values
    if rows:
        conv = list(converted(rows, converters(conn, table, columns)))
        if BINARY and binary_capable(conn):
            if sql.copy_types is None or sql.copy_types[0] != names:
                sql.copy_types = (list(names), column_types(conn, table, names))
            oids = binary_oids(conv, sql.copy_types[1])
        else:
            oids = None
        copy_rows(conn, f"COPY {target} ({', '.join(map(prep.quote, names))}) FROM STDIN", conv, oids)
    # the span's range, replacing the ranges it dominates (inside it and older), unless one covers it
    conn.exec_driver_sql(
        f"WITH gone AS (DELETE FROM {ranges.RANGES} WHERE tbl = %(t)s AND span <@ {_SPAN} AND seq < %(s)s) "
        f"INSERT INTO {ranges.RANGES} (tbl, span, seq) SELECT CAST(%(t)s AS text), {_SPAN}, %(s)s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {ranges.RANGES} WHERE tbl = %(t)s AND span @> {_SPAN} AND seq >= %(s)s)",
        bounds,
    )
    return ApplyResult(applied=len(rows), stale=len(values) - len(rows))

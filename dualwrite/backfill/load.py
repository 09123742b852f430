"""The Copier's fast path: COPY a chunk straight into the keys Postgres has never seen.

Within the chunk's transaction (version S), inside a savepoint: COPY the chunk's version rows
(tbl, pk, S) into `_dw_versions`, then its rows into the table, in the apply rule's own order (claim, then
write), so a live apply of the same key cannot hold the two locks the other way round. Most chunks of a
history copy meet no live write, so nothing is probed up front. If the COPY fails on a unique index
(23505), the savepoint is rolled back, `_dw_versions` is probed for the chunk's keys, the keys without a
version row are COPYed again (a second savepoint) and the taken ones (a live event, an earlier copy, a
tombstone) go through the merge (merge.py: the apply rule's comparison). A second failure merges all.

Why this is the apply rule: a key whose version row the COPY inserted had none, so "S > the key's
version" holds. A live event's version row for such a key that is committed, or still uncommitted, makes
the COPY wait and then fail on the unique index on (tbl, pk), and the merge then compares against it. A
live apply that comes after the COPY waits on our uncommitted key and then compares against S. A row
already in the table without a version row (loaded outside the apply rule) fails the COPY on the table's
primary key the same way. So an older image never overwrites a newer one, a tombstone is never
resurrected, and equal versions stay no-ops, exactly as on the merge path; only the cost differs.

The merge path (`merge_values`, `copy_apply`): COPY into a TEMP staging table, then ONE statement that
claims the versions (`_dw_versions`: only keys whose version is older than S win) and upserts the winners.
It is right whatever the target already holds; the fast path uses it for the keys live writes reached first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, text

from dualwrite.apply.rule import ApplyResult, apply_snapshot_rows, pk_columns
from dualwrite.backfill.copy_format import (
    binary_capable,
    binary_oids,
    column_types,
    converted,
    converters,
    copy_block,
    copy_rows,
    escape,
)
from dualwrite.errors import sqlstate
from dualwrite.events import key_texts

UNIQUE_VIOLATION = "23505"
# Below this many rows, INSERT ... ON CONFLICT (apply_snapshot_rows) is cheaper than a TEMP staging table.
SMALL_MERGE = 200
BINARY = True  # binary COPY where binary.py finds it exact (False: always text)
Cols = Sequence[str]
Values = Sequence[Sequence[Any]]
Keys = Sequence[str]


def taken_keys(conn: Connection, tbl: str, keys: Sequence[str]) -> set[str]:
    """The keys that already have a version row (a live write, an earlier copy or a tombstone)."""
    if not keys:
        return set()
    rows = conn.exec_driver_sql(
        "SELECT pk FROM _dw_versions WHERE tbl = %(t)s AND pk = ANY(%(k)s::text[])", {"t": tbl, "k": list(keys)}
    )
    return {r[0] for r in rows}


def copy_fresh(conn: Connection, table: Table, columns: Cols, values: Values, keys: Keys, version: int) -> None:
    """COPY version rows, then the rows themselves (raises 23505 if any key is not fresh after all)."""
    prep = conn.dialect.identifier_preparer
    head = f"{escape(table.name)}\t"
    tail = f"\t{int(version)}\n"
    copy_block(conn, "COPY _dw_versions (tbl, pk, seq) FROM STDIN", "".join(head + escape(k) + tail for k in keys))
    names = [table.c[c].name for c in columns]
    rows = list(converted(values, converters(conn, table, columns)))  # one chunk, as values already is
    oids = binary_oids(rows, column_types(conn, table, names)) if BINARY and binary_capable(conn) else None
    copy_rows(conn, f"COPY {prep.format_table(table)} ({', '.join(map(prep.quote, names))}) FROM STDIN", rows, oids)


def merge(conn: Connection, table: Table, columns: Cols, values: Values, keys: Keys, version: int) -> ApplyResult:
    if len(values) > SMALL_MERGE:
        return merge_values(conn, table, columns, values, version, keys)
    names = [table.c[c].name for c in columns]
    return apply_snapshot_rows(conn, table, [dict(zip(names, v, strict=True)) for v in values], version)


def _try_copy(conn: Connection, table: Table, columns: Cols, values: Values, keys: Keys, version: int) -> bool:
    """COPY into fresh keys inside a savepoint; False (rolled back) if some key was not fresh after all."""
    sp = conn.begin_nested()
    try:
        copy_fresh(conn, table, columns, values, keys, version)
    except Exception as exc:
        sp.rollback()
        if sqlstate(exc) != UNIQUE_VIOLATION:
            raise
        return False
    sp.commit()
    return True


def load_chunk(conn: Connection, table: Table, columns: Cols, values: Values, version: int) -> tuple[ApplyResult, bool]:
    """Apply rows (tuples in `columns` order) with `version`; returns (result, some keys took the merge).

    Optimistic: most chunks of a history copy meet no live write, so no probe is paid up front. The
    version rows go first and are small, so a conflict costs little before the rows themselves are sent."""
    if not values:
        return ApplyResult(), False
    keys = key_texts(values, key_positions(table, columns))
    if _try_copy(conn, table, columns, values, keys, version):
        return ApplyResult(applied=len(values)), False
    taken = taken_keys(conn, table.name, keys)
    fresh = [i for i, k in enumerate(keys) if k not in taken]
    if fresh and len(fresh) < len(keys):
        rest = [i for i, k in enumerate(keys) if k in taken]
        fresh_keys = [keys[i] for i in fresh]
        if _try_copy(conn, table, columns, [values[i] for i in fresh], fresh_keys, version):
            result = merge(conn, table, columns, [values[i] for i in rest], [keys[i] for i in rest], version)
            result.applied += len(fresh)
            return result, True
    # Every key was taken, or a live write landed again (or a row sits there without a version row).
    return merge(conn, table, columns, values, keys, version), True


STAGING = "_dw_backfill_stg"


def merge_values(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
    version: int,
    keys: Sequence[str] | None = None,
) -> ApplyResult:
    """Apply rows (tuples in `columns` order) with `version` through the staging merge."""
    if not values:
        return ApplyResult()
    prep = conn.dialect.identifier_preparer
    pk = pk_columns(table)
    names = [table.c[c].name for c in columns]
    if keys is None:
        keys = key_texts(values, key_positions(table, columns))
    target = prep.format_table(table)
    qcols = ", ".join(prep.quote(c) for c in names)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{STAGING}")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {STAGING} ON COMMIT DROP AS SELECT {qcols} FROM {target} WITH NO DATA")
    conn.exec_driver_sql(f"ALTER TABLE {STAGING} ADD COLUMN _dw_pk text")
    conv = converters(conn, table, columns)
    staged = ([*row, k] for row, k in zip(converted(values, conv), keys, strict=True))
    copy_rows(conn, f"COPY {STAGING} ({qcols}, _dw_pk) FROM STDIN", staged)
    update = [c for c in names if c not in pk]
    conflict = ", ".join(prep.quote(c) for c in pk)
    on_conflict = (
        f"DO UPDATE SET {', '.join(f'{prep.quote(c)} = EXCLUDED.{prep.quote(c)}' for c in update)}"
        if update
        else "DO NOTHING"
    )
    scols = ", ".join(f"s.{prep.quote(c)}" for c in names)
    sql = f"""
        WITH won AS (
            INSERT INTO _dw_versions (tbl, pk, seq)
            SELECT :tbl, _dw_pk, :seq FROM {STAGING} ORDER BY _dw_pk
            ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq WHERE _dw_versions.seq < EXCLUDED.seq
            RETURNING pk
        )
        INSERT INTO {target} ({qcols})
        SELECT {scols} FROM {STAGING} s JOIN won ON won.pk = s._dw_pk
        ON CONFLICT ({conflict}) {on_conflict}
    """
    res = conn.execute(text(sql), {"tbl": table.name, "seq": version})
    applied = res.rowcount if res.rowcount is not None and res.rowcount >= 0 else 0
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{STAGING}")
    return ApplyResult(applied=applied, stale=len(values) - applied)


def copy_apply(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], version: int) -> ApplyResult:
    """Dict rows through the staging merge; equivalent to `apply_snapshot_rows` (same `_dw_versions` keys
    via `key_text`, same comparison)."""
    columns = [c.key for c in table.columns]
    return merge_values(conn, table, columns, [tuple(r.get(c) for c in columns) for r in rows], version)


def key_positions(table: Table, columns: Sequence[str]) -> list[int]:
    """Positions of the primary key columns (in key order) within `columns` (column keys)."""
    names = [table.c[c].name for c in columns]
    return [names.index(c) for c in pk_columns(table)]

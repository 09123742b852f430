"""The merge path of a chunk: COPY into a TEMP staging table, then ONE statement that claims the versions
(`_dw_versions`, exactly as `apply.claim_versions`: only keys whose version is older than S win) and
upserts the winners. It is right whatever the target already holds; fastpath.py uses it for the keys
that live writes (or an earlier copy) reached first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, text

from dualwrite.apply.rule import ApplyResult, pk_columns
from dualwrite.backfill.copy_format import converted, converters, copy_rows
from dualwrite.backfill.keys import key_positions, key_texts

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

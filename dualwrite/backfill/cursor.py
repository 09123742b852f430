"""Keyset pagination over a table's primary key (composite and text keys too; never OFFSET).

A chunk is read in ONE SQLite read transaction together with `_dw_meta.last_seq` = S, so the chunk
reflects every change up to S and is applied with version S (DESIGN-NOTES §3).

NULLs: SQLite allows NULL in a non-INTEGER PRIMARY KEY column, and its unique index treats NULLs as
distinct, so two rows may even share a key. `ORDER BY` puts NULLs first; a plain `key > last` is NULL
(never true) when `last` holds a NULL, which used to end the copy early (skipping every later row). The
predicate after a key with a NULL is written out NULL-aware (`IS`, `IS NOT NULL`), and where the source
has a rowid it is the final sort term and tie-breaker, kept in the cursor only when the last key holds
a NULL (the only case in which keys can repeat). Such rows reach Postgres only to be rejected (its key
columns are NOT NULL), but paging past them must neither skip nor repeat the rows after them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    and_,
    func,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.types import NullType

from dualwrite.apply.rule import pk_columns
from dualwrite.bookkeeping import meta
from dualwrite.events import decode_value, key_text


def encode_key(values: list[Any] | tuple[Any, ...]) -> str:
    """The JSON text stored in a checkpoint (the same canonical form as the apply rule's key text)."""
    return key_text(list(values))


def decode_key(text: str | None) -> tuple[Any, ...] | None:
    if text is None:
        return None
    return tuple(decode_value(v) for v in json.loads(text))


@dataclass
class Chunk:
    columns: tuple[str, ...]  # the table's columns, in order
    values: list[Any]  # one tuple-like row per source row, in `columns` order (read-side types applied)
    version: int  # last_seq read in the same SQLite transaction
    last_key: tuple[Any, ...] | None  # cursor after the last row: its key (+ its rowid if the key has a NULL)
    # the key range whose every row (at `version`) the chunk holds: (after, upto], None = unbounded;
    # None when unknown (rows built elsewhere): such a chunk carries a version row per key
    span: tuple[tuple[Any, ...] | None, tuple[Any, ...] | None] | None = None
    _dicts: list[dict[str, Any]] | None = field(default=None, repr=False)
    # rows whose stored value the column's type could not read: position -> (column, raw value, why);
    # such a row stays in `values` (with the raw value) until the copier sets it aside as a reject
    undecodable: dict[int, tuple[str, Any, str]] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (built on first use: the Copier's fast path never needs them)."""
        if self._dicts is None:
            cols = self.columns
            self._dicts = [dict(zip(cols, v, strict=True)) for v in self.values]
        return self._dicts

    @classmethod
    def from_dicts(cls, columns: tuple[str, ...], rows: list[dict[str, Any]], version: int = 0) -> Chunk:
        return cls(columns, [tuple(r.get(c) for c in columns) for r in rows], version, None, None, rows)


# What a column type's result processor raises on a stored value it cannot read: 'not a date' in a Date
# column (ValueError), bad JSON (JSONDecodeError), an unknown Enum value (LookupError), a bad Decimal.
DECODE_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError)


def fetch(conn: Connection, table: Table, query: Select[Any]) -> tuple[tuple[str, ...], list[Any], dict[int, Any]]:
    """(column keys, rows, undecodable) of `query` (a select(table)...), decoded by the column types'
    result processors. The rows come straight from the driver's cursor as tuples and only the columns
    that have a processor are converted (SQLAlchemy's Row objects cost more than SQLite's own fetch). If
    a value cannot be decoded, the chunk is decoded again row by row, so one bad value costs its chunk
    a slower read, not the copy: the row keeps its raw value and is listed in `undecodable`."""
    raw = query.with_only_columns(
        *[type_coerce(c, NullType()).label(c.key) for c in table.columns], maintain_column_froms=True
    )
    result = conn.execute(raw)
    names = tuple(result.keys())
    rows = result.cursor.fetchall()  # plain tuples (NullType: SQLAlchemy would process nothing anyway)
    result.close()
    dialect = conn.dialect
    procs = []
    for i, key in enumerate(names):
        proc = table.c[key].type.dialect_impl(dialect).result_processor(dialect, None)
        if proc is not None:
            procs.append((i, proc))
    if not procs:
        return names, rows, {}
    try:
        return names, list(map(_row_decoder(len(names), procs), rows)), {}
    except DECODE_ERRORS:
        pass
    values: list[Any] = []
    bad: dict[int, Any] = {}
    for n, row in enumerate(rows):
        out = list(row)
        for i, proc in procs:
            if out[i] is None:
                continue
            try:
                out[i] = proc(out[i])
            except DECODE_ERRORS as exc:
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                bad[n] = (names[i], out[i], f"cannot read the stored value as {table.c[names[i]].type}: {why}")
                break
        values.append(tuple(out))
    return names, values, bad


def _row_decoder(width: int, procs: list[tuple[int, Any]]) -> Any:
    """A function of one raw row returning it decoded: one tuple display, the processors inline (a
    per-value loop in Python would cost more than the fetch)."""
    env = {f"p{i}": proc for i, proc in procs}
    parts = [
        f"(None if (v{i} := r[{i}]) is None else p{i}(v{i}))" if f"p{i}" in env else f"r[{i}]" for i in range(width)
    ]
    return eval(f"lambda r: ({', '.join(parts)},)", env)  # noqa: S307 - built from column positions only


def rowid_alias(conn: Connection, name: str) -> str | None:
    """The name under which `name`'s rowid can be selected, or None (a view, WITHOUT ROWID)."""
    # An unqualified name resolves to the temp schema first (migrate reads through TEMP VIEWs).
    found = conn.exec_driver_sql(
        "SELECT type, sql FROM (SELECT 0 AS o, type, sql FROM sqlite_temp_master WHERE name = ?"
        " UNION ALL SELECT 1, type, sql FROM sqlite_master WHERE name = ?) ORDER BY o LIMIT 1",
        (name, name),
    ).first()
    if found is None or found[0] != "table" or "WITHOUT ROWID" in " ".join((found[1] or "").upper().split()):
        return None
    cols = {r[1].lower() for r in conn.exec_driver_sql(f"PRAGMA table_xinfo({_quote(name)})")}
    return next((a for a in ("rowid", "_rowid_", "oid") if a not in cols), None)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def after_clause(cols: list[Any], after: tuple[Any, ...], rowid: Any | None) -> ColumnElement[bool]:
    """Rows strictly after `after` in the order (cols..., rowid), with NULLs first like SQLite."""
    keys = after[: len(cols)]
    if all(v is not None for v in keys):
        # No NULL in the cursor key: keys cannot repeat, and `a > x OR (a = x AND b > y)` (a row-value
        # comparison) is exact: a NULL in a later column sorts first, and its comparison is never true.
        return cols[0] > keys[0] if len(cols) == 1 else tuple_(*cols) > tuple_(*keys)
    terms = []
    prefix: list[ColumnElement[bool]] = []
    for col, v in zip(cols, keys, strict=True):
        terms.append(and_(*prefix, col.is_not(None) if v is None else col > v))
        prefix.append(col.is_(None) if v is None else col == v)
    if rowid is not None and len(after) > len(cols):
        terms.append(and_(*prefix, rowid > after[len(cols)]))
    return or_(*terms)


def read_chunk(engine: Engine, table: Table, after: tuple[Any, ...] | None, limit: int) -> Chunk:
    pk = pk_columns(table)
    cols = [table.c[c] for c in pk]
    with engine.connect() as conn, conn.begin():
        # Read last_seq first: the deferred transaction's snapshot starts here and covers the rows too.
        version = conn.execute(select(meta.c.value).where(meta.c.name == "last_seq")).scalar() or 0
        alias = rowid_alias(conn, table.name)
        rowid = literal_column(alias) if alias else None
        where = true() if after is None else after_clause(cols, after, rowid)
        order = [*cols, *([rowid] if rowid is not None else [])]
        names, values, bad = fetch(conn, table, select(table).where(where).order_by(*order).limit(limit))
        last: tuple[Any, ...] | None = None
        if values:
            idx = [names.index(c) for c in pk]
            last = tuple(values[-1][i] for i in idx)
            if rowid is not None and any(v is None for v in last):
                # This key can repeat: remember which of its rows was last (same snapshot, same order).
                rid = conn.execute(
                    select(rowid).select_from(table).where(where).order_by(*order).offset(len(values) - 1).limit(1)
                ).scalar()
                last = (*last, rid)
    span = (after, last if len(values) >= limit else None)  # a short chunk reached the end of the table
    return Chunk(columns=names, values=values, version=int(version), last_key=last, span=span, undecodable=bad)


def count_rows(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(table)).scalar() or 0
        conn.rollback()
    return int(n)

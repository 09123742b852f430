"""The SQL of the apply rule, built once per (engine, table) and executed without SQLAlchemy's compiler.

Postgres gets ONE statement per table and op, whatever the number of rows: the version claim and the
data write are data-modifying CTEs of the same statement,

    WITH src(c0, .., k, s) AS (VALUES (CAST(%s AS type0), .., CAST(%s AS text), CAST(%s AS bigint)), ..),
         claim AS (INSERT INTO _dw_versions (tbl, pk, seq) SELECT %s, k, s FROM src
                   ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq WHERE _dw_versions.seq < EXCLUDED.seq
                   RETURNING pk),
         w AS (INSERT INTO t (..) SELECT src.c0, .. FROM src JOIN claim ON claim.pk = src.k
               ON CONFLICT (pk) DO UPDATE SET ..)          -- or: DELETE FROM t USING src JOIN claim ..
    SELECT count(*) FROM claim

so the claim still decides (a concurrent writer of the key waits on the version row's unique index and then
sees the new seq), and only the keys it won are written, in the same transaction. Alone it is atomic, so the
inline dual write runs it in autocommit: one round trip and no BEGIN/COMMIT.

The casts name each column's type as the live catalog has it, without type modifiers (`character varying`,
not `varchar(32)`): an explicit cast to varchar(n) would silently truncate, while the INSERT's own
assignment still enforces the column's length. SQLite (in-process, no round trips) gets a claim with
RETURNING and an executemany of the winners.

Values pass through each column type's own bind processor for the dialect (exactly what SQLAlchemy would
apply), then to the driver as plain parameters.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.engine import Dialect

from dualwrite.errors import DualwriteError

# Bind parameters per statement, well under SQLite's 32766 (Postgres: psycopg binds client side).
MAX_PARAMS = 30_000


class SchemaDriftError(DualwriteError):
    """A row image names columns the table does not have: applying it would silently drop data."""


def pk_columns(table: Table) -> tuple[str, ...]:
    cols = tuple(c.name for c in table.primary_key.columns)
    if not cols:
        raise ValueError(f"table {table.name!r} has no primary key; dualwrite needs one to version rows")
    return cols


def _placeholder(dialect: Dialect) -> str:
    if dialect.paramstyle == "qmark":
        return "?"
    if dialect.paramstyle in ("format", "pyformat"):
        return "%s"
    raise NotImplementedError(f"paramstyle {dialect.paramstyle!r} is not supported")


def _fallback_type(table: Table, col: str, dialect: Dialect) -> str:
    """The column's type from the model, without modifiers (used only when the catalog has no entry)."""
    text = dialect.type_compiler_instance.process(table.c[col].type.dialect_impl(dialect))
    text = re.sub(r"\s+COLLATE\s+.*$", "", text, flags=re.I)
    return re.sub(r"\(.*?\)", "", text).strip()


class TableSQL:
    """Everything needed to apply images and deletes to one table on one dialect."""

    def __init__(self, table: Table, dialect: Dialect, pg_types: Mapping[str, str] | None = None) -> None:
        self.table, self.name = table, table.name
        self.cols = [c.name for c in table.columns]
        self.colset = frozenset(self.cols)
        self.pk = pk_columns(table)
        self.pk_pos = [self.cols.index(c) for c in self.pk]
        self.procs: list[Callable[[Any], Any] | None] = [
            c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        ]
        self.pk_procs = [self.procs[i] for i in self.pk_pos]
        prep = dialect.identifier_preparer
        self.postgres = dialect.name == "postgresql"
        ph = self.ph = _placeholder(dialect)

        def q(name: str) -> str:
            quoted = prep.quote(name)
            return quoted.replace("%", "%%") if ph == "%s" else quoted  # a literal % next to pyformat params

        qt = prep.format_table(table)
        self.qtable = qt.replace("%", "%%") if ph == "%s" else qt
        qcols = [q(c) for c in self.cols]
        qpk = [q(c) for c in self.pk]
        nonpk = [qc for c, qc in zip(self.cols, qcols, strict=True) if c not in self.pk]
        if self.postgres:
            types = {c: (pg_types or {}).get(c) or _fallback_type(table, c, dialect) for c in self.cols}
            self._up_row = self._pg_row([types[c] for c in self.cols])
            self._del_row = self._pg_row([types[c] for c in self.pk])
            src_all = ", ".join(f"c{i}" for i in range(len(self.cols)))
            # a table of key columns only still updates something, so the write's effect is uniform
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in (nonpk or qpk[:1]))
            self._up_tail = (
                f"{self._claim()}, w AS (INSERT INTO {qt} ({', '.join(qcols)}) "
                f"SELECT {', '.join('src.' + c for c in src_all.split(', '))} "
                f"FROM src JOIN claim ON claim.pk = src.k ON CONFLICT ({', '.join(qpk)}) DO UPDATE SET {sets}) "
                f"SELECT count(*) FROM claim"
            )
            self._up_head = f"WITH src({src_all}, k, s) AS (VALUES "
            match = " AND ".join(f"d.{c} = src.c{i}" for i, c in enumerate(qpk))
            self._del_tail = (
                f"{self._claim()}, w AS (DELETE FROM {qt} AS d USING src JOIN claim ON claim.pk = src.k "
                f"WHERE {match}) SELECT count(*) FROM claim"
            )
            self._del_head = f"WITH src({', '.join(f'c{i}' for i in range(len(qpk)))}, k, s) AS (VALUES "
        else:
            self.claim_row = "(?, ?, ?)"
            self.claim_head = "INSERT INTO _dw_versions (tbl, pk, seq) VALUES "
            self.claim_tail = (
                " ON CONFLICT (tbl, pk) DO UPDATE SET seq = excluded.seq WHERE _dw_versions.seq < excluded.seq"
                " RETURNING pk"
            )
            action = (
                "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in nonpk) if nonpk else "DO NOTHING"
            )
            self.upsert_sql = (
                f"INSERT INTO {qt} ({', '.join(qcols)}) VALUES ({', '.join('?' for _ in qcols)}) "
                f"ON CONFLICT ({', '.join(qpk)}) {action}"
            )
            self.delete_sql = f"DELETE FROM {qt} WHERE " + " AND ".join(f"{c} = ?" for c in qpk)

    @staticmethod
    def _pg_row(types: list[str]) -> str:
        casts = [f"CAST(%s AS {t})" for t in [*types, "text", "bigint"]]
        return "(" + ", ".join(casts) + ")"

    @staticmethod
    def _claim() -> str:
        return (
            "), claim AS (INSERT INTO _dw_versions (tbl, pk, seq) SELECT %s, k, s FROM src "
            "ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq WHERE _dw_versions.seq < EXCLUDED.seq "
            "RETURNING pk)"
        )

    # -- values ------------------------------------------------------------------------------------
    def check_columns(self, row: Mapping[str, Any]) -> None:
        if len(row) > len(self.cols) or not self.colset.issuperset(row.keys()):
            unknown = sorted(set(row.keys()) - self.colset)
            if unknown:
                raise SchemaDriftError(
                    f"row image for table {self.name!r} has column(s) the table lacks: {', '.join(unknown)}"
                )

    def image_params(self, row: Mapping[str, Any]) -> list[Any]:
        """The bound values of one image, in column order (missing columns are NULL)."""
        self.check_columns(row)
        get = row.get
        return [get(c) if p is None else p(get(c)) for c, p in zip(self.cols, self.procs, strict=True)]

    def key_params(self, key: Mapping[str, Any]) -> list[Any]:
        return [key[c] if p is None else p(key[c]) for c, p in zip(self.pk, self.pk_procs, strict=True)]

    # -- Postgres: one statement per table and op --------------------------------------------------
    def pg_upsert(self, rows: Sequence[tuple[list[Any], str, int]]) -> tuple[str, list[Any]]:
        """rows: (image params, key text, version) with unique keys."""
        return self._pg(self._up_head, self._up_row, self._up_tail, rows)

    def pg_delete(self, rows: Sequence[tuple[list[Any], str, int]]) -> tuple[str, list[Any]]:
        """rows: (key params, key text, version) with unique keys."""
        return self._pg(self._del_head, self._del_row, self._del_tail, rows)

    def _pg(self, head: str, row: str, tail: str, rows: Sequence[tuple[list[Any], str, int]]) -> tuple[str, list]:
        params: list[Any] = []
        for values, ktext, seq in rows:
            params += values
            params.append(ktext)
            params.append(seq)
        params.append(self.name)
        return head + ", ".join([row] * len(rows)) + tail, params

    def width(self, op: str) -> int:
        return (len(self.cols) if op == "upsert" else len(self.pk)) + 2


class _Cache:
    """TableSQL per engine (its dialect, and on Postgres its catalog's column types) and table."""

    def __init__(self) -> None:
        self._by_engine: weakref.WeakKeyDictionary[Engine, dict[int, TableSQL]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, conn: Connection, table: Table) -> TableSQL:
        engine = conn.engine
        per = self._by_engine.get(engine)
        sql = per.get(id(table)) if per is not None else None
        if sql is not None and sql.table is table:
            return sql
        types = _pg_catalog_types(conn, table) if conn.dialect.name == "postgresql" else None
        sql = TableSQL(table, conn.dialect, types)
        if types is not None and not types:
            return sql  # the table is not there (yet): do not remember the model's guesses
        with self._lock:
            self._by_engine.setdefault(engine, {})[id(table)] = sql
        return sql

    def forget(self, conn: Connection, table: Table) -> None:
        """After a failed statement: the table may have changed; read its catalog again next time."""
        with self._lock:
            per = self._by_engine.get(conn.engine)
            if per is not None:
                per.pop(id(table), None)


def _pg_catalog_types(conn: Connection, table: Table) -> dict[str, str]:
    name = conn.dialect.identifier_preparer.format_table(table)
    rows = conn.exec_driver_sql(
        "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (name,),
    ).all()
    return {str(n): str(t) for n, t in rows}


statements = _Cache()

"""The SQL of the apply rule, built once per (engine, table) and executed without SQLAlchemy's compiler.

Postgres gets ONE upsert statement per table, whatever the number of rows (they travel as one jsonb
parameter): the version claim and the data write are data-modifying CTEs of the same statement,

    WITH src AS (SELECT CAST(e->>0 AS type0) AS c0, .., e->>n AS k, CAST(e->>n+1 AS bigint) AS s
                 FROM jsonb_array_elements(CAST(%s AS jsonb)) AS e),
         claim AS (INSERT INTO _dw_versions (tbl, pk, seq) SELECT %s, k, s FROM src
                   ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq WHERE _dw_versions.seq < EXCLUDED.seq
                   RETURNING pk),
         w AS (INSERT INTO t (..) SELECT src.c0, .. FROM src JOIN claim ON claim.pk = src.k
               ON CONFLICT (pk) DO UPDATE SET ..)
    SELECT count(*) FROM claim

so the claim still decides (a concurrent writer of the key waits on the version row's unique index and then
sees the new seq), and only the keys it won are written, in the same transaction. Alone it is atomic, so the
inline dual write runs it in autocommit: one round trip, no BEGIN/COMMIT (and, prepared, no re-planning).
INSERT .. ON CONFLICT finds a row committed after the statement began; a DELETE would not (it scans the
statement's snapshot), so a delete is the claim alone (`SELECT pk FROM claim`), then a DELETE of the won
keys in the same transaction.

The casts name each column's type as the live catalog has it, without type modifiers (`character varying`,
not `varchar(32)`): an explicit cast to varchar(n) would silently truncate, while the INSERT's own
assignment still enforces the column's length. Values with no JSON form fall back to a VALUES list of the
same casts. SQLite (in-process, no round trips) gets a claim with RETURNING and an executemany of the winners.

Values pass through each column type's own bind processor for the dialect (exactly what SQLAlchemy would
apply), then to the driver as plain parameters. Values of timezone-aware columns (the model's, or a
timestamptz in the Postgres catalog) are made aware UTC first: a naive one is UTC by definition
(types.as_utc), so the result never depends on a session's TimeZone, and SQLite's DateTime, which stores
the wall time without its offset, gets the UTC wall time.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, Table, UniqueConstraint
from sqlalchemy.engine import Dialect

from dualwrite.apply import ranges
from dualwrite.errors import SchemaDriftError
from dualwrite.types import as_utc, timezone_aware

# Bind parameters per statement, well under SQLite's 32766 (Postgres: psycopg binds client side).
MAX_PARAMS = 30_000


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

    def __init__(
        self, table: Table, dialect: Dialect, pg_types: Mapping[str, str] | None = None, state_schema: str | None = None
    ) -> None:
        """state_schema: on Postgres, where `_dw_ranges` is (None: it is not there, no range versions)."""
        self.table, self.name = table, table.name
        self.cols = [c.name for c in table.columns]
        self.colset = frozenset(self.cols)
        self.pk = pk_columns(table)
        self.pk_pos = [self.cols.index(c) for c in self.pk]
        self.procs: list[Callable[[Any], Any] | None] = [
            c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        ]
        self._active = [(i, p) for i, p in enumerate(self.procs) if p is not None]
        self._pk_active = [(j, self.procs[i]) for j, i in enumerate(self.pk_pos) if self.procs[i] is not None]
        prep = dialect.identifier_preparer
        self.postgres = dialect.name == "postgresql"
        aware = {
            i
            for i, c in enumerate(table.columns)
            if timezone_aware(c.type) or (pg_types or {}).get(c.name) == "timestamp with time zone"
        }
        self._aware = sorted(aware)
        self._pk_aware = [j for j, i in enumerate(self.pk_pos) if i in aware]
        ph = self.ph = _placeholder(dialect)

        def q(name: str) -> str:
            quoted = prep.quote(name)
            return quoted.replace("%", "%%") if ph == "%s" else quoted  # a literal % next to pyformat params

        qt = self.regclass = prep.format_table(table)
        qt = self.qtable = qt.replace("%", "%%") if ph == "%s" else qt
        qcols = [q(c) for c in self.cols]
        qpk = [q(c) for c in self.pk]
        self._q = dict(zip(self.cols, qcols, strict=True))
        nonpk = [qc for c, qc in zip(self.cols, qcols, strict=True) if c not in self.pk]
        self.version_sql = f"SELECT seq FROM _dw_versions WHERE tbl = {ph} AND pk = {ph}"
        # range versions (ranges.py): Postgres, one integer key column, `_dw_ranges` present
        rkey = ranges.ranged_key(table) if self.postgres and state_schema is not None else None
        self.ranged = rkey is not None
        self.state_schema = state_schema
        self.copy_types: tuple[list[str], Any] | None = None  # the backfill's binary COPY types (spans.py)
        self.lock_sql = ranges.shared_lock_sql(state_schema, self.name) if rkey and state_schema else None
        if rkey is not None:  # the greater of the key's own version and the ranges covering it
            self.version_sql = (
                "SELECT greatest(coalesce((SELECT v.seq FROM _dw_versions v WHERE v.tbl = q.t AND v.pk = q.p), 0), "
                f"coalesce((SELECT max(r.seq) FROM {ranges.RANGES} r WHERE r.tbl = q.t "
                "AND r.span @> CAST(btrim(q.p, '[]') AS bigint)), 0)) "
                "FROM (SELECT CAST(%s AS text) AS t, CAST(%s AS text) AS p) q"
            )
        pkset = set(table.primary_key.columns)
        self.has_uniques = any(
            isinstance(c, UniqueConstraint) and set(c.columns) != pkset for c in table.constraints
        ) or any(ix.unique for ix in table.indexes)
        self._types: dict[str, str] = {}
        if self.postgres:
            types = self._types = {c: (pg_types or {}).get(c) or _fallback_type(table, c, dialect) for c in self.cols}
            # a table of key columns only still updates something, so the write's effect is uniform
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in (nonpk or qpk[:1]))
            src_all = ", ".join(f"src.c{i}" for i in range(len(self.cols)))
            pk_at = self.pk_pos[0]
            self._up = _PgOp(
                [types[c] for c in self.cols],
                f", w AS (INSERT INTO {qt} ({', '.join(qcols)}) SELECT {src_all} FROM src JOIN claim ON "
                f"claim.pk = src.k ON CONFLICT ({', '.join(qpk)}) DO UPDATE SET {sets}) SELECT count(*) FROM claim",
                covered=ranges.not_covered(self.name, f"src.c{pk_at}", "src.s") if self.ranged else None,
            )
            # A delete is two statements: a DELETE is a snapshot scan, so inside the claim's statement it would
            # miss a row that a concurrent apply (an older seq, whose version row the claim waited for)
            # committed after that statement began. Run after the claim, it sees it.
            key_types = [types[c] for c in self.pk]
            self._del_claim = _PgOp(
                key_types,
                " SELECT pk FROM claim",
                covered=ranges.not_covered(self.name, "src.c0", "src.s") if self.ranged else None,
            )
            match = " AND ".join(f"d.{c} = src.c{i}" for i, c in enumerate(qpk))
            self._del_rows = _PgOp(key_types, f" DELETE FROM {qt} AS d USING src WHERE {match}", claim=False)
        else:
            self.claim_row = "(?, ?, ?)"
            self.claim_head = "INSERT INTO _dw_versions (tbl, pk, seq) VALUES "
            self.claim_tail = (
                " ON CONFLICT (tbl, pk) DO UPDATE SET seq = excluded.seq WHERE _dw_versions.seq < excluded.seq"
                " RETURNING pk"
            )
            action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in nonpk) if nonpk else "DO NOTHING"
            self.upsert_sql = (
                f"INSERT INTO {qt} ({', '.join(qcols)}) VALUES ({', '.join('?' for _ in qcols)}) "
                f"ON CONFLICT ({', '.join(qpk)}) {action}"
            )
            self.delete_sql = f"DELETE FROM {qt} WHERE " + " AND ".join(f"{c} = ?" for c in qpk)

    def collider_sql(self, cols: Sequence[str]) -> str:
        """The keys of the rows other than one key (bound after the values) holding these values in
        `cols` (see uniques.py)."""

        def eq(c: str) -> str:
            return f"{self._q[c]} = " + (f"CAST({self.ph} AS {self._types[c]})" if self.postgres else self.ph)

        own = " AND ".join(eq(c) for c in self.pk)
        keys = ", ".join(self._q[c] for c in self.pk)
        return f"SELECT {keys} FROM {self.qtable} WHERE {' AND '.join(eq(c) for c in cols)} AND NOT ({own})"

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
        if len(row) > len(self.cols) or not self.colset.issuperset(row.keys()):
            self.check_columns(row)
        get = row.get
        return self._bind([get(c) for c in self.cols], self._active, self._aware)

    def key_params(self, key: Mapping[str, Any]) -> list[Any]:
        return self._bind([key[c] for c in self.pk], self._pk_active, self._pk_aware)

    def _bind(self, values: list[Any], active: list[tuple[int, Callable[[Any], Any]]], aware: list[int]) -> list[Any]:
        for i in aware:
            values[i] = as_utc(values[i])
        for i, proc in active:
            values[i] = proc(values[i])
        if self.postgres:
            # floats travel as repr() text: exact, and unlike a JSON number it keeps -0.0, NaN and the
            # infinities (float8 input reads 'nan', 'inf', '-inf'; numeric reads the digits exactly)
            for i, v in enumerate(values):
                if v.__class__ is float:
                    values[i] = repr(v)
        return values

    # -- Postgres: one statement per table and op --------------------------------------------------
    def pg_upsert(self, rows: Sequence[tuple[list[Any], str, int]]) -> tuple[str, tuple[Any, ...], Any]:
        """rows: (image params, key text, version) with unique keys."""
        return self._up.statement(rows, self.name)

    def pg_delete_claim(self, rows: Sequence[tuple[list[Any], str, int]]) -> tuple[str, tuple[Any, ...], Any]:
        """rows: (key params, key text, version) with unique keys; the statement returns the won keys."""
        return self._del_claim.statement(rows, self.name)

    def pg_delete_rows(self, rows: Sequence[tuple[list[Any], str, int]]) -> tuple[str, tuple[Any, ...], Any]:
        """Delete the rows of keys whose claim was won (in the claim's transaction)."""
        return self._del_rows.statement(rows, None)

    def width(self, op: str) -> int:
        return (len(self.cols) if op == "upsert" else len(self.pk)) + 2


_CLAIM = (
    ", claim AS (INSERT INTO _dw_versions (tbl, pk, seq) SELECT {tbl}, k, s FROM src{where} "
    "ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq WHERE _dw_versions.seq < EXCLUDED.seq RETURNING pk)"
)


def _json_default(value: Any) -> Any:
    """Text forms Postgres' input functions read back exactly (the casts in the statement do the rest)."""
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    adapted = getattr(value, "adapted", None)  # psycopg2.Binary, from LargeBinary's bind processor
    if isinstance(adapted, bytes | bytearray | memoryview):
        return "\\x" + bytes(adapted).hex()
    raise TypeError(f"no JSON form for {type(value).__name__}")


# allow_nan=False: NaN/Infinity are not JSON (floats arrive as text anyway; see TableSQL._bind).
_encode = json.JSONEncoder(default=_json_default, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
try:  # an optional accelerator (five times faster on the replay's batches); same JSON values
    import orjson

    def _encode(doc: Any) -> str:  # type: ignore[no-redef]
        return orjson.dumps(doc, default=_json_default).decode()

except ImportError:  # pragma: no cover - the standard library encoder above
    pass


class _PgOp:
    """One op's statement: the rows arrive as ONE json parameter (parsing a VALUES list of thousands of
    casts costs the server more than the write), or as a VALUES list when a value has no JSON form.
    The json form's text never changes, so on psycopg2 (no automatic preparing) it is PREPAREd once per
    connection: parsing and planning the CTE cost the server about as much as the write itself."""

    def __init__(self, types: list[str], tail: str, *, claim: bool = True, covered: str | None = None) -> None:
        """covered: SQL that holds when no range version covering a src row is at its s or newer (ranges.py)."""
        n = len(types)
        where = f" WHERE {covered}" if covered else ""
        cols = ", ".join(f"CAST(e->>{i} AS {t}) AS c{i}" for i, t in enumerate(types))

        def build(doc: str, tbl: str) -> str:
            return (
                f"WITH src AS (SELECT {cols}, e->>{n} AS k, CAST(e->>{n + 1} AS bigint) AS s "
                f"FROM jsonb_array_elements(CAST({doc} AS jsonb)) AS e)"
                + (_CLAIM.format(tbl=tbl, where=where) if claim else "")
                + tail
            )

        self.json_sql = build("%s", "%s")
        body = build("$1", "$2")
        self.name = "dw_" + hashlib.sha1(body.encode()).hexdigest()[:24]
        self.prepare = f"({'jsonb, text' if claim else 'jsonb'}) AS {body}"  # after PREPARE <name>
        self.execute = f"({'%s, %s' if claim else '%s'})"  # after EXECUTE <name>
        # arrays would need their own JSON handling: those tables always use VALUES
        self.json_ok = not any(t.endswith("]") for t in types)
        self.values_head = f"WITH src({', '.join(f'c{i}' for i in range(n))}, k, s) AS (VALUES "
        self.values_row = "(" + ", ".join(f"CAST(%s AS {t})" for t in [*types, "text", "bigint"]) + ")"
        self.values_tail = ")" + (_CLAIM.format(tbl="%s", where=where) if claim else "") + tail

    def statement(
        self, rows: Sequence[tuple[list[Any], str, int]], table: str | None
    ) -> tuple[str, tuple[Any, ...], _PgOp | None]:
        """The SQL, its parameters, and the op if that SQL is its (preparable) json form; `table` names
        the version rows' tbl (None: no claim)."""
        tbl = () if table is None else (table,)
        if self.json_ok:
            try:
                return self.json_sql, (_encode([[*values, k, s] for values, k, s in rows]), *tbl), self
            except (TypeError, ValueError):
                pass
        params: list[Any] = []
        for values, k, s in rows:
            params += values
            params.append(k)
            params.append(s)
        params += tbl
        sql = self.values_head + ", ".join([self.values_row] * len(rows)) + self.values_tail
        return sql, tuple(params), None


class _Cache:
    """TableSQL per engine (its dialect, and on Postgres its catalog's column types) and table."""

    def __init__(self) -> None:
        self._by_engine: weakref.WeakKeyDictionary[Engine, dict[int, TableSQL]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, conn: Connection | Engine, table: Table) -> TableSQL:
        """On a miss, an Engine lends a connection for the catalog read."""
        engine = conn.engine
        per = self._by_engine.get(engine)
        sql = per.get(id(table)) if per is not None else None
        if sql is not None and sql.table is table:
            return sql
        types, state = None, None
        if conn.dialect.name == "postgresql":
            if isinstance(conn, Engine):
                with conn.connect() as c:
                    types, state = _pg_catalog_types(c, table), ranges.located(c)
                    c.rollback()
            else:
                types, state = _pg_catalog_types(conn, table), ranges.located(conn)
        sql = TableSQL(table, conn.dialect, types, state)
        if types is not None and not types:
            return sql  # the table is not there (yet): do not remember the model's guesses
        with self._lock:
            self._by_engine.setdefault(engine, {})[id(table)] = sql
        return sql

    def forget(self, engine: Engine, table: Table) -> None:
        """After a failed statement: the table may have changed; read its catalog again next time."""
        with self._lock:
            per = self._by_engine.get(engine)
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

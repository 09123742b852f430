"""A fast path for the commonest captured write on SQLite, a plain `insert(table).values({...})` (or
`insert(table)` with one dict of parameters): the statement SQLAlchemy compiles for its shape (with the
adapter's RETURNING) is kept, and each later insert of the same shape runs it straight on the driver's
connection with SQLAlchemy's own bind and result processors. That skips the cache-key walk and the
execution context Core builds per execute (two thirds of a write-behind write's Python, profiled), not any
behaviour: anything the shape check cannot vouch for (another clause, a SQL expression or named bindparam
as a value, a Python-side column default, statement or connection options, execute/cursor event
listeners, echo) takes Core's path, as before."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Insert, Table
from sqlalchemy.engine import Row
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import BindParameter

# What a plain insert(table).values(...) holds; any other generative method adds an attribute.
_PLAIN = frozenset(("table", "_values"))
_BARE = frozenset(("table",))  # insert(table), its values given as parameters
_MAX_SHAPES = 512  # shapes kept (per dialect, table and columns); when full the cache starts afresh


class _Shape:
    """One compiled statement: its SQL, per bound column its name and bind processor, per returned column
    its result processor, and the metadata the returned rows are made with."""

    __slots__ = ("dialect", "table", "sql", "binds", "results", "meta")

    def __init__(
        self, dialect: Any, table: Table, sql: str, binds: list[tuple[str, Any]], results: list[Any], meta: Any
    ):
        # held, so that the ids keying the shape cannot be reused by another dialect or table while it is kept
        self.dialect, self.table = dialect, table
        self.sql, self.binds, self.results, self.meta = sql, binds, results, meta


# (id(dialect), id(table), values given as parameters, column names in their order) -> shape; None: not eligible
_shapes: dict[tuple[int, int, bool, tuple[str, ...]], _Shape | None] = {}


def _eligible_conn(conn: Connection) -> bool:
    d = conn.dispatch
    return (
        conn.dialect.name == "sqlite"
        and conn.dialect.driver == "pysqlite"  # the stdlib sqlite3 driver, whose errors are caught below
        and not conn._execution_options  # noqa: SLF001 - options (schema_translate_map...) change compiling
        and not conn._echo  # noqa: SLF001 - echo logs each statement in Core's path
        and not conn.dialect._has_events  # noqa: SLF001 - do_execute/handle_error listeners
        and not (d.before_execute or d.after_execute or d.before_cursor_execute or d.after_cursor_execute)
    )


def _compile(
    conn: Connection, returning: Insert, table: Table, names: tuple[str, ...], by_params: bool
) -> _Shape | None:
    if any(n not in table.c for n in names):
        return None  # Core raises its error for a column the table does not have
    kw = {"column_keys": list(names)} if by_params else {}
    compiled: Any = returning.compile(dialect=conn.dialect, **kw)
    positions = compiled.positiontup or []
    if (
        compiled.insert_prefetch  # a Python-side default is computed per execution by Core
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or sorted(positions) != sorted(names)
        or len(compiled._result_columns) != len(table.columns)  # noqa: SLF001
    ):
        return None
    procs = compiled._bind_processors  # noqa: SLF001
    binds = [(name, procs.get(name)) for name in positions]
    cols = compiled._result_columns  # noqa: SLF001
    results = [c[3]._cached_result_processor(conn.dialect, None) for c in cols]
    meta = SimpleResultMetaData([c[0] for c in cols], extra=[c[2] for c in cols])  # the columns, to look up by
    return _Shape(conn.dialect, table, compiled.string, binds, results, meta)


def _given(stmt: Insert, params: Any) -> dict[str, Any] | None:
    """The column values of `insert(table).values({...})` or of `insert(table)` with one parameter dict;
    None for any other statement."""
    attrs = stmt.__dict__.keys()
    if params is None:
        if attrs != _PLAIN or not stmt._values:  # noqa: SLF001
            return None
        given = {}
        for k, v in stmt._values.items():  # noqa: SLF001
            # an anonymous literal of values(): typed by its column when compiled (NullType until then)
            if type(v) is not BindParameter or not v._is_crud or v.callable is not None or not v.type._isnull:  # noqa: SLF001
                return None
            given[str(k)] = v.value
        return given
    # str keys: a column's key (a Table's names are quoted_name, a str subclass); a Column as key goes to Core
    if attrs != _BARE or type(params) is not dict or not params or not all(isinstance(k, str) for k in params):
        return None
    return params


def run(
    conn: Connection, stmt: Insert, table: Table, params: Any, returning: Callable[[Insert], Insert]
) -> list[Row[Any]] | None:
    """The rows `returning(stmt)` (the statement with the adapter's RETURNING) returns, run on the fast
    path; None when the statement or connection is not one it vouches for (the caller then runs it
    through Core)."""
    if type(stmt) is not Insert or stmt.table is not table:
        return None
    given = _given(stmt, params)
    if given is None or not _eligible_conn(conn):
        return None
    names = tuple(given)
    key = (id(conn.dialect), id(table), params is not None, names)
    shape = _shapes.get(key, False)
    if shape is False:
        try:
            shape = _compile(conn, returning(stmt), table, names, params is not None)
        except (AttributeError, KeyError, TypeError, IndexError):
            # the compiled object's private parts changed shape (another SQLAlchemy release): Core's path
            shape = None
        if len(_shapes) >= _MAX_SHAPES:  # engines or tables made over and over: start afresh
            _shapes.clear()
        _shapes[key] = shape
    if shape is None:
        return None
    args = tuple(given[n] if p is None else p(given[n]) for n, p in shape.binds)
    try:
        data = conn.connection.dbapi_connection.execute(shape.sql, args).fetchall()  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise DBAPIError.instance(shape.sql, args, exc, sqlite3.Error) from exc
    procs = shape.results
    rows = [tuple(v if p is None else p(v) for p, v in zip(procs, r, strict=True)) for r in data]
    return IteratorResult(shape.meta, iter(rows)).all()

"""COPY FROM STDIN through whichever driver the engine uses (psycopg 3: its C row writer; psycopg2: text
format built here), plus the per-column conversions a chunk needs before it goes on the wire."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from io import StringIO
from typing import Any

import psycopg
import psycopg2.extras
from sqlalchemy import Boolean, Connection, LargeBinary, Table

_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
Converters = list[tuple[int, Callable[[Any], Any], type | None]]


def copy_text(value: Any) -> str:
    """One value in COPY's text format (NUL bytes pass through: Postgres refuses them, the row is rejected)."""
    kind = type(value)
    if kind is str:
        return value.translate(_ESCAPES)
    if kind is int:
        return str(value)
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int | Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, psycopg2.extras.Json):
        value = value.dumps(value.adapted)
    elif not isinstance(value, str):
        adapted = getattr(value, "adapted", None)  # psycopg2 wrappers (Binary, ...)
        return copy_text(adapted) if adapted is not None else str(value).translate(_ESCAPES)
    return value.translate(_ESCAPES)


def escape(text: str) -> str:
    """A str for COPY's text format (cheap when there is nothing to escape, the usual case)."""
    return text.translate(_ESCAPES) if ("\\" in text or "\n" in text or "\r" in text or "\t" in text) else text


def converters(conn: Connection, table: Table, columns: Sequence[str]) -> Converters:
    """(position, bind processor) for the columns whose type converts values on the way to Postgres."""
    dialect = conn.dialect
    out: Converters = []
    for i, key in enumerate(columns):
        impl = table.c[key].type.dialect_impl(dialect)
        proc = impl.bind_processor(dialect)
        if proc is not None:
            # Boolean's processor only checks and returns a bool unchanged where booleans are native:
            # skipped per chunk when the column holds nothing else (it cost ~20% of the fast path).
            # LargeBinary's only wraps bytes for the driver, which COPY does not need.
            same = bool if isinstance(impl, Boolean) and dialect.supports_native_boolean else None
            same = bytes if isinstance(impl, LargeBinary) else same
            out.append((i, proc, same))
    return out


def converted(values: Sequence[Sequence[Any]], conv: Converters) -> Iterable[Sequence[Any]]:
    """Rows with the bind processors applied (lazily: the chunk is never copied whole)."""
    needed = [
        (i, proc)
        for i, proc, same in conv
        if same is None or any(type(v) is not same for v in (row[i] for row in values) if v is not None)
    ]
    if not needed:
        return values
    return _apply(values, needed)


def _apply(values: Iterable[Sequence[Any]], needed: list[tuple[int, Callable[[Any], Any]]]) -> Iterator[list[Any]]:
    for row in values:
        out = list(row)
        for i, proc in needed:
            v = out[i]
            if v is not None:
                out[i] = proc(v)
        yield out


def binary_capable(conn: Connection) -> bool:
    """Whether rows can go in COPY's binary format on this connection (psycopg 3's encoder)."""
    return isinstance(conn.connection.driver_connection, psycopg.Connection)


def copy_rows(conn: Connection, sql: str, rows: Iterable[Sequence[Any]], oids: list[int] | None = None) -> None:
    """COPY rows (sequences of Python values) in with `sql` (a COPY ... FROM STDIN); in binary format
    with these column type oids if given (binary.py decides when that is safe; psycopg 3 only)."""
    raw = conn.connection.driver_connection
    if isinstance(raw, psycopg.Connection):
        with raw.cursor() as cur, cur.copy(sql + (" (FORMAT BINARY)" if oids else "")) as cp:
            if oids:
                cp.set_types(oids)
            for row in rows:
                cp.write_row(row)
        return
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.copy_expert(sql, StringIO(text_block(list(rows))))


def text_block(rows: Sequence[Sequence[Any]]) -> str:
    """Rows in COPY's text format, encoded column by column: one encoder per column chosen from the
    column's value types, run by map() (no per-value type dispatch in Python for the common columns)."""
    if not rows:
        return ""
    encoded = [list(map(_encoder(col), col)) for col in zip(*rows, strict=True)]
    return "\n".join(map("\t".join, zip(*encoded, strict=True))) + "\n"


_BOOL = {True: "t", False: "f"}.__getitem__


def _float(v: float) -> str:
    return repr(v) if math.isfinite(v) else copy_text(v)


def _encoder(col: tuple[Any, ...]) -> Callable[[Any], str]:
    kinds = set(map(type, col))
    if len(kinds) == 1:
        kind = kinds.pop()
        if kind is str:
            return escape
        if kind is int:
            return int.__repr__
        if kind is float:
            return _float
        if kind is bool:
            return _BOOL
        if kind is datetime or kind is date:
            return kind.isoformat
    return copy_text


def copy_block(conn: Connection, sql: str, data: str) -> None:
    """COPY text already in COPY's text format."""
    raw = conn.connection.driver_connection
    if isinstance(raw, psycopg.Connection):
        with raw.cursor() as cur, cur.copy(sql) as cp:
            cp.write(data)
        return
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.copy_expert(sql, StringIO(data))

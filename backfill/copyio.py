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
from sqlalchemy import Boolean, Connection, Table

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
            same = bool if isinstance(impl, Boolean) and dialect.supports_native_boolean else None
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


def copy_rows(conn: Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """COPY rows (sequences of Python values) in with `sql` (a COPY ... FROM STDIN)."""
    raw = conn.connection.driver_connection
    if isinstance(raw, psycopg.Connection):
        with raw.cursor() as cur, cur.copy(sql) as cp:
            for row in rows:
                cp.write_row(row)
        return
    buf = StringIO()
    for row in rows:
        buf.write("\t".join(copy_text(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.copy_expert(sql, buf)


def copy_block(conn: Connection, sql: str, data: str) -> None:
    """COPY text already in COPY's text format."""
    raw = conn.connection.driver_connection
    if isinstance(raw, psycopg.Connection):
        with raw.cursor() as cur, cur.copy(sql) as cp:
            cp.write(data)
        return
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.copy_expert(sql, StringIO(data))

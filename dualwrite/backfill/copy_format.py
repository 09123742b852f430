"""COPY FROM STDIN through whichever driver the engine uses (psycopg 3: its C row writer; psycopg2: text
format built here), plus the per-column conversions a chunk needs before it goes on the wire.

Binary COPY for a chunk when every value's Python type maps exactly onto its column's Postgres type.

psycopg 3 encodes a row ~2.5x faster in COPY's binary format than in text (no number or date
formatting, and the server does not parse them either). But with `set_types` psycopg picks each dumper by
the column's type, not by the value's, which is only the same thing when the value is what the text
path would have sent for that type: a `str` for a jsonb column would become a JSON string instead of
being parsed, an `int` in a bool column would be accepted instead of refused, a naive datetime in a
timestamptz column would be read as UTC instead of the session's time zone. So a chunk goes binary only
if, column by column, every non-NULL value has one of the exact types listed for that column's type
below; anything else (numeric, arrays, enums, domains, a stray value) sends the whole chunk as text.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from io import StringIO
from operator import attrgetter, itemgetter
from typing import Any

import psycopg
import psycopg2.extras
from psycopg.types.json import Json, Jsonb
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
    return text.translate(_ESCAPES) if needs_escape(text) else text


def needs_escape(text: str) -> bool:
    """Whether `text` holds a character COPY's text format escapes (four C-level searches)."""
    return "\\" in text or "\n" in text or "\r" in text or "\t" in text


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
    encoded = [_encoded(col) for col in zip(*rows, strict=True)]
    return "\n".join(map("\t".join, zip(*encoded, strict=True))) + "\n"


def _encoded(col: tuple[Any, ...]) -> Sequence[str]:
    """One column in COPY's text format, by one encoder chosen from its value types. A str column with
    nothing to escape anywhere (one join, one needs_escape) is its own encoding; a float column whose sum
    is finite holds no NaN or infinity."""
    kinds = set(map(type, col))
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind is str:
        return list(map(escape, col)) if needs_escape("".join(col)) else col
    if kind is float:
        return list(map(float.__repr__ if math.isfinite(sum(col)) else _float, col))
    return list(map(_ENCODERS.get(kind, copy_text), col))  # type: ignore[arg-type]


_BOOL = {True: "t", False: "f"}.__getitem__


def _float(v: float) -> str:
    return repr(v) if math.isfinite(v) else copy_text(v)


# the encoder of a column whose values are all of one of these types (any other column: copy_text)
_ENCODERS: dict[type, Callable[[Any], str]] = {
    int: int.__repr__,
    bool: _BOOL,
    datetime: datetime.isoformat,
    date: date.isoformat,
}


def copy_block(conn: Connection, sql: str, data: str) -> None:
    """COPY text already in COPY's text format."""
    raw = conn.connection.driver_connection
    if isinstance(raw, psycopg.Connection):
        with raw.cursor() as cur, cur.copy(sql) as cp:
            cp.write(data)
        return
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.copy_expert(sql, StringIO(data))


# Postgres type name -> the exact Python types whose binary dump means what the text path would send.
SAFE: dict[str, tuple[type, ...]] = {
    "int2": (int,),
    "int4": (int,),
    "int8": (int,),
    "float4": (float, int),
    "float8": (float, int),
    "bool": (bool,),
    "text": (str,),
    "varchar": (str,),
    "bpchar": (str,),
    "date": (date,),
    "timestamp": (datetime,),  # naive values only (checked below)
    "timestamptz": (datetime,),  # aware values only
    "bytea": (bytes,),
    "uuid": (uuid.UUID,),
    "json": (Json, Jsonb),  # psycopg's wrappers, as SQLAlchemy's JSON bind processor makes them
    "jsonb": (Json, Jsonb),
}
_tzinfo = attrgetter("tzinfo")


def column_types(conn: Connection, table: Table, names: Sequence[str]) -> list[tuple[int, str]] | None:
    """(oid, type name) of each named column of the target, or None if one is missing."""
    target = conn.dialect.identifier_preparer.format_table(table)
    rows = conn.exec_driver_sql(
        "SELECT a.attname, t.oid, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = to_regclass(%(t)s) AND a.attnum > 0 AND NOT a.attisdropped",
        {"t": target},
    ).all()
    by_name = {r[0]: (int(r[1]), str(r[2])) for r in rows}
    if any(n not in by_name for n in names):
        return None
    return [by_name[n] for n in names]


def binary_oids(rows: Sequence[Sequence[Any]], types: list[tuple[int, str]] | None) -> list[int] | None:
    """The column type oids for `set_types` if the chunk may go binary, else None (text).
    (map/itemgetter keep the per-value loop in C: this scan runs over every value of the chunk.)"""
    if not types:
        return None
    for i, (_oid, name) in enumerate(types):
        allowed = SAFE.get(name)
        if allowed is None:
            return None
        kinds = set(map(type, map(itemgetter(i), rows)))
        kinds.discard(type(None))
        if not kinds.issubset(allowed):
            return None
        if kinds and name == "timestamp" and set(map(_tzinfo, filter(None, map(itemgetter(i), rows)))) != {None}:
            return None
        if kinds and name == "timestamptz" and None in map(datetime.utcoffset, filter(None, map(itemgetter(i), rows))):
            return None
    return [oid for oid, _name in types]

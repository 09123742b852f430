"""Casting rules from SQLite's declared types (and affinities) to PostgreSQL, with value conversion: what
`dualwrite migrate` does to each column, and how `Tables.reflect` reads a SQLite file (SQLiteCast), so
every command sees a reflected SQLite column the way migrate cast it.

Rules (first match on the upper-cased declared type; `--cast table.column=type` overrides):

| SQLite declared type                          | Postgres            | values                                   |
|-----------------------------------------------|---------------------|------------------------------------------|
| INTEGER PRIMARY KEY [AUTOINCREMENT]           | bigint identity     | sequence reset past max (and sqlite_sequence) |
| BOOL, BOOLEAN                                 | boolean             | 0/1 (and 'true'/'false'/'t'/'f'/'yes'/'no')   |
| DATETIME, TIMESTAMP*                          | timestamptz         | ISO text (naive = UTC) or Unix epoch seconds  |
| DATE                                          | date                | 'YYYY-MM-DD' text or Unix epoch seconds       |
| TIME                                          | time                | 'HH:MM[:SS[.f]]'                              |
| NUMERIC(p,s), DECIMAL(p,s)                    | numeric(p,s)        | out of range → reject                         |
| NUMERIC, DECIMAL, other (NUMERIC affinity)    | numeric             |                                               |
| BLOB                                          | bytea               | text is stored as its UTF-8 bytes             |
| JSON, JSONB                                   | jsonb               | must parse (no NaN/Infinity) else reject      |
| UUID                                          | uuid                | must parse                                    |
| [N]VARCHAR(n), [N]CHAR(n), CHARACTER(n)       | varchar(n)          | longer → reject                               |
| TEXT, CLOB, *CHAR* (no length)                | text                |                                               |
| no declared type                              | text                | numbers → their text; BLOB → UTF-8 or reject  |
| TINYINT, SMALLINT, INT2                       | smallint            | out of range → reject                         |
| other *INT*                                   | bigint              | text or non-integral REAL → reject            |
| REAL, FLOA*, DOUB*                            | double precision    | text → reject                                 |

Every text value is checked: invalid UTF-8 and NUL bytes are rejected (Postgres refuses both).
A rejected value sends the whole row to the reject file with (table, key, column, value, reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    VARCHAR,
    BigInteger,
    Boolean,
    Date,
    Double,
    Numeric,
    SmallInteger,
    Text,
    Time,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, TIMESTAMP
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType, TypeEngine

from dualwrite.convert import (
    INT16,
    INT64,
    Dirty,
    _bool,
    _bytes,
    _date,
    _float,
    _int,
    _json,
    _numeric,
    _text_fast,
    _time,
    _timestamptz,
    _uuid,
    _varchar,
    bools_column,
    floats_column,
    ints_column,
    text_column,
    timestamptz_column,
)


@dataclass(frozen=True)
class Cast:
    """Target type of one column: its name (as written for `--cast`), SQLAlchemy type and converter."""

    name: str
    sa_type: TypeEngine[Any]
    convert: Callable[[Any], Any]
    kind: str  # normalisation family for verification: int bool float dec text bytes json ts date time uuid
    # a chunk's whole column at once, or None where a value needs converting (convert.py's *_column)
    column: Callable[[Sequence[Any]], Sequence[Any] | None] | None = None

    def __call__(self, value: Any) -> Any:
        if value is None:
            return None
        return self.convert(value)


# -- constructors ---------------------------------------------------------------------------------
def bigint() -> Cast:
    return Cast("bigint", BigInteger(), _int(*INT64, "bigint"), "int", ints_column(*INT64))


def smallint() -> Cast:
    return Cast("smallint", SmallInteger(), _int(*INT16, "smallint"), "int", ints_column(*INT16))


def integer() -> Cast:
    from sqlalchemy import Integer

    return Cast("integer", Integer(), _int(-(2**31), 2**31 - 1, "integer"), "int", ints_column(-(2**31), 2**31 - 1))


def text() -> Cast:
    return Cast("text", Text(), _text_fast, "text", text_column())


def varchar(n: int) -> Cast:
    return Cast(f"varchar({n})", VARCHAR(n), _varchar(n), "text", text_column(n))


def numeric(p: int | None = None, s: int | None = None) -> Cast:
    name = "numeric" if p is None else f"numeric({p},{s or 0})"
    sa = Numeric(p, s or 0, asdecimal=True) if p is not None else Numeric(asdecimal=True)
    return Cast(name, sa, _numeric(p, s), "dec")


SIMPLE: dict[str, Callable[[], Cast]] = {
    "bigint": bigint,
    "int8": bigint,
    "integer": integer,
    "int": integer,
    "int4": integer,
    "smallint": smallint,
    "int2": smallint,
    "text": text,
    "boolean": lambda: Cast("boolean", Boolean(create_constraint=False), _bool, "bool", bools_column),
    "bool": lambda: SIMPLE["boolean"](),
    "timestamptz": lambda: Cast("timestamptz", TIMESTAMP(timezone=True), _timestamptz, "ts", timestamptz_column),
    "timestamp": lambda: SIMPLE["timestamptz"](),
    "date": lambda: Cast("date", Date(), _date, "date"),
    "time": lambda: Cast("time", Time(), _time, "time"),
    "double precision": lambda: Cast("double precision", Double(), _float, "float", floats_column),
    "float8": lambda: SIMPLE["double precision"](),
    "bytea": lambda: Cast("bytea", BYTEA(), _bytes, "bytes"),
    "jsonb": lambda: Cast("jsonb", JSONB(), _json, "json"),
    "uuid": lambda: Cast("uuid", Uuid(as_uuid=False), _uuid, "uuid"),
    "numeric": numeric,
}
# SQLite declared type names that stand for one Postgres type (cast_for's table, before the affinity rules).
_DECLARED = {
    "BOOL": "boolean",
    "BOOLEAN": "boolean",
    "DATETIME": "timestamptz",
    "DATE": "date",
    "TIME": "time",
    "JSON": "jsonb",
    "JSONB": "jsonb",
    "UUID": "uuid",
    "BLOB": "bytea",
}
_PARAMS = re.compile(r"^\s*([A-Za-z_ ]+?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


def parse_cast(spec: str) -> Cast:
    """A `--cast` target: text, bigint, integer, smallint, boolean, timestamptz, date, time, numeric[(p,s)],
    double precision, bytea, jsonb, uuid, varchar(n)."""
    m = _PARAMS.match(spec)
    if not m:
        raise ValueError(f"cannot parse type {spec!r}")
    name, a, b = m.group(1).strip().lower(), m.group(2), m.group(3)
    if name in ("varchar", "character varying") and a:
        return varchar(int(a))
    if name in ("numeric", "decimal"):
        return numeric(int(a), int(b or 0)) if a else numeric()
    if name in SIMPLE and not a:
        return SIMPLE[name]()
    raise ValueError(f"unsupported type {spec!r} (one of: {', '.join(sorted(SIMPLE))}, varchar(n), numeric(p,s))")


def cast_for(declared: str | None) -> Cast:
    """The cast rule for a SQLite declared type (see the table in this module's docstring)."""
    decl = (declared or "").strip().upper()
    if not decl:
        return text()
    m = _PARAMS.match(decl)
    base = m.group(1).strip() if m else decl
    a = int(m.group(2)) if m and m.group(2) else None
    b = int(m.group(3)) if m and m.group(3) else None
    if base.startswith("TIMESTAMP"):  # TIMESTAMP, TIMESTAMPTZ, TIMESTAMP WITH TIME ZONE, ...
        return SIMPLE["timestamptz"]()
    if base in _DECLARED:
        return SIMPLE[_DECLARED[base]]()
    if base in ("NUMERIC", "DECIMAL"):
        return numeric(a, b) if a else numeric()
    if "INT" in base:  # SQLite affinity rule 1
        return smallint() if base in ("TINYINT", "SMALLINT", "INT2") else bigint()
    if any(k in base for k in ("CHAR", "CLOB", "TEXT")):  # rule 2
        if a and ("VARCHAR" in base or "CHAR" in base) and "TEXT" not in base:
            return varchar(a)
        return text()
    if "BLOB" in base:  # rule 3
        return SIMPLE["bytea"]()
    if any(k in base for k in ("REAL", "FLOA", "DOUB")):  # rule 4
        return SIMPLE["double precision"]()
    return numeric(a, b) if a else numeric()  # rule 5: NUMERIC affinity


# -- reflected columns, read as the casts read them -------------------------------------------------
class SQLiteCast(TypeDecorator[Any]):
    """The type of a column reflected from a SQLite file (`Tables.reflect`): SQLite's stored values are read
    the way `dualwrite migrate` casts them (this module's rules, `cast.convert`), and on Postgres the column
    is the cast's type. So the same Table reads what migrate wrote to Postgres and the SQLite value it came
    from as equal Python values (verify), and creates migrate's schema on Postgres (`init --create-tables`).

    A SQLite value the cast refuses (migrate rejected its row) is returned as stored. Values written to
    SQLite (replicated images) are stored in SQLite's usual forms: UTC timestamps as
    'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's), dates and times in ISO form, JSON as text, booleans as 1/0.
    """

    impl = NullType
    cache_ok = True

    def __init__(self, cast: Cast) -> None:
        super().__init__()
        self.cast = cast
        self.impl = cast.sa_type  # DDL, type affinity and comparisons are the Postgres type's

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(NullType())  # the stored value, untouched: cast.convert reads it
        return dialect.type_descriptor(self.cast.sa_type)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        kind = self.cast.kind
        if kind == "ts" and isinstance(value, datetime):
            utc = value.astimezone(UTC) if value.tzinfo is not None else value
            return utc.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        if kind in ("date", "time") and isinstance(value, date | time):
            return value.isoformat()
        if kind == "json":
            return json.dumps(value, ensure_ascii=False)
        if kind == "bool":
            return int(bool(value))
        if kind == "dec" and isinstance(value, Decimal):
            return str(value)  # SQLite's NUMERIC affinity stores it as an integer or a real, as it would
        if kind == "bytes":
            return bytes(value)
        return str(value) if kind == "uuid" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            try:
                value = self.cast.convert(value)
            except Dirty:
                return value  # as stored: migrate rejected this row, so it differs from Postgres' (absent) one
            return json.loads(value) if self.cast.kind == "json" else value
        if isinstance(value, memoryview):
            return bytes(value)
        return value

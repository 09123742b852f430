"""Casting rules from SQLite's declared types (and affinities) to PostgreSQL, with value conversion.

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
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
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
    Uuid,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, TIMESTAMP
from sqlalchemy.types import TypeEngine

INT64 = (-(2**63), 2**63 - 1)
INT16 = (-(2**15), 2**15 - 1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Dirty(ValueError):
    """A value that cannot be stored in the target type; the message is the reject reason."""


@dataclass(frozen=True)
class Cast:
    """Target type of one column: its name (as written for `--cast`), SQLAlchemy type and converter."""

    name: str
    sa_type: TypeEngine[Any]
    convert: Callable[[Any], Any]
    kind: str  # normalisation family for verification: int bool float dec text bytes json ts date time uuid

    def __call__(self, value: Any) -> Any:
        if value is None:
            return None
        return self.convert(value)


# -- helpers -------------------------------------------------------------------------------------
def check_text(value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Dirty("invalid UTF-8") from None
    if "\x00" in value:
        raise Dirty("NUL byte in text")
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, bytes):
        try:
            return check_text(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise Dirty("invalid UTF-8 (BLOB in a text column)") from None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _text_fast(value: Any) -> str:
    if type(value) is str and value.isascii():
        if "\x00" in value:
            raise Dirty("NUL byte in text")
        return value
    return _as_text(value)


def _typename(value: Any) -> str:
    return {str: "text", bytes: "BLOB", int: "integer", float: "real"}.get(type(value), type(value).__name__)


def _int(lo: int, hi: int, label: str) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if type(value) is int and lo <= value <= hi:
            return value
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise Dirty(f"non-integral number {value!r} in {label} column")
            value = int(value)
        if isinstance(value, str) and _INT_TEXT.match(value):  # only after a --cast from a text column
            value = int(value)
        if not isinstance(value, int):
            if isinstance(value, str):
                check_text(value)
            raise Dirty(f"{_typename(value)} in {label} column")
        if not lo <= value <= hi:
            raise Dirty(f"{value} out of range for {label}")
        return value

    return conv


_INT_TEXT = re.compile(r"^\s*[+-]?\d{1,19}\s*$")
_NUM_TEXT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}


def _bool(value: Any) -> bool:
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = check_text(value).strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise Dirty(f"{value!r} is not a boolean (0/1)")


def _epoch(value: float) -> datetime:
    if not math.isfinite(value):
        raise Dirty(f"{value!r} is not a timestamp")
    try:
        return EPOCH + timedelta(seconds=value)
    except OverflowError:
        raise Dirty(f"epoch {value!r} out of range for timestamptz") from None


def _timestamptz(value: Any) -> datetime:
    if type(value) is str:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if isinstance(value, bool):
        raise Dirty("boolean in timestamp column")
    if isinstance(value, int | float):
        return _epoch(float(value))
    if isinstance(value, str):
        s = check_text(value).strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise Dirty(f"{value!r} is not a timestamp") from None
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    raise Dirty(f"{_typename(value)} in timestamp column")


def _date(value: Any) -> date:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _epoch(float(value)).date()
    if isinstance(value, str):
        s = check_text(value).strip()
        try:
            return date.fromisoformat(s[:10]) if len(s) > 10 and s[10] in "T " else date.fromisoformat(s)
        except ValueError:
            raise Dirty(f"{value!r} is not a date") from None
    raise Dirty(f"{_typename(value)} in date column")


def _time(value: Any) -> time:
    if isinstance(value, str):
        try:
            return time.fromisoformat(check_text(value).strip())
        except ValueError:
            raise Dirty(f"{value!r} is not a time") from None
    raise Dirty(f"{_typename(value)} in time column")


def _float(value: Any) -> float:
    if isinstance(value, str) and _NUM_TEXT.match(value):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise Dirty(f"{value} out of range for double precision") from None
    if isinstance(value, str):
        check_text(value)
    raise Dirty(f"{_typename(value)} in numeric column")


def _numeric(precision: int | None, scale: int | None) -> Callable[[Any], Decimal]:
    def conv(value: Any) -> Decimal:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                if precision is not None:
                    raise Dirty(f"{value!r} out of range for numeric({precision},{scale or 0})")
                return Decimal(repr(value).replace("inf", "Infinity").replace("nan", "NaN"))
            d = Decimal(repr(value))
        elif isinstance(value, int):
            d = Decimal(value)
        elif isinstance(value, str) and _NUM_TEXT.match(value):
            d = Decimal(value.strip())
        else:
            if isinstance(value, str):
                check_text(value)
            raise Dirty(f"{_typename(value)} in numeric column")
        if precision is not None:
            s = scale or 0
            try:
                d = d.quantize(Decimal(1).scaleb(-s))
            except InvalidOperation:
                raise Dirty(f"{value!r} out of range for numeric({precision},{s})") from None
            if abs(d) >= Decimal(10) ** (precision - s):
                raise Dirty(f"{value!r} out of range for numeric({precision},{s})")
        return d

    return conv


def _reject_constant(name: str) -> Any:
    raise Dirty(f"invalid JSON ({name} is not JSON)")


def _json(value: Any) -> str:
    if isinstance(value, bytes):
        value = _as_text(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise Dirty(f"invalid JSON ({value!r})")
        return json.dumps(value)
    if not isinstance(value, str):
        raise Dirty(f"{_typename(value)} in JSON column")
    check_text(value)
    try:
        parsed = json.loads(value, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise Dirty(f"invalid JSON ({exc.msg} at {exc.pos})") from None
    if "\\u0000" in value:
        raise Dirty("invalid JSON (\\u0000 is not allowed in jsonb)")
    del parsed
    return value


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")  # the original bytes
    return str(value).encode()


def _uuid(value: Any) -> str:
    try:
        if isinstance(value, bytes) and len(value) == 16:
            return str(uuid.UUID(bytes=value))
        return str(uuid.UUID(_as_text(value)))
    except ValueError:
        raise Dirty(f"{value!r} is not a UUID") from None


def _varchar(n: int) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        s = _as_text(value)
        if len(s) > n:
            raise Dirty(f"value of {len(s)} characters too long for varchar({n})")
        return s

    return conv


# -- constructors ---------------------------------------------------------------------------------
def bigint() -> Cast:
    return Cast("bigint", BigInteger(), _int(*INT64, "bigint"), "int")


def smallint() -> Cast:
    return Cast("smallint", SmallInteger(), _int(*INT16, "smallint"), "int")


def integer() -> Cast:
    from sqlalchemy import Integer

    return Cast("integer", Integer(), _int(-(2**31), 2**31 - 1, "integer"), "int")


def text() -> Cast:
    return Cast("text", Text(), _text_fast, "text")


def varchar(n: int) -> Cast:
    return Cast(f"varchar({n})", VARCHAR(n), _varchar(n), "text")


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
    "boolean": lambda: Cast("boolean", Boolean(create_constraint=False), _bool, "bool"),
    "bool": lambda: SIMPLE["boolean"](),
    "timestamptz": lambda: Cast("timestamptz", TIMESTAMP(timezone=True), _timestamptz, "ts"),
    "timestamp": lambda: Cast("timestamptz", TIMESTAMP(timezone=True), _timestamptz, "ts"),
    "date": lambda: Cast("date", Date(), _date, "date"),
    "time": lambda: Cast("time", Time(), _time, "time"),
    "double precision": lambda: Cast("double precision", Double(), _float, "float"),
    "float8": lambda: SIMPLE["double precision"](),
    "bytea": lambda: Cast("bytea", BYTEA(), _bytes, "bytes"),
    "jsonb": lambda: Cast("jsonb", JSONB(), _json, "json"),
    "uuid": lambda: Cast("uuid", Uuid(as_uuid=False), _uuid, "uuid"),
    "numeric": numeric,
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
    if base in ("BOOL", "BOOLEAN"):
        return SIMPLE["boolean"]()
    if base in ("DATETIME", "TIMESTAMP", "TIMESTAMPTZ") or base.startswith("TIMESTAMP"):
        return SIMPLE["timestamptz"]()
    if base == "DATE":
        return SIMPLE["date"]()
    if base == "TIME":
        return SIMPLE["time"]()
    if base in ("JSON", "JSONB"):
        return SIMPLE["jsonb"]()
    if base == "UUID":
        return SIMPLE["uuid"]()
    if base == "BLOB":
        return SIMPLE["bytea"]()
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


# -- verification normal form ---------------------------------------------------------------------
def _same(value: Any) -> Any:
    return value


def normalizer(kind: str) -> Callable[[Any], Any]:
    """normal() for one kind, without the dispatch (None must be handled by the caller)."""
    if kind in ("int", "text"):
        return _same
    return lambda v: normal(kind, v)


def normal(kind: str, value: Any) -> Any:
    """A value as both sides must agree on it (the converted source value, or the one Postgres returns)."""
    if value is None:
        return None
    if kind == "ts":
        return value.astimezone(UTC).isoformat()
    if kind in ("date", "time"):
        return value.isoformat()
    if kind == "dec":
        d = Decimal(value)
        return "0" if not d else str(d.normalize())
    if kind == "float":
        return repr(float(value))
    if kind == "bytes":
        return bytes(value).hex()
    if kind == "json":
        if isinstance(value, str | bytes):
            value = json.loads(value)
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if kind == "uuid":
        return str(value)
    if kind == "bool":
        return bool(value)
    return value

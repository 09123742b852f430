"""Value converters of the casting rules (`dualwrite migrate`, reflected columns): one function per Postgres
target type, turning a SQLite value
into the value Postgres stores, or raising `Dirty` with the reject reason (dualwrite.casts picks the converter
for each column). Every text value is checked: invalid UTF-8 and NUL bytes are rejected (Postgres refuses
both).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from operator import attrgetter, methodcaller
from typing import Any

INT64 = (-(2**63), 2**63 - 1)
INT16 = (-(2**15), 2**15 - 1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Dirty(ValueError):
    """A value that cannot be stored in the target type; the message is the reject reason."""


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


# Built once: json.loads with keyword arguments builds a new JSONDecoder per call (4% of a migrate profile).
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


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
        parsed = _JSON_DECODER.decode(value)
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


# -- whole columns ---------------------------------------------------------------------------------
# A chunk's column converted at once where every value is already what its converter would return (checked
# by C-level scans: types, range, one join for the text checks), else None: the caller converts value by value.
Column = Sequence[Any]


def _present(col: Column) -> Column:
    return [v for v in col if v is not None] if None in col else col


def ints_column(lo: int, hi: int) -> Callable[[Column], Column | None]:
    def conv(col: Column) -> Column | None:
        vals = _present(col)
        if not vals or (set(map(type, vals)) == {int} and lo <= min(vals) and max(vals) <= hi):
            return col
        return None

    return conv


def text_column(limit: int | None = None) -> Callable[[Column], Column | None]:
    def conv(col: Column) -> Column | None:
        vals = _present(col)
        if not vals:
            return col
        if set(map(type, vals)) != {str}:
            return None
        joined = "".join(vals)
        if "\x00" in joined or (limit is not None and max(map(len, vals)) > limit):
            return None
        if not joined.isascii():
            try:
                joined.encode("utf-8")
            except UnicodeEncodeError:
                return None
        return col

    return conv


def floats_column(col: Column) -> Column | None:
    vals = _present(col)
    return col if not vals or set(map(type, vals)) == {float} else None


def bools_column(col: Column) -> Column | None:
    if None in col or set(map(type, col)) != {int} or not set(col) <= {0, 1}:
        return None
    return list(map(bool, col))


_AS_UTC = methodcaller("replace", tzinfo=UTC)


def timestamptz_column(col: Column) -> Column | None:
    if None in col or set(map(type, col)) != {str}:
        return None
    try:
        parsed = list(map(datetime.fromisoformat, col))
    except ValueError:
        return None
    if set(map(attrgetter("tzinfo"), parsed)) != {None}:
        return None
    # The same naive times parsed again with a UTC offset: ~7x cheaper than a replace(tzinfo=) per value
    # (its keyword call); the plain parse above still decides what is a timestamp.
    try:
        aware = list(map(datetime.fromisoformat, [v + "+00:00" for v in col]))
    except ValueError:
        aware = None
    if aware is None or set(map(attrgetter("tzinfo"), aware)) != {UTC}:  # a bare date drops the offset
        return list(map(_AS_UTC, parsed))
    return aware

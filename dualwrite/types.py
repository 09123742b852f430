"""Portable column types: the same values, order and comparisons on SQLite and Postgres.

- `UTCDateTime`: timezone-aware, stored as UTC on both backends (TIMESTAMPTZ on Postgres, fixed-width
  ISO-8601 text with +00:00 on SQLite, which sorts chronologically and keeps microseconds); naive values
  are refused (ambiguous).
- `JSONType`: JSON, JSONB on Postgres.
- `OrderedString(n)`: text whose ORDER BY, range comparison and uniqueness go by code point on both
  backends (SQLite's BINARY collation; `COLLATE "C"` on Postgres, whatever the database's locale).
- `ExactDecimal(p, s)`: NUMERIC(p, s) on Postgres; on SQLite an integer count of 10**-s units, so values,
  comparisons and SUM stay exact there too (SQLite's NUMERIC affinity stores floats). Both sides refuse
  the same values: more than `s` decimal places (never silently rounded), more than p-s integer digits,
  NaN/infinity. Anything that reads SQLite rows must read them through these Table types, not raw SQL.

An application may use them in its own models; dualwrite's bookkeeping tables use `UTCDateTime`.

The one time-zone rule, everywhere (capture, events, apply, COPY, verify): a naive value of a
timezone-aware column (`DateTime(timezone=True)`, `UTCDateTime`, a Postgres timestamptz) is UTC by
definition. SQLite keeps no offset (SQLAlchemy's DateTime stores the wall time and hands it back naive),
so `as_utc` makes such values aware at capture and before every apply, and dualwrite's Postgres sessions
run with TimeZone UTC (engines.SESSION_TIMEZONE) for the values nobody converted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Numeric, String, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: Any) -> Any:
    """A value of a timezone-aware column under the one rule: a naive datetime is UTC, an aware one is
    converted to UTC (the same instant); anything else (None, a string) is returned as it is."""
    if value.__class__ is not datetime and not isinstance(value, datetime):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def timezone_aware(type_: Any) -> bool:
    """Whether a column type holds timezone-aware datetimes (DateTime(timezone=True), UTCDateTime, or a
    TypeDecorator / variant built on one)."""
    seen = 0
    while isinstance(type_, TypeDecorator) and seen < 8:
        type_ = type_.impl_instance
        seen += 1
    return isinstance(type_, DateTime) and bool(type_.timezone)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetime, stored as UTC; naive datetimes are refused (ambiguous)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            # Fixed-width text sorts chronologically and keeps microseconds.
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} is ambiguous; give a timezone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


def OrderedString(length: int) -> TypeEngine[str]:  # noqa: N802 - reads like a type in column definitions
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class ExactDecimal(TypeDecorator[Decimal]):
    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int, scale: int) -> None:
        if not 0 <= scale < precision <= 18:
            # 18 digits keep every SQLite value inside a signed 64-bit integer.
            raise ValueError(f"ExactDecimal({precision}, {scale}): need 0 <= scale < precision <= 18")
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._unit = Decimal(1).scaleb(-scale)
        self._limit = Decimal(10) ** (precision - scale)

    def coerce(self, value: Any) -> Decimal:
        """The exact Decimal stored for `value`, or ValueError naming the problem."""
        if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
            raise ValueError(f"expected a decimal number, got {type(value).__name__}")
        try:
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        exact = number.quantize(self._unit)
        if exact != number:
            raise ValueError(f"{value!r} has more than {self.scale} decimal places")
        if abs(exact) >= self._limit:
            raise ValueError(f"{value!r} has more than {self.precision - self.scale} integer digits")
        return exact

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = self.coerce(value)
        if dialect.name == "sqlite":
            return int(exact.scaleb(self.scale))
        return exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite" and isinstance(value, int):
            return Decimal(value).scaleb(-self.scale)
        return Decimal(value).quantize(self._unit)

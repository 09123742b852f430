"""Cross-engine normalization: the differences that are not differences.

SQLite and Postgres return the same data in different shapes: unordered result sets in different orders,
JSON objects with keys in another order, datetimes in other time zones, 0.1 + 0.2 vs 0.3, Decimal vs
float, CHAR padding. `normalize` maps a value to a canonical, hashable, JSON-dumpable form in which those
all compare equal; `canonical_text` / `row_hash` build on it (verify uses them for its checksums).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Normalizer:
    """How values are canonicalized. `float_digits` significant digits are kept (the float tolerance)."""

    float_digits: int = 12
    strip_trailing_spaces: bool = True
    parse_json_text: bool = True  # a JSON document stored as text equals the parsed document
    naive_datetimes_are_utc: bool = True

    def number(self, value: float | Decimal | int) -> Any:
        if isinstance(value, int):
            return value
        if isinstance(value, Decimal):
            if not value.is_finite():
                return {"$f": str(value).lower()}
            if value == value.to_integral_value():
                return int(value)
            value = float(value)
        if not math.isfinite(value):
            return {"$f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if value == int(value) and abs(value) < 2**53:
            return int(value)
        return float(f"{value:.{self.float_digits}g}")

    def __call__(self, value: Any) -> Any:
        return self.normalize(value)

    def normalize(self, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float | Decimal):
            return self.number(value)
        if isinstance(value, str):
            if self.parse_json_text and value[:1] in ("{", "["):
                try:
                    return self.normalize(json.loads(value))
                except ValueError:
                    pass
            return value.rstrip(" ") if self.strip_trailing_spaces else value
        if isinstance(value, datetime):
            if value.tzinfo is None:
                if not self.naive_datetimes_are_utc:
                    return {"$ndt": value.isoformat()}
                value = value.replace(tzinfo=UTC)
            return {"$dt": value.astimezone(UTC).isoformat()}
        if isinstance(value, date):
            return {"$d": value.isoformat()}
        if isinstance(value, time):
            return {"$t": value.isoformat()}
        if isinstance(value, timedelta):
            return {"$td": value.total_seconds()}
        if isinstance(value, bytes | bytearray | memoryview):
            return {"$hex": bytes(value).hex()}
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, Mapping) or hasattr(value, "_mapping"):
            items = value._mapping if hasattr(value, "_mapping") and not isinstance(value, Mapping) else value
            return {str(k): self.normalize(v) for k, v in sorted(items.items(), key=lambda kv: str(kv[0]))}
        if isinstance(value, list | tuple | set | frozenset):
            out = [self.normalize(v) for v in value]
            if isinstance(value, set | frozenset):
                out.sort(key=sort_key)
            return out
        if hasattr(value, "__iter__"):
            return [self.normalize(v) for v in value]
        return {"$repr": repr(value)}

    def result(self, value: Any, *, ordered: bool = True) -> Any:
        """A whole query result; with ordered=False a top-level sequence is compared as a multiset."""
        norm = self.normalize(value)
        if not ordered and isinstance(norm, list):
            norm = sorted(norm, key=sort_key)
        return norm


DEFAULT = Normalizer()


def sort_key(value: Any) -> str:
    return canonical_text(value)


def canonical_text(value: Any) -> str:
    """Deterministic JSON of an already normalized value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def normalize(value: Any, *, ordered: bool = True, normalizer: Normalizer = DEFAULT) -> Any:
    return normalizer.result(value, ordered=ordered)


def row_hash(row: Mapping[str, Any], normalizer: Normalizer = DEFAULT) -> int:
    """64-bit hash of a row's normalized values (column order independent)."""
    text = canonical_text(normalizer.normalize(dict(row)))
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def values_hash(values: Any, normalizer: Normalizer = DEFAULT) -> int:
    """64-bit hash of a sequence of column values in a fixed column order (verify's row checksum).

    Fast path for the common scalar types; everything else goes through `normalizer.normalize`.
    Both sides must pass the columns in the same order (the Table's)."""
    norm, number = normalizer.normalize, normalizer.number
    strip, parse = normalizer.strip_trailing_spaces, normalizer.parse_json_text
    out = []
    for v in values:
        t = type(v)
        if v is None or t is int or t is bool:
            out.append(v)
        elif t is str and not (parse and v[:1] in ("{", "[")):
            out.append(v.rstrip(" ") if strip else v)
        elif t is float:
            out.append(number(v))
        else:
            out.append(norm(v))
    text = repr(out)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


# Types whose Python equality implies equal normalized forms (time is not: equal aware times with other
# offsets have other isoformats; sets and unknown types go the long way).
_EXACT = frozenset({type(None), bool, int, float, str, bytes, Decimal, datetime, date, timedelta, uuid.UUID})


def identical(a: Any, b: Any) -> bool:
    """True only when `a` and `b` certainly normalize to equal values: same types all the way down, same
    keys (mapping keys and row column names), equal leaves. A cheap first check before normalizing both
    sides; False means "normalize and compare", never "different"."""
    t = type(a)
    if t is not type(b):
        return False
    if t in _EXACT:
        try:
            return bool(a == b)
        except Exception:  # e.g. a signalling Decimal NaN
            return False
    if t is list or t is tuple:
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if t is dict:
        return a.keys() == b.keys() and all(identical(v, b[k]) for k, v in a.items())
    fields = getattr(a, "_fields", None)  # a SQLAlchemy Row (a named tuple of its columns)
    if fields is not None and isinstance(a, tuple):
        return fields == b._fields and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    return False


def diff_text(a: Any, b: Any, *, a_name: str = "control", b_name: str = "candidate", limit: int = 4000) -> str:
    """A readable unified diff of two normalized values."""
    import difflib

    la = json.dumps(a, sort_keys=True, indent=1, ensure_ascii=False, default=repr).splitlines()
    lb = json.dumps(b, sort_keys=True, indent=1, ensure_ascii=False, default=repr).splitlines()
    out = "\n".join(difflib.unified_diff(la, lb, a_name, b_name, lineterm="", n=2))
    return out if len(out) <= limit else out[:limit] + "\n... (truncated)"

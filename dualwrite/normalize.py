"""Cross-engine normalization: the differences that are not differences.

SQLite and Postgres return the same data in different shapes: unordered result sets in different orders,
JSON objects with keys in another order, datetimes in other time zones, 0.1 + 0.2 vs 0.3, Decimal vs
float, CHAR padding. `normalize` maps a value to a canonical, hashable, JSON-dumpable form in which those
all compare equal; `canonical_text` / `row_hash` build on it (verify uses them for its checksums).

Its tagged forms ({"$d": ...}) look like the event codec's (events.encode_value) but are another thing:
the codec keeps a value exactly (naive stays naive, bytes as base64) in a wire format that must never change;
this form erases what the engines disagree on (UTC, hex) and may change with verify. They stay apart.
"""

from __future__ import annotations

import enum
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
    # Decimals compared exactly (verify: both sides read through the same Numeric column type) instead of
    # as floats of `float_digits` digits (shadow reads: SQLite's SUM of a Numeric column is a float).
    exact_decimals: bool = False

    def number(self, value: float | Decimal | int) -> Any:
        if isinstance(value, int):
            return value
        if isinstance(value, Decimal):
            if not value.is_finite():
                return {"$f": str(value).lower()}
            if value == value.to_integral_value():
                return int(value)
            if self.exact_decimals:
                return {"$dec": str(value.normalize())}
            value = float(value)
        if not math.isfinite(value):
            return {"$f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if value == int(value) and abs(value) < 2**53:
            return int(value)
        return float(f"{value:.{self.float_digits}g}")

    def __call__(self, value: Any) -> Any:
        return self.normalize(value)

    # shaped like events.encode_value: a comparison form, not the stream's wire format (bytes as $hex, timedelta)
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
        if isinstance(value, enum.Enum):
            return {"$enum": f"{type(value).__name__}.{value.name}"}
        state = _instance_state(value)
        if state is not None:
            return self._mapped(state, ())
        if hasattr(value, "__iter__"):
            return [self.normalize(v) for v in value]
        return {"$repr": repr(value)}

    def _mapped(self, state: Any, path: tuple[Any, ...]) -> dict[str, Any]:
        """An ORM object as its class, key and loaded mapped values (columns, and loaded relationships
        with their objects in turn; one met again on the way down is named by its key alone). What is not
        loaded is left out: reading it would query a database, and both sides' fn load the same."""
        mapper = state.mapper
        ident = state.identity if state.identity is not None else mapper.primary_key_from_instance(state.obj())
        head = {ORM_CLASS: mapper.class_.__name__, ORM_KEY: [self.normalize(v) for v in ident]}
        marker = (mapper.class_, tuple(ident))
        if marker in path:
            return {**head, "$ref": True}
        loaded = state.dict
        out = dict(head)
        for attr in mapper.column_attrs:
            if attr.key in loaded:
                out[attr.key] = self.normalize(loaded[attr.key])
        for rel in mapper.relationships:
            if rel.key not in loaded:
                continue
            value, inner = loaded[rel.key], (*path, marker)
            if value is None:
                out[rel.key] = None
            elif rel.uselist:
                items = [self._mapped(_instance_state(v), inner) for v in value]
                if not rel.order_by:  # no defined order: the databases may return any
                    items.sort(key=sort_key)
                out[rel.key] = items
            else:
                out[rel.key] = self._mapped(_instance_state(value), inner)
        return out

    def result(self, value: Any, *, ordered: bool = True) -> Any:
        """A whole query result; with ordered=False a top-level sequence is compared as a multiset."""
        norm = self.normalize(value)
        if not ordered and isinstance(norm, list):
            norm = sorted(norm, key=sort_key)
        return norm


DEFAULT = Normalizer()
VERIFY = Normalizer(exact_decimals=True)  # verify's: 1234567890123.4567 and ...4568 differ
# The normalized form of an ORM object carries these two keys (its class name and primary key).
ORM_CLASS, ORM_KEY = "$orm", "$key"


def _instance_state(value: Any) -> Any:
    """The ORM InstanceState of a mapped object, else None (SQLAlchemy imported only when one shows up)."""
    if getattr(value, "_sa_instance_state", None) is None:
        return None
    from sqlalchemy import inspect

    return inspect(value, raiseerr=False)


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


def row_differences(
    a: Any, b: Any, *, a_name: str = "control", b_name: str = "candidate", limit: int = 20
) -> list[str]:
    """The rows of two normalized results that differ, each named: an ORM object by its class and key
    (`Customer[5]: balance, tier`, `Order['…']: only in candidate`, nested relationships followed), other
    rows by position (`row 3: amount`). At most `limit` lines."""
    out: list[str] = []
    _diff_rows(a, b, "", a_name, b_name, out)
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _name(obj: dict[str, Any]) -> str:
    key = obj.get(ORM_KEY, [])
    return f"{obj.get(ORM_CLASS)}[{', '.join(canonical_text(k) for k in key)}]"


def _is_orm(value: Any) -> bool:
    return isinstance(value, dict) and ORM_CLASS in value


def _diff_rows(a: Any, b: Any, where: str, a_name: str, b_name: str, out: list[str]) -> None:
    if a == b:
        return
    if _is_orm(a) and _is_orm(b) and _name(a) == _name(b):
        _diff_object(a, b, where, a_name, b_name, out)
        return
    if isinstance(a, list) and isinstance(b, list):
        if all(_is_orm(x) for x in a + b):
            left, right = {_name(x): x for x in a}, {_name(x): x for x in b}
            for name in [n for n in left if n not in right]:
                out.append(f"{where}{name}: only in {a_name}")
            for name in [n for n in right if n not in left]:
                out.append(f"{where}{name}: only in {b_name}")
            for name in [n for n in left if n in right]:
                _diff_object(left[name], right[name], where, a_name, b_name, out)
            return
        for i in range(max(len(a), len(b))):
            if i >= len(a) or i >= len(b):
                out.append(f"{where}row {i}: only in {a_name if i < len(a) else b_name}")
            elif a[i] != b[i]:
                cols = _differing_keys(a[i], b[i])
                out.append(f"{where}row {i}" + (f": {', '.join(cols)}" if cols else ""))
        return
    if _is_orm(a) or _is_orm(b):
        out.append(f"{where}{_name(a) if _is_orm(a) else _name(b)}: {a_name} and {b_name} return other objects")


def _diff_object(a: dict[str, Any], b: dict[str, Any], where: str, a_name: str, b_name: str, out: list[str]) -> None:
    name = _name(a)
    plain = [k for k in _differing_keys(a, b) if not (_nested(a.get(k)) or _nested(b.get(k)))]
    if plain:
        out.append(f"{where}{name}: {', '.join(plain)}")
    for k in sorted(set(a) | set(b)):
        if (_nested(a.get(k)) or _nested(b.get(k))) and a.get(k) != b.get(k):
            _diff_rows(a.get(k), b.get(k), f"{where}{name}.{k} -> ", a_name, b_name, out)


def _nested(value: Any) -> bool:
    return _is_orm(value) or (isinstance(value, list) and bool(value) and all(_is_orm(x) for x in value))


def _differing_keys(a: Any, b: Any) -> list[str]:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return []
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()

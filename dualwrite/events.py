"""The change event: its fields, its versioned JSON format and a lossless value codec.

Format version 1 (one JSON document per event, the stream entry's field `e`):

    {"v": 1, "id": "<uuid hex>", "seq": 42, "table": "memory_items", "op": "upsert" | "delete",
     "key": {"id": 7}, "image": {...all columns...} | null, "tenant": "acme" | null,
     "ts": "2026-11-24T12:00:00.000000+00:00", "src": "sqlite" | "postgres"}

`src` is the primary that committed the change (the replayer applies it to the other side); it may be
absent in events written by other producers, which are then applied to Postgres.

Column values are JSON scalars where JSON is exact (null, bool, int of any size, finite float, str);
everything else is a one-key object whose key starts with `$`:
`{"$dt": iso-8601 with offset}` (aware datetime), `{"$ndt": iso}` (naive datetime: a column without a
time zone; capture carries values of timezone-aware columns as `$dt` in UTC, and the apply reads a naive
value of such a column as UTC: the one rule of types.py), `{"$d": "YYYY-MM-DD"}`,
`{"$t": "HH:MM:SS.ffffff"}`, `{"$b64": base64}` (bytes), `{"$dec": "123.450"}` (Decimal, exact),
`{"$f": "nan" | "inf" | "-inf"}`, `{"$json": <any JSON value>}` (a JSON column's value, kept apart so
a user dict can never be mistaken for a tag), `{"$uuid": "..."}`. Text is kept verbatim (NUL and
non-ASCII included); lone surrogates are escaped by JSON as \\udXXX and come back unchanged.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson

from dualwrite.errors import EventDecodeError, EventTooLargeError

FORMAT_VERSION = 1
OPS = ("upsert", "delete")
# The largest event (its UTF-8 JSON), checked where it is made (check_size, on the primary before commit:
# a write whose event is larger is refused with EventTooLargeError) and again by the decoder (a stream
# entry of this size that no primary wrote is an attack or a bug).
MAX_EVENT_BYTES = 64 * 1024 * 1024


# shaped like normalize.Normalizer.normalize: this is the wire format ($b64), that one a comparison form ($hex)
def encode_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return {"$ndt": value.isoformat()}
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$d": value.isoformat()}
    if isinstance(value, time):
        return {"$t": value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, dict | list | tuple):
        return {"$json": value}
    raise TypeError(f"cannot encode a {type(value).__name__} value in a change event")


_DECODERS = {
    "$dt": datetime.fromisoformat,
    "$ndt": datetime.fromisoformat,
    "$d": date.fromisoformat,
    "$t": time.fromisoformat,
    "$b64": lambda s: base64.b64decode(s.encode("ascii"), validate=True),
    "$dec": Decimal,
    "$f": float,
    "$json": lambda v: v,
    "$uuid": uuid.UUID,
}


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) != 1:
            raise EventDecodeError(f"malformed tagged value {str(value)[:80]!r}")
        ((tag, raw),) = value.items()
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise EventDecodeError(f"unknown value tag {tag!r}")
        try:
            return decoder(raw)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise EventDecodeError(f"bad {tag} value {str(raw)[:80]!r}: {exc}") from None
    if isinstance(value, list):
        raise EventDecodeError("a bare list is not a column value (JSON values are tagged $json)")
    return value


def encode_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: encode_value(v) for k, v in row.items()}


# Tags whose value is a string: orjson writes them as json does.
_STR_TAGS = frozenset(("$dt", "$ndt", "$d", "$t", "$b64", "$dec", "$f", "$uuid"))
_PLAIN_FIELDS = (str, type(None))
# orjson writes a float of a magnitude under this with another exponent form than repr() (1e-07 vs 1e-7)
_ORJSON_FLOAT_MIN = 1e-4


def _encode_row_for_orjson(row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """encode_row, and whether orjson writes the result byte for byte as json.dumps(separators=(",", ":"),
    ensure_ascii=False) does (the format's reference text, five times slower): only str, int, bool, None,
    floats of a magnitude it prints alike, and tags holding a string; keys as plain str (orjson refuses a
    str subclass such as a column's quoted_name). Anything else (a $json value, a subclass) takes json."""
    out: dict[str, Any] = {}
    exact = True
    for k, v in row.items():
        if k.__class__ is not str:
            if isinstance(k, str):
                k = str.__str__(k)  # its text, as json writes it
            else:
                exact = False  # json writes a key of another type in its own way (True: "true")
        c = v.__class__
        if c is str or c is int or c is bool or v is None:
            out[k] = v
        elif c is float and math.isfinite(v):
            out[k] = v
            if v and -_ORJSON_FLOAT_MIN < v < _ORJSON_FLOAT_MIN:
                exact = False
        else:
            e = out[k] = encode_value(v)
            if e.__class__ is not dict or next(iter(e)) not in _STR_TAGS:
                exact = False
    return out, exact


def decode_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise EventDecodeError(f"row image must be an object, got {type(row).__name__}")
    return {str(k): decode_value(v) for k, v in row.items()}


class _Inexact(Exception):
    """orjson read an integer beyond 64 bits as a float (json keeps it an exact int): read the event with json."""


# A float of at least this magnitude may be such an integer; a real float that large reads the same in both.
_WIDE = 2.0**63


def _wide(value: Any) -> bool:
    c = value.__class__
    if c is float:
        return not -_WIDE < value < _WIDE
    if c is dict:
        return any(_wide(v) for v in value.values())
    if c is list:
        return any(_wide(v) for v in value)
    return False


def _decode_parsed_row(row: Any, by_orjson: bool = False) -> dict[str, Any]:
    """decode_row for an object the parser has just built (str keys, held by no one else): only the
    tagged values are replaced, in place. Most columns are plain scalars, so this is the replay's hot path.
    by_orjson: raise _Inexact at a float that may have been a wider integer."""
    if row.__class__ is not dict:
        raise EventDecodeError(f"row image must be an object, got {type(row).__name__}")
    for k, v in row.items():  # replacing the value of a key while iterating is allowed
        c = v.__class__
        if c is float:
            if by_orjson and not -_WIDE < v < _WIDE:
                raise _Inexact
        elif c is dict:
            # a tag's value is a string but for $json (any JSON) and malformed ones
            if by_orjson and not (len(v) == 1 and next(iter(v.values())).__class__ is str) and _wide(v):
                raise _Inexact
            row[k] = decode_value(v)
        elif c is list:
            decode_value(v)  # raises: a bare list is not a column value
    return row


_SCAN = json.JSONDecoder().scan_once


def _parse(raw: str | bytes) -> tuple[Any, bool]:
    """(the document, whether orjson read it). orjson is the replay's hot path (5x faster than json); json
    reads what orjson refuses: lone surrogates (\\udXXX, which our encoder writes and json reads back) and
    invalid JSON (json's exact result or error message)."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return _json_loads(raw), False


def _json_loads(raw: str | bytes) -> Any:
    """json.loads, minus its encoding sniffing and whitespace regexes for what our encoder writes: UTF-8
    bytes starting with '{"' and ending at the closing brace. Anything else takes json.loads itself."""
    if isinstance(raw, bytes) and raw[:2] == b'{"':
        text = raw.decode("utf-8", "surrogatepass")  # what json.loads does with bytes it detects as UTF-8
        try:
            doc, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end == len(text):
            return doc
        return json.loads(text)  # trailing data or a syntax error: its exact result or message
    return json.loads(raw)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_size(ev: ChangeEvent, payload: str) -> None:
    """Refuse an event whose JSON is over MAX_EVENT_BYTES, before it is committed with its change: it could
    be committed and published, but never decoded, so its row would never reach the other side."""
    if len(payload) * 4 <= MAX_EVENT_BYTES:  # at most 4 UTF-8 bytes a character: no encoding needed
        return
    size = len(payload) if payload.isascii() else len(payload.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        key = ", ".join(f"{k}={v!r}" for k, v in ev.key.items())[:200]
        raise EventTooLargeError(
            f"table {ev.table!r} row ({key}): its change event is {size:,} bytes ({size / 2**20:.1f} MiB), over "
            f"the {MAX_EVENT_BYTES:,}-byte limit (events.MAX_EVENT_BYTES); the write was refused and nothing "
            "committed: keep values this large outside the row (a file or object store)"
        )


def key_text(pk_values: list[Any] | tuple[Any, ...]) -> str:
    """Canonical text of a primary key (the version/tombstone key on both backends). A single `int` (not a
    bool, which is a subclass but encodes as true/false) takes a shortcut that gives the same text."""
    if len(pk_values) == 1 and type(pk_values[0]) is int:
        return f"[{pk_values[0]}]"
    return json.dumps([encode_value(v) for v in pk_values], separators=(",", ":"), ensure_ascii=False)


def key_texts(rows: Sequence[Sequence[Any]], positions: Sequence[int]) -> list[str]:
    """key_text of many rows' primary key values (taken at `positions`), fast for one integer key."""
    if len(positions) == 1:
        (i,) = positions
        return [f"[{v}]" if type(v) is int else key_text([v]) for v in (row[i] for row in rows)]
    return [key_text([row[i] for i in positions]) for row in rows]


def event_key(raw: str | bytes) -> tuple[str, dict[str, Any]]:
    """The table and key of an encoded event without decoding its row image."""
    return next(event_keys((raw,)))


def event_keys(raws: Iterable[str | bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """event_key of each event (an incremental verify reads thousands of them for their keys alone)."""
    loads = orjson.loads
    for raw in raws:
        found = None
        try:
            doc = loads(raw)
            if doc.__class__ is dict and doc.get("v") == FORMAT_VERSION and doc["table"].__class__ is str:
                found = doc["table"], _decode_parsed_row(doc["key"], True)
        except (ValueError, UnicodeDecodeError, KeyError, _Inexact):  # orjson.JSONDecodeError is a ValueError
            pass
        if found is None:
            ev = ChangeEvent.from_json(raw)  # what orjson refuses: the exact path, and its one-line errors
            found = ev.table, ev.key
        yield found


@dataclass
class ChangeEvent:
    table: str
    op: str
    key: dict[str, Any]
    image: dict[str, Any] | None
    tenant: str | None = None
    seq: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    origin: str | None = None  # the backend whose outbox holds the event

    @property
    def target(self) -> str:
        """The side this event must be applied to."""
        return "sqlite" if self.origin == "postgres" else "postgres"

    def key_text(self, pk: tuple[str, ...]) -> str:
        return key_text([self.key[c] for c in pk])

    def to_json(self) -> str:
        key, exact = _encode_row_for_orjson(self.key)
        image = None
        if self.image is not None:
            image, exact_image = _encode_row_for_orjson(self.image)
            exact = exact and exact_image
        doc = {
            "v": FORMAT_VERSION,
            "id": self.id,
            "seq": self.seq,
            "table": self.table,
            "op": self.op,
            "key": key,
            "image": image,
            "tenant": self.tenant,
            "ts": self.ts.isoformat(),
            **({"src": self.origin} if self.origin else {}),
        }
        if exact and self.id.__class__ is str and self.tenant.__class__ in _PLAIN_FIELDS:
            try:
                return orjson.dumps(doc).decode()
            except TypeError:  # lone surrogates, an integer beyond 64 bits: json's text, below
                pass
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ChangeEvent:
        if len(raw) > MAX_EVENT_BYTES:
            raise EventDecodeError(f"event of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
        try:
            doc, by_orjson = _parse(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            hint = " (not UTF-8 text)" if isinstance(raw, bytes) and not _is_utf8(raw) else ""
            raise EventDecodeError(f"event is not valid JSON{hint}: {exc}") from None
        if by_orjson:
            try:
                # no field of ours is a float at the top: one there may have been a wider integer
                if doc.__class__ is dict and float not in {v.__class__ for v in doc.values()}:
                    return cls._from_doc(doc, True)
            except _Inexact:
                pass
            doc = _json_loads(raw)
        return cls._from_doc(doc, False)

    @classmethod
    def _from_doc(cls, doc: Any, by_orjson: bool) -> ChangeEvent:
        if not isinstance(doc, dict):
            raise EventDecodeError("event is not a JSON object")
        if doc.get("v") != FORMAT_VERSION:
            raise EventDecodeError(f"unsupported event format version {doc.get('v')!r}")
        try:
            op, seq, table, key, eid = doc["op"], doc["seq"], doc["table"], doc["key"], doc["id"]
        except KeyError:
            missing = [f for f in ("id", "seq", "table", "op", "key") if f not in doc]
            raise EventDecodeError(f"event lacks field(s) {', '.join(missing)}") from None
        if op not in OPS:
            raise EventDecodeError(f"unknown op {op!r}")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            raise EventDecodeError(f"seq {seq!r} is not a positive integer")
        if not isinstance(table, str) or not table:
            raise EventDecodeError("table is not a non-empty string")
        image = doc.get("image")
        if op == "upsert" and not isinstance(image, dict):
            raise EventDecodeError("an upsert event needs a row image")
        try:
            ts = datetime.fromisoformat(doc["ts"]) if doc.get("ts") else datetime.now(UTC)
        except (TypeError, ValueError):
            raise EventDecodeError(f"bad ts {doc.get('ts')!r}") from None
        tenant = doc.get("tenant")
        origin = doc.get("src")
        if origin not in (None, "sqlite", "postgres"):
            raise EventDecodeError(f"unknown src {origin!r}")
        return cls(
            table=table,
            op=op,
            key=_decode_parsed_row(key, by_orjson),
            image=None if image is None else _decode_parsed_row(image, by_orjson),
            tenant=None if tenant is None else str(tenant),
            seq=seq,
            id=eid if eid.__class__ is str else str(eid),
            ts=ts,
            origin=origin,
        )

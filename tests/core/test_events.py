"""The change-event codec: every column type round-trips losslessly; malformed events fail clearly."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.sql.elements import quoted_name

from dualwrite.errors import EventDecodeError
from dualwrite.events import ChangeEvent, decode_value, encode_value

offsets = st.builds(
    lambda m: UTC if m == 0 else timezone(timedelta(minutes=m)), st.integers(min_value=-23 * 60, max_value=23 * 60)
)
aware = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).flatmap(
    lambda d: offsets.map(lambda tz: d.replace(tzinfo=tz))
)
json_keys = st.one_of(st.text(max_size=8), st.sampled_from(["$dt", "$b64", "$json", "$dec", "$f", "$", "v"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=20,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) - 1),
    st.floats(),  # NaN and +-inf included
    st.text(),  # NUL, non-ASCII, surrogates
    st.text(alphabet=st.characters(codec="utf-8")).map(lambda s: "\x00" + s + "é漢🙂"),
    aware,
    st.datetimes(),
    st.dates(),
    st.times(),
    st.binary(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.uuids(),
    json_values.filter(lambda v: isinstance(v, dict | list)),
)


def same(a: Any, b: Any) -> bool:
    """Equality that also requires the same type, the same offset and NaN == NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, datetime):
        return a.isoformat() == b.isoformat() and a.utcoffset() == b.utcoffset()
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=300)
@given(value=scalars)
def test_value_roundtrip(value: Any) -> None:
    assert same(decode_value(json.loads(json.dumps(encode_value(value)))), value)


@settings(max_examples=150)
@given(
    image=st.dictionaries(st.text(min_size=1, max_size=10), scalars, min_size=1, max_size=8),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    tenant=st.none() | st.text(max_size=10),
    op=st.sampled_from(["upsert", "delete"]),
)
def test_event_roundtrip(image: dict[str, Any], seq: int, tenant: str | None, op: str) -> None:
    key_col = next(iter(image))
    ev = ChangeEvent(
        table="items",
        op=op,
        key={key_col: image[key_col]},
        image=image if op == "upsert" else None,
        tenant=tenant,
        seq=seq,
    )
    raw = ev.to_json()
    for payload in (raw, raw.encode("utf-8", "surrogatepass")):
        back = ChangeEvent.from_json(payload)
        assert (back.table, back.op, back.seq, back.id, back.tenant, back.ts) == (
            ev.table,
            ev.op,
            ev.seq,
            ev.id,
            ev.tenant,
            ev.ts,
        )
        assert same(back.key, ev.key)
        assert (back.image is None) == (ev.image is None)
        if ev.image is not None:
            assert same(back.image, ev.image)


def _reference_text(ev: ChangeEvent) -> str:
    """Format 1's text as the standard library writes it (to_json may take orjson, never another text)."""
    doc = {
        "v": 1,
        "id": ev.id,
        "seq": ev.seq,
        "table": ev.table,
        "op": ev.op,
        "key": {k: encode_value(v) for k, v in ev.key.items()},
        "image": None if ev.image is None else {k: encode_value(v) for k, v in ev.image.items()},
        "tenant": ev.tenant,
        "ts": ev.ts.isoformat(),
        **({"src": ev.origin} if ev.origin else {}),
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


small_floats = st.floats(min_value=-1e-3, max_value=1e-3) | st.sampled_from([1e-4, -1e-4, 9.99e-5, 1e-5, 1e-7, 5e-324])


@settings(max_examples=400)
@given(
    image=st.dictionaries(
        st.text(min_size=1, max_size=10).map(lambda k: quoted_name(k, None)) | st.text(min_size=1, max_size=10),
        scalars | small_floats | st.floats(allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=8,
    ),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    tenant=st.none() | st.text(max_size=10),
    origin=st.none() | st.sampled_from(["sqlite", "postgres"]),
)
def test_event_text_is_the_standard_library_s_byte_for_byte(
    image: dict[str, Any], seq: int, tenant: str | None, origin: str | None
) -> None:
    key_col = next(iter(image))
    table = quoted_name("items", None)  # a Table's name, as capture passes it
    ev = ChangeEvent(table=table, op="upsert", key={key_col: image[key_col]}, image=image, tenant=tenant, seq=seq)
    ev.origin = origin
    assert ev.to_json() == _reference_text(ev)


def test_event_text_of_keys_and_values_json_writes_its_own_way() -> None:
    class Sub(float):
        pass

    cases: list[tuple[Any, Any, str]] = [
        (True, "bool key", '"true":"bool key"'),
        (2, "int key", '"2":"int key"'),
        ("f", Sub(1.5), '"f":1.5'),
        ("big", 2**64, '"big":18446744073709551616'),
        ("e", 1e-7, '"e":1e-07'),
        ("doc", {"x": [1e-7, 2.5]}, '"doc":{"$json":{"x":[1e-07,2.5]}}'),  # a JSON column's value
        ("s", "lone \udc80", '"s":"lone \udc80"'),
    ]
    for k, v, text in cases:
        ev = ChangeEvent(table="t", op="upsert", key={"id": 1}, image={"id": 1, k: v}, seq=1)
        assert ev.to_json() == _reference_text(ev)
        assert text in ev.to_json(), (k, ev.to_json())


def test_json_column_with_tag_like_keys_is_not_mistaken_for_a_tag() -> None:
    doc = {"$dt": "2020-01-01T00:00:00+00:00", "nested": [{"$b64": "!!"}, {"$json": None}], "n": 2**70}
    ev = ChangeEvent(table="t", op="upsert", key={"id": 1}, image={"id": 1, "doc": doc, "lst": [1, {"$f": "x"}]}, seq=1)
    back = ChangeEvent.from_json(ev.to_json())
    assert back.image == {"id": 1, "doc": doc, "lst": [1, {"$f": "x"}]}


def test_concrete_types_survive() -> None:
    image = {
        "id": 2**64 + 1,
        "at": datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        "blob": b"\x00\xff\x80",
        "price": Decimal("-123456789012345678901234567890.000100"),
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": float("-inf"),
        "text": "a\x00b é 漢字 🙂 \udc80",
        "d": date(2000, 2, 29),
        "t": time(23, 59, 59, 999999),
        "u": uuid.UUID(int=7),
    }
    back = ChangeEvent.from_json(
        ChangeEvent(table="t", op="upsert", key={"id": image["id"]}, image=image, seq=3).to_json()
    )
    assert back.image is not None
    for k, v in image.items():
        assert same(back.image[k], v), k


def _doc(**over: Any) -> str:
    doc: dict[str, Any] = {
        "v": 1,
        "id": "x",
        "seq": 1,
        "table": "items",
        "op": "upsert",
        "key": {"id": 1},
        "image": {"id": 1},
        "tenant": None,
        "ts": "2026-01-01T00:00:00+00:00",
    }
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (_doc(v=2), "unsupported event format version 2"),
        (_doc(v=...), "unsupported event format version None"),
        (_doc(seq=...), "lacks field(s) seq"),
        (_doc(table=..., key=...), "lacks field(s) table, key"),
        (_doc(op="merge"), "unknown op 'merge'"),
        (_doc(seq=0), "seq 0 is not a positive integer"),
        (_doc(seq="7"), "is not a positive integer"),
        (_doc(seq=True), "is not a positive integer"),
        (_doc(table=""), "table is not a non-empty string"),
        (_doc(image=None), "an upsert event needs a row image"),
        (_doc(image=[1]), "an upsert event needs a row image"),
        (_doc(ts="yesterday"), "bad ts"),
        (_doc(key=[1]), "row image must be an object"),
        (_doc(image={"id": {"$dt": "nope"}}), "bad $dt value 'nope'"),
        (_doc(image={"id": {"$b64": "@@@"}}), "bad $b64 value"),
        (_doc(image={"id": {"$dec": "1.2.3"}}), "bad $dec value"),
        (_doc(image={"id": {"$zz": 1}}), "unknown value tag '$zz'"),
        (_doc(image={"id": {"$dt": "x", "$d": "y"}}), "malformed tagged value"),
        (_doc(image={"id": [1, 2]}), "a bare list is not a column value"),
    ],
)
def test_malformed_events_raise_clear_errors(raw: str | bytes, message: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        ChangeEvent.from_json(raw)
    assert message in str(info.value)


def test_oversized_event_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import dualwrite.events as events

    monkeypatch.setattr(events, "MAX_EVENT_BYTES", 100)
    with pytest.raises(EventDecodeError, match="exceeds the 100-byte limit"):
        ChangeEvent.from_json(_doc(image={"id": 1, "s": "x" * 200}))


@pytest.mark.parametrize(
    ("seq", "key", "extra"),
    [
        (2**64 + 5, 1, {}),
        (3, 2**64 + 1, {}),
        (3, -(2**63) - 1, {}),
        (3, 1, {"doc": {"n": [1, {"deep": -(2**70)}]}}),
        (3, 1, {"f": 1e300, "g": -1e19}),  # real floats that large come back as floats
    ],
)
def test_integers_beyond_64_bits_stay_exact_wherever_they_are(seq: int, key: int, extra: dict[str, Any]) -> None:
    """orjson (the fast decoder) reads such an integer as a float: the codec must notice and read it exactly."""
    ev = ChangeEvent(table="t", op="upsert", key={"id": key}, image={"id": key, **extra}, seq=seq)
    back = ChangeEvent.from_json(ev.to_json().encode())
    assert back.seq == seq and type(back.seq) is int
    assert back.key == {"id": key} and type(back.key["id"]) is int
    assert back.image is not None and same(back.image, ev.image)


def test_lone_surrogates_and_plain_events_decode_alike_with_bytes_and_text() -> None:
    ev = ChangeEvent(table="t", op="upsert", key={"id": 1}, image={"id": 1, "s": "x\udc80y", "g": "ok"}, seq=9)
    raw = ev.to_json()
    for payload in (raw, raw.encode("utf-8", "surrogatepass")):
        assert ChangeEvent.from_json(payload).image == {"id": 1, "s": "x\udc80y", "g": "ok"}

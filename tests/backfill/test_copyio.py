"""COPY encoding without a server: the column-wise text encoder (psycopg2's path) writes exactly what the
per-value `copy_text` writes, whatever the mix of types in a column."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dualwrite.backfill.copy_format import copy_text, text_block

value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=4),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.decimals(allow_nan=False),
    st.uuids(),
)
column = st.one_of(
    st.lists(value, min_size=1, max_size=6),  # mixed types
    *(st.lists(s, min_size=1, max_size=6) for s in (st.integers(), st.floats(), st.text(), st.booleans(), st.dates())),
)


@given(st.lists(column, min_size=1, max_size=4))
@hsettings(max_examples=300, deadline=None)
def test_text_block_equals_copy_text(cols) -> None:  # type: ignore[no-untyped-def]
    n = min(len(c) for c in cols)
    rows = list(zip(*(c[:n] for c in cols), strict=True))
    assert text_block(rows) == "".join("\t".join(map(copy_text, r)) + "\n" for r in rows)


def test_copy_text_edge_values() -> None:
    assert copy_text(None) == "\\N" and copy_text(True) == "t" and copy_text(float("-inf")) == "-Infinity"
    assert copy_text("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    assert copy_text(b"\x00\xff") == "\\\\x00ff" and copy_text(Decimal("1.50")) == "1.50"
    assert copy_text(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=5)) == "2026-01-01T00:00:00.000005+00:00"
    assert copy_text(date(2026, 1, 2)) == "2026-01-02" and copy_text(time(1, 2)) == "01:02:00"
    assert copy_text(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert copy_text({"a": "é"}) == '{"a": "é"}'
    assert text_block([]) == ""

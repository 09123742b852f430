"""Whole-column casts (Cast.column): where one applies it gives exactly what the per-value converter gives,
and it declines (None) every column holding a value the converter would change or reject."""

from __future__ import annotations

from typing import Any

import pytest

from dualwrite import casts as T
from dualwrite.convert import Dirty

CASES: list[tuple[str, list[Any], bool]] = [  # (cast, column, passes whole)
    ("bigint", [1, 2, None, -(2**63)], True),
    ("smallint", [1, 2**15], False),  # out of range: the converter rejects it
    ("bigint", [1, 2.0], False),
    ("bigint", [True, 1], False),
    ("text", ["a", None, "é", "x" * 300], True),
    ("text", ["a", "b\x00"], False),
    ("text", ["a", "\udcff"], False),  # invalid UTF-8, as the lenient decoder leaves it
    ("text", ["a", 5], False),  # a number: the converter makes it text
    ("varchar(3)", ["abc", "ab"], True),
    ("varchar(3)", ["abcd"], False),
    ("double precision", [0.5, None, -0.0], True),
    ("double precision", [0.5, 1], False),
    ("boolean", [0, 1, 1], True),
    ("boolean", [0, None], False),
    ("boolean", [0, 2], False),
    ("boolean", [0, "true"], False),
    ("timestamptz", ["2024-01-02 03:04:05.000006", "2024-01-02"], True),
    ("timestamptz", ["2024-01-02 03:04:05+02:00"], False),
    ("timestamptz", ["2024-01-02 03:04:05", "2024-01-02T03:04", "20240102T030405"], True),  # the re-parse path
    ("timestamptz", ["2024-01-02 03:04:05 "], False),  # with "+00:00" appended it would parse: the plain parse decides
    ("timestamptz", ["2024-01-02T03:04:05Z"], False),
    ("timestamptz", ["2024-01-02", 1700000000], False),
    ("timestamptz", ["not a time"], False),
]


@pytest.mark.parametrize(("spec", "col", "whole"), CASES)
def test_a_whole_column_cast_is_the_per_value_cast(spec: str, col: list[Any], whole: bool) -> None:
    cast = T.parse_cast(spec)
    assert cast.column is not None
    got = cast.column(tuple(col))
    assert (got is not None) == whole
    if got is None:
        return
    expected = [None if v is None else cast.convert(v) for v in col]
    assert list(got) == expected
    assert [type(v) for v in got] == [type(v) for v in expected]
    if spec == "timestamptz":
        assert [v.tzinfo for v in got] == [v.tzinfo for v in expected]


def test_declined_columns_still_convert_or_reject_value_by_value() -> None:
    cast = T.parse_cast("smallint")
    with pytest.raises(Dirty):
        cast.convert(2**15)

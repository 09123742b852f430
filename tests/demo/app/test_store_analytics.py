"""Analytics store on each backend alone: events, exact daily rollups, rollup ranges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from dualwrite.demo.app.analytics import AnalyticsStore
from dualwrite.demo.app.errors import ValidationError

DAY = date(2026, 3, 1)
MIDNIGHT = datetime(2026, 3, 1, tzinfo=UTC)


def test_events_and_exact_rollups(dw, clock) -> None:  # type: ignore[no-untyped-def]
    an = AnalyticsStore(dw, "acme", clock=clock)
    at = lambda h: MIDNIGHT + timedelta(hours=h)  # noqa: E731
    an.record("view", occurred_at=at(-0.001))  # the day before, by a few seconds
    an.record("view", properties={"page": "/"}, occurred_at=at(0))  # midnight belongs to the day
    an.record("view", occurred_at=at(23.999))
    an.record("spend", 0.1, occurred_at=at(1))  # a float goes by its repr: 0.1 exactly
    an.record("spend", Decimal("0.2"), occurred_at=at(2))
    an.record("spend", "-0.05", occurred_at=at(3))
    an.record("spend", 7, occurred_at=at(24))  # the next day
    an.record("latency", Decimal("123456789012.123456"), occurred_at=at(5))

    views = an.events("view")
    assert [e["occurred_at"] for e in views] == [at(-0.001), at(0), at(23.999)]
    assert views[1]["properties"] == {"page": "/"} and views[1]["value"] is None
    assert [e["value"] for e in an.events("spend", since=at(0), until=at(24))] == [
        Decimal("0.100000"),
        Decimal("0.200000"),
        Decimal("-0.050000"),
    ]
    assert len(an.events(since=at(0), until=at(24))) == 6
    assert len(an.events(limit=2)) == 2

    day = an.rollup(DAY)
    assert [(r["metric"], r["count"], r["sum"]) for r in day] == [
        ("latency", 1, Decimal("123456789012.123456")),
        ("spend", 3, Decimal("0.250000")),
        ("view", 2, Decimal("0.000000")),
    ]
    assert all(r["day"] == DAY for r in day)
    again = an.rollup(DAY)  # recomputing is idempotent: same rows, same ids
    assert [(r["id"], r["count"], r["sum"]) for r in again] == [(r["id"], r["count"], r["sum"]) for r in day]
    an.rollup(DAY + timedelta(days=1))
    an.rollup(DAY - timedelta(days=1))
    assert [(r["day"], r["metric"]) for r in an.rollups()] == [
        (DAY - timedelta(days=1), "view"),
        (DAY, "latency"),
        (DAY, "spend"),
        (DAY, "view"),
        (DAY + timedelta(days=1), "spend"),
    ]
    assert [r["metric"] for r in an.rollups(since=DAY, until=DAY)] == ["latency", "spend", "view"]
    assert [r["day"] for r in an.rollups(metric="spend")] == [DAY, DAY + timedelta(days=1)]
    assert an.rollup(DAY + timedelta(days=5)) == []


def test_analytics_values_are_checked(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    an = AnalyticsStore(dw, "acme", clock=clock)
    before = counts(dw)
    for value, message in [
        (Decimal("0.1234567"), "more than 6 decimal places"),
        (Decimal("1e12"), "more than 12 integer digits"),
        (float("inf"), "not a finite number"),
        ("abc", "'abc' is not a decimal number"),
        (True, "expected a decimal number, got bool"),
    ]:
        with pytest.raises(ValidationError, match=rf"analytics_events\.value: .*{message}"):
            an.record("m", value)
    with pytest.raises(ValidationError, match="expected a date"):
        an.rollup(MIDNIGHT)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="since: needs a timezone-aware datetime"):
        an.events(since=datetime(2026, 1, 1))
    assert counts(dw) == before

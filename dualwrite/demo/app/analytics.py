"""Analytics store (P1): raw events and their daily rollups (count and sum per metric and UTC day).

Values are exact decimals (ExactDecimal: integer units on SQLite), so a rollup's sum is the same on both
backends. `rollup(day)` recomputes the day from its events and upserts the result in one transaction,
deleting rollups of metrics that no longer have events that day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import BigInteger, Date, Index, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import stamp_column
from dualwrite.demo.app.common import TenantStore, check_aware, check_limit, check_text
from dualwrite.demo.app.errors import ValidationError
from dualwrite.types import ExactDecimal, JSONType, OrderedString

VALUE = ExactDecimal(18, 6)


class AnalyticsEvent(TenantKeyed, Base):
    __tablename__ = "analytics_events"
    __table_args__ = (
        Index(None, "tenant_id", "name", "occurred_at"),
        Index(None, "tenant_id", "occurred_at"),
    )
    name: Mapped[str] = mapped_column(OrderedString(128))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    value: Mapped[Decimal | None] = mapped_column(VALUE)
    occurred_at: Mapped[datetime] = stamp_column()


class AnalyticsRollup(TenantKeyed, Base):
    __tablename__ = "analytics_rollups"
    __table_args__ = (UniqueConstraint("tenant_id", "day", "metric"),)
    day: Mapped[date] = mapped_column(Date)
    metric: Mapped[str] = mapped_column(OrderedString(128))
    count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[Decimal] = mapped_column(VALUE)
    updated_at: Mapped[datetime] = stamp_column()


analytics_events, analytics_rollups = core_tables(AnalyticsEvent, AnalyticsRollup)


class AnalyticsEventRow(TenantKeyedRow):
    name: str
    properties: dict[str, Any]
    value: Decimal | None
    occurred_at: datetime


class AnalyticsRollupRow(TenantKeyedRow):
    day: date
    metric: str
    count: int
    sum: Decimal
    updated_at: datetime


def _day(value: Any, where: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise ValidationError(f"{where}: expected a date (not a datetime), got {value!r}")
    return value


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


class AnalyticsStore(TenantStore):
    store = "analytics"

    def record(
        self,
        name: str,
        value: Decimal | int | float | str | None = None,
        *,
        properties: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> AnalyticsEventRow:
        """Record one event (value: an exact decimal with at most 6 places; a float goes by its repr)."""
        check_text(name, "analytics_events.name", 128, empty=False)
        values = {
            "name": name,
            "value": value,
            "properties": {} if properties is None else properties,
            "occurred_at": self.now() if occurred_at is None else occurred_at,
        }
        with self.write() as tx:
            return cast(AnalyticsEventRow, self.insert(tx, analytics_events, values))

    def events(
        self,
        name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[AnalyticsEventRow]:
        """Events in [since, until), oldest first (ties by id)."""
        ev = analytics_events
        conds = [self.mine(ev)]
        if name is not None:
            conds.append(ev.c.name == name)
        if since is not None:
            conds.append(ev.c.occurred_at >= check_aware(since, "since"))
        if until is not None:
            conds.append(ev.c.occurred_at < check_aware(until, "until"))
        stmt = select(ev).where(*conds).order_by(ev.c.occurred_at, ev.c.id).limit(check_limit(limit, 100_000))
        return cast(list[AnalyticsEventRow], self.rows("events", stmt, name=name, limit=limit))

    def rollup(self, day: date) -> list[AnalyticsRollupRow]:
        """Recompute the UTC day's rollups from its events and store them; returns them by metric."""
        day = _day(day, "day")
        start, end = day_bounds(day)
        ev, ru = analytics_events, analytics_rollups
        totals = (
            select(ev.c.name, func.count().label("count"), func.sum(ev.c.value).label("sum"))
            .where(self.mine(ev), ev.c.occurred_at >= start, ev.c.occurred_at < end)
            .group_by(ev.c.name)
            .order_by(ev.c.name)
        )
        now = self.now()
        out: list[AnalyticsRollupRow] = []
        with self.write() as tx:
            computed = [dict(r) for r in tx.connection.execute(totals).mappings()]
            metrics = [r["name"] for r in computed]
            self.delete_where(tx, ru, ru.c.day == day, ru.c.metric.not_in(metrics))
            for r in computed:
                values = {
                    "day": day,
                    "metric": r["name"],
                    "count": int(r["count"]),
                    "sum": Decimal(0) if r["sum"] is None else r["sum"],
                    "updated_at": now,
                }
                row = self.upsert(tx, ru, values, ["day", "metric"], keep=())
                out.append(cast(AnalyticsRollupRow, row))
        return out

    def rollups(
        self, since: date | None = None, until: date | None = None, metric: str | None = None
    ) -> list[AnalyticsRollupRow]:
        """Stored rollups of the days since..until (both inclusive), by (day, metric)."""
        ru = analytics_rollups
        conds = [self.mine(ru)]
        if since is not None:
            conds.append(ru.c.day >= _day(since, "since"))
        if until is not None:
            conds.append(ru.c.day <= _day(until, "until"))
        if metric is not None:
            conds.append(ru.c.metric == metric)
        stmt = select(ru).where(*conds).order_by(ru.c.day, ru.c.metric)
        return cast(list[AnalyticsRollupRow], self.rows("rollups", stmt, metric=metric))

"""Fixtures for the store tests: a DualWriter on one backend alone (parametrized over both), a pair of
writers (one per backend) for comparing results, and a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from dualwrite.adapter import DualWriter
from dualwrite.demo.app import tables
from dualwrite.settings import Settings
from dualwrite.testing import single_backend

BACKENDS = ["sqlite", "postgres"]
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Clock:
    """A clock that stands still until told to move (stores take it as `clock=`)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_clock() -> type[Clock]:
    """The Clock class, for tests that need several clocks."""
    return Clock


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dw(settings: Settings, backend: str) -> Iterator[DualWriter]:
    writer = single_backend(settings, tables(), backend)
    yield writer
    writer.close()


@pytest.fixture
def pair(settings: Settings, tmp_path) -> Iterator[dict[str, DualWriter]]:  # type: ignore[no-untyped-def]
    """{"sqlite": writer on SQLite alone, "postgres": writer on Postgres alone}, fully separate."""
    lite = single_backend(settings, tables(), "sqlite")
    other = settings.with_(sqlite_url=f"sqlite:///{tmp_path / 'pg-side.db'}", namespace=f"{settings.namespace}:pg")
    pg = single_backend(other, tables(), "postgres")
    yield {"sqlite": lite, "postgres": pg}
    lite.close()
    pg.close()


def table_counts(writer: DualWriter) -> dict[str, int]:
    """Row counts of every store table and of the outbox, on the writer's primary."""
    from sqlalchemy import func, select

    from dualwrite.bookkeeping import outbox

    engine = writer.backends.write_engine(writer.phases.current().primary)
    with engine.connect() as conn:
        counts = {s.name: conn.execute(select(func.count()).select_from(s.table)).scalar_one() for s in tables()}
        counts["_dw_outbox"] = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    return counts


@pytest.fixture
def counts():  # type: ignore[no-untyped-def]
    """counts(dw) -> row counts of every table (and the outbox) on the primary."""
    return table_counts

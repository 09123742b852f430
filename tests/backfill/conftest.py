"""The backfill tests' writer: the tables of support.py on both backends, in the test module's PHASE
(`sqlite` unless the module sets PHASE = "dual_write"); and a chunk's engine on each Postgres driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from dualwrite.adapter import DualWriter
from dualwrite.engines import postgres_engine
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.backfill.support import catalog


@pytest.fixture
def dw(settings: Settings, request: pytest.FixtureRequest) -> Iterator[DualWriter]:
    w = prepared_writer(settings, catalog(), phase=getattr(request.module, "PHASE", "sqlite"))
    yield w
    w.close()


@pytest.fixture(params=["psycopg2", "psycopg"])
def copier_pg(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The chunk's engine, on each driver: psycopg2 (what Settings normalise to) encodes COPY text here,
    psycopg 3 writes rows itself, in binary where binary.py allows."""
    url = make_url(settings.postgres_url).set(drivername=f"postgresql+{request.param}")
    dsn = url.render_as_string(hide_password=False)
    engine = postgres_engine(dsn, settings.pg_schema, state_schema=settings.state_schema, replica=True)
    yield engine
    engine.dispose()

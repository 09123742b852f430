"""Engines: the Postgres schema name reaches search_path as one quoted identifier, whatever it contains."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import create_engine, insert, text

from dualwrite.db import postgres_engine
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.conftest import PG_ADMIN_URL
from tests.core.support import catalog, items, md, row, snapshot


@pytest.fixture
def odd_schema(uid: str) -> Iterator[str]:
    """A schema whose name needs quoting: upper case, spaces, a comma, a double quote and a backslash."""
    name = f'T {uid}, "x" \\y'
    quoted = '"' + name.replace('"', '""') + '"'
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {quoted}"))
    yield name
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))
    admin.dispose()


@pytest.mark.parametrize("autocommit", [False, True])
def test_search_path_is_the_quoted_schema(odd_schema: str, autocommit: bool) -> None:
    engine = postgres_engine(PG_ADMIN_URL, odd_schema, autocommit=autocommit, pre_ping=not autocommit)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar() == odd_schema
            assert conn.execute(text("SELECT current_schemas(false)")).scalar() == [odd_schema]
    finally:
        engine.dispose()


def test_dual_write_lands_in_a_schema_needing_quotes(settings: Settings, odd_schema: str) -> None:
    odd = replace(settings, pg_schema=odd_schema)
    dw = prepared_writer(odd, metadata=md, catalog=catalog(), phase="dual_write")
    try:
        dw.execute(insert(items).values([row(1, 1), row(2, 2)]))
        assert snapshot(dw.postgres) == snapshot(dw.sqlite_read)
        with dw.postgres.connect() as conn:
            where = conn.execute(
                text(
                    "SELECT table_schema FROM information_schema.tables "
                    "WHERE table_name = 'items' AND table_schema IN (:a, :b)"
                ),
                {"a": odd_schema, "b": settings.pg_schema},
            )
            assert where.scalars().all() == [odd_schema]  # not in the schema an unquoted name would fall back to
    finally:
        dw.close()

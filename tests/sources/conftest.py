"""A project file (dualwrite.toml) with several sources, each its own SQLite file, Postgres schema, state
schema and namespace under this test's (all dropped afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL, REDIS_TEST_URL

ProjectFactory = Callable[..., Path]


def schemas_like(prefix: str) -> list[str]:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            sql = text("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, :p) ORDER BY nspname")
            return list(conn.execute(sql, {"p": prefix}).scalars())
    finally:
        engine.dispose()


def schema_snapshot(prefix: str) -> dict[str, list[tuple[str, str]]]:
    """Every schema under `prefix` with its relations and their comments: what --undo must restore."""
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            sql = text(
                "SELECT relname, relkind, coalesce(obj_description(oid, 'pg_class'), '') FROM pg_class "
                "WHERE relnamespace = to_regnamespace(:s) ORDER BY relname"
            )
            return {s: [tuple(r) for r in conn.execute(sql, {"s": s})] for s in schemas_like(prefix)}
    finally:
        engine.dispose()


@pytest.fixture
def project(tmp_path: Path, pg_schema: str, redis_prefix: str) -> Iterator[ProjectFactory]:
    """project({"alpha": "P0", "beta": "P1"}, models=..., shared_schema=False) -> the file's path. Source
    NAME: sqlite tmp/NAME.db, pg_schema {pg_schema}_{schema_prefix}NAME (or pg_schema itself when shared), state schema
    {pg_schema}_dw_NAME, namespace {redis_prefix}:NAME (derived, not written)."""

    def make(
        sources: dict[str, str],
        *,
        models: str | None = "tests.userapp.writer:tables",
        shared_schema: bool = False,
        name: str = "dualwrite.toml",
        extra: str = "",
        schema_prefix: str = "",
    ) -> Path:
        lines = [
            "[dualwrite]",
            f'postgres = "{PG_ADMIN_URL}"',
            f'redis = "{REDIS_TEST_URL}"',
            f'namespace = "{redis_prefix}"',
            f'state_schema = "{pg_schema}_dw"',  # each source's: {pg_schema}_dw_NAME (derived)
            extra,
        ]
        for source, priority in sources.items():
            lines += ["", f"[sources.{source}]", f'sqlite = "{source}.db"', f'priority = "{priority}"']
            lines.append(f'pg_schema = "{pg_schema if shared_schema else f"{pg_schema}_{schema_prefix}{source}"}"')
            lines.append(f'models = "{models}"' if models else "reflect = true")
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    yield make
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for schema in schemas_like(f"{pg_schema}_"):
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()

"""Per-test isolation on the real local servers: a fresh SQLite file, a fresh Postgres schema and a
unique Redis key prefix, all removed afterwards.

DUALWRITE_TEST_PG_TIMEZONE=America/New_York (any zone name) runs the whole suite against a Postgres whose
TimeZone is not UTC: a private database is created on the shared server with `ALTER DATABASE ... SET
TimeZone`, every test (and every subprocess, through DUALWRITE_TEST_POSTGRES_URL) uses it, and it is
dropped at the end; private clusters (tests/servers.py) start with the same TimeZone."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from dualwrite.settings import Settings, load_settings
from tests.servers import PrivateRedis

PG_SHARED_URL = os.environ.get("DUALWRITE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_PG_TIMEZONE = os.environ.get("DUALWRITE_TEST_PG_TIMEZONE", "").strip()


@contextmanager
def database_in_timezone(zone: str, url: str = PG_SHARED_URL) -> Iterator[str]:
    """A private database on `url`'s server whose sessions default to TimeZone `zone`; yields its URL and
    drops it afterwards (it is ours: created here)."""
    name = f"dw_tz_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            conn.execute(text(f'ALTER DATABASE "{name}" SET TimeZone = {_literal(zone)}'))
        yield str(make_url(url).set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_tz_database = database_in_timezone(TEST_PG_TIMEZONE) if TEST_PG_TIMEZONE else None
if _tz_database is not None:
    # before any test module reads it: the whole run (and its subprocesses) uses the private database
    os.environ["DUALWRITE_TEST_POSTGRES_URL"] = _tz_database.__enter__()
PG_ADMIN_URL = os.environ.get("DUALWRITE_TEST_POSTGRES_URL", PG_SHARED_URL)
REDIS_TEST_URL = os.environ.get("DUALWRITE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False, help="run long soak tests")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _tz_database is not None:
        _tz_database.__exit__(None, None, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def state_schema_for(schema: str) -> str:
    """The test's schema for dualwrite's own tables (created by dualwrite on first use)."""
    return f"{schema}_dw"


@contextmanager
def fresh_schema(uid: str) -> Iterator[str]:
    """A fresh Postgres schema, dropped afterwards with its state schema (`state_schema_for`)."""
    name = f"t_{uid}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            for schema in (name, state_schema_for(name)):
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def redis_namespace(uid: str) -> Iterator[str]:
    """A unique Redis namespace; every key under it is deleted afterwards."""
    ns = f"dwtest:{uid}"
    try:
        yield ns
    finally:
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def pg_schema(uid: str) -> Iterator[str]:
    """A fresh Postgres schema for this test, dropped afterwards."""
    with fresh_schema(uid) as name:
        yield name


@pytest.fixture
def redis_prefix(uid: str) -> Iterator[str]:
    """A unique Redis namespace for this test; every key under it is deleted afterwards."""
    with redis_namespace(uid) as ns:
        yield ns


def settings_for(sqlite_path: Path, pg_schema: str, namespace: str, **flags: Any) -> Settings:
    """Settings on the shared servers for this SQLite file, Postgres schema (its state schema beside it) and
    Redis namespace; `flags` as load_settings takes them."""
    return load_settings(
        env={},
        sqlite_url=str(sqlite_path),
        postgres_url=PG_ADMIN_URL,
        redis_url=REDIS_TEST_URL,
        namespace=namespace,
        pg_schema=pg_schema,
        state_schema=state_schema_for(pg_schema),
        **flags,
    )


@pytest.fixture
def settings(tmp_path: Path, pg_schema: str, redis_prefix: str) -> Settings:
    return settings_for(tmp_path / "app.db", pg_schema, redis_prefix)


def server_args(
    pg_schema: str, namespace: str, postgres: str = PG_ADMIN_URL, redis_url: str = REDIS_TEST_URL
) -> list[str]:
    """The server flags of a `dualwrite` command: the test's Postgres schema and Redis namespace."""
    return ["--postgres", postgres, "--redis", redis_url, "--namespace", namespace, "--pg-schema", pg_schema]


def connection_args(settings: Settings) -> list[str]:
    """The connection flags every `dualwrite` subcommand takes, for these settings."""
    return [
        "--sqlite",
        settings.sqlite_url,
        *server_args(settings.pg_schema, settings.namespace, settings.postgres_url, settings.redis_url),
        "--state-schema",
        settings.state_schema,
    ]


def connection_env(settings: Settings) -> dict[str, str]:
    """The same connection as DUALWRITE_* variables, for a subprocess that reads its environment."""
    return {
        "DUALWRITE_SQLITE_URL": settings.sqlite_url,
        "DUALWRITE_POSTGRES_URL": settings.postgres_url,
        "DUALWRITE_REDIS_URL": settings.redis_url,
        "DUALWRITE_NAMESPACE": settings.namespace,
        "DUALWRITE_PG_SCHEMA": settings.pg_schema,
        "DUALWRITE_STATE_SCHEMA": settings.state_schema,
    }


@pytest.fixture
def rclient(settings: Settings) -> Iterator[redis.Redis]:
    """A Redis client on the test's server (keys under `settings.namespace` are removed afterwards)."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of the test's own (tests/servers.py), to stop, restart or break; stopped afterwards."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    server.start()
    yield server
    server.stop()

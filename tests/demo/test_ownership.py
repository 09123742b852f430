"""The demo never drops, truncates or overwrites what it did not create: a configured schema, SQLite file or
Redis namespace that holds anything else is refused (one line, exit 2) and left exactly as it was; its own
(marked) schema is emptied and reused."""

from __future__ import annotations

import redis
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from dualwrite.cli.demo import demo
from dualwrite.demo.ownership import MARK, claim_postgres, claim_redis, claim_sqlite
from dualwrite.errors import ConfigError
from dualwrite.settings import Settings
from tests.conftest import PG_ADMIN_URL, REDIS_TEST_URL, state_schema_for


def _pg(sql: str, **params: object) -> list:  # type: ignore[type-arg]
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def _schema_exists(name: str) -> bool:
    return bool(_pg("SELECT 1 FROM pg_namespace WHERE nspname = :n", n=name))


def _run_demo(tmp_path, env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    argv = ["--rows", "200", "--duration", "1", "--postgres", PG_ADMIN_URL, "--redis", REDIS_TEST_URL, *args]
    return CliRunner().invoke(demo, argv, env=env)


def test_a_configured_schema_holding_an_unrelated_table_is_refused_and_survives(tmp_path, pg_schema, redis_prefix):  # type: ignore[no-untyped-def]
    _pg(f'CREATE TABLE "{pg_schema}".customers (id int primary key, name text)')
    _pg(f"INSERT INTO \"{pg_schema}\".customers VALUES (1, 'kept')")
    # the variable an operator sets for a real cutover (the issue: the demo dropped its contents)
    env = {"DUALWRITE_PG_SCHEMA": pg_schema, "DUALWRITE_NAMESPACE": redis_prefix}
    result = _run_demo(tmp_path, env, "--sqlite", str(tmp_path / "demo.db"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: demo: Postgres schema"), result.output
    assert f"{pg_schema!r} exists and is not the demo's (holds customers)" in lines[0]
    assert _pg(f'SELECT id, name FROM "{pg_schema}".customers') == [(1, "kept")]
    assert not _schema_exists(f"{pg_schema}_dw")  # refused before creating anything
    assert not (tmp_path / "demo.db").exists()


def test_a_configured_sqlite_file_or_namespace_of_the_users_is_refused_and_unchanged(
    tmp_path, settings: Settings, redis_prefix
) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    user_db = tmp_path / "user.db"
    with sqlite3.connect(user_db) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        db.execute("INSERT INTO orders VALUES (1, 42)")
    before = user_db.read_bytes()
    result = _run_demo(tmp_path, {}, "--sqlite", str(user_db), "--namespace", redis_prefix, "--pg-schema", "x_demo_a")
    assert result.exit_code == 2 and "SQLite file" in result.output and "holds orders" in result.output, result.output
    assert user_db.read_bytes() == before

    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.set(f"{redis_prefix}:phase", "dual_write")  # a live cutover's phase
    result = _run_demo(tmp_path, {}, "--sqlite", str(tmp_path / "new.db"), "--namespace", redis_prefix)
    assert result.exit_code == 2 and f"Redis namespace {redis_prefix!r} is in use" in result.output, result.output
    assert client.get(f"{redis_prefix}:phase") == b"dual_write"
    assert client.get(f"{redis_prefix}:demo:owner") is None
    client.close()


def test_the_demos_own_schema_is_emptied_and_reused_but_not_with_anything_added(settings: Settings, uid: str) -> None:
    schema = f"dwdemo_{uid}"
    mine = settings.with_(pg_schema=schema, state_schema=state_schema_for(schema))
    try:
        claim_postgres(mine, {"users"})
        assert _pg("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :n", n=schema) == [
            (MARK,)
        ]
        _pg(f'CREATE TABLE "{schema}".users (id serial primary key)')
        _pg(f'CREATE TABLE "{mine.state_schema}"._dw_outbox (seq bigint)')
        claim_postgres(mine, {"users"})  # an earlier run's tables: dropped
        assert _pg("SELECT count(*) FROM pg_tables WHERE schemaname IN (:a, :b)", a=schema, b=mine.state_schema) == [
            (0,)
        ]
        _pg(f'CREATE TABLE "{schema}".payroll (id int)')  # someone else's, put into the demo's schema
        try:
            claim_postgres(mine, {"users"})
            raise AssertionError("a table the demo did not create was not refused")
        except ConfigError as exc:
            assert "also holds payroll" in str(exc)
        assert _pg(f'SELECT count(*) FROM "{schema}".payroll') == [(0,)]
    finally:
        for s in (schema, mine.state_schema):
            _pg(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


def test_the_demos_own_sqlite_file_and_namespace_are_reused(tmp_path, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    path = tmp_path / "sub" / "demo.db"
    claim_sqlite(path, {"users"})
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE _dw_outbox (seq INTEGER)")
    claim_sqlite(path, {"users"})
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names == {"_dw_demo_owner"}

    client = redis.Redis.from_url(settings.redis_url)
    claim_redis(settings)  # an empty namespace becomes the demo's
    client.set(settings.key("changes"), "an earlier run's stream")
    claim_redis(settings)  # the demo's: its stale keys go (an old stream's top would hide new events)
    assert client.get(settings.key("changes")) is None and client.get(settings.key("demo", "owner")) == MARK.encode()
    client.close()

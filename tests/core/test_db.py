"""Engines: the Postgres schema name reaches search_path as one quoted identifier, whatever it contains."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, text
from sqlalchemy.exc import IntegrityError, OperationalError

from dualwrite.engines import postgres_engine, sqlite_engine
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.conftest import PG_ADMIN_URL
from tests.core.support import catalog, items, row, snapshot


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
    with prepared_writer(odd, catalog(), phase="dual_write") as dw:
        dw.execute(insert(items).values([row(1, 1), row(2, 2)]))
        assert snapshot(dw.backends.postgres) == snapshot(dw.backends.sqlite_read)
        with dw.backends.postgres.connect() as conn:
            where = conn.execute(
                text(
                    "SELECT table_schema FROM information_schema.tables "
                    "WHERE table_name = 'items' AND table_schema IN (:a, :b)"
                ),
                {"a": odd_schema, "b": settings.pg_schema},
            )
            assert where.scalars().all() == [odd_schema]  # not in the schema an unquoted name would fall back to


def test_sqlite_writers_of_one_process_queue_and_always_release(tmp_path: Any) -> None:
    """The in-process writer lock: concurrent writers all get through; a failed, rolled back or invalidated
    transaction releases it; a second write transaction in the same thread times out like SQLite would."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine, other = sqlite_engine(url, busy_ms=300), sqlite_engine(url, busy_ms=300)  # one file, one lock
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")

    def write(i: int) -> None:
        with (engine if i % 2 else other).begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", (i,))

    threads = [threading.Thread(target=lambda k=k: [write(k * 100 + j) for j in range(50)]) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")  # a duplicate: rolled back
    conn = engine.connect()
    trans = conn.begin()
    conn.invalidate()  # a broken connection mid-transaction: its DBAPI connection goes, unreturned
    trans.rollback()
    conn.close()
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 250
        with pytest.raises(OperationalError, match="locked"), other.begin():
            pass
    write(1000)  # everything was released
    engine.dispose()
    other.dispose()


def test_the_switch_to_wal_waits_for_the_applications_write_transaction(tmp_path: Any) -> None:
    """The application's file is in rollback-journal mode until our first connection switches it to WAL, and
    the application keeps writing meanwhile (`dualwrite init` under traffic): SQLite refuses the switch at
    once while another connection is inside a write transaction, without its busy handler. Our connection
    waits for that transaction to end, as a write would, and the file is in WAL after it."""
    path = tmp_path / "app.db"
    app = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    app.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    app.execute("BEGIN IMMEDIATE")
    app.execute("INSERT INTO notes (body) VALUES ('the application writes')")
    ended = threading.Timer(0.3, lambda: app.execute("COMMIT"))
    ended.start()
    engine = sqlite_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:  # before: OperationalError "database is locked", at once
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("SELECT body FROM notes").scalar() == "the application writes"
    finally:
        ended.join()
        engine.dispose()
        app.close()
    held = sqlite3.connect(path, isolation_level=None)  # one that does not end: the busy timeout, then the error
    assert held.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    held.execute("BEGIN IMMEDIATE")
    held.execute("INSERT INTO notes (body) VALUES ('held')")
    short = sqlite_engine(f"sqlite:///{path}", busy_ms=300)
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            short.connect().close()
    finally:
        short.dispose()
        held.close()

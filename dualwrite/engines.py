"""Engines for both backends, configured the same way everywhere (pragmas, search_path, pool)."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from dualwrite.errors import ConfigError
from dualwrite.settings import Settings, mask_url

# How long a SQLite writer waits for the file lock before failing (busy_timeout).
SQLITE_BUSY_MS = 10_000


def sqlite_engine(
    url: str, *, must_exist: bool = False, busy_ms: int = SQLITE_BUSY_MS, foreign_keys: bool = True
) -> Engine:
    """A write engine (BEGIN IMMEDIATE, WAL). foreign_keys=False for applying replicated row images."""
    path = url.removeprefix("sqlite:///")
    if must_exist:
        from pathlib import Path

        if not Path(path).is_file():
            raise ConfigError(f"sqlite: file {path!r} does not exist")
    engine = create_engine(url, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin, so BEGIN IMMEDIATE works.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    lock = _write_lock(path)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers of this process queue on a lock that wakes the next one the moment a commit is done,
        # instead of SQLite's busy handler, which polls with sleeps of up to 100 ms (a p99 of its own).
        sql = "BEGIN IMMEDIATE"
        try:
            if not lock.acquire(timeout=busy_ms / 1000):
                raise sqlite3.OperationalError("database is locked (by another writer of this process)")
            conn.info[_HELD] = lock
            # IMMEDIATE takes the write lock up front: no deadlock when a reader upgrades to a writer.
            conn.connection.dbapi_connection.execute(sql)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            _release(conn.info)
            raise DBAPIError.instance(sql, (), exc, sqlite3.Error) from exc

    @event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        # The event comes before SQLAlchemy's own commit: commit here, then let the next writer in
        # (SQLAlchemy's commit then finds no transaction and does nothing).
        if _HELD in conn.info:
            try:
                conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
            finally:
                _release(conn.info)

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Connection) -> None:
        if conn.invalidated:  # released when it was invalidated (below); SQLite rolled back with it
            return
        if _HELD in conn.info:
            try:
                conn.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
            finally:
                _release(conn.info)

    @event.listens_for(engine, "checkin")
    @event.listens_for(engine, "invalidate")
    def _gone(_dbapi_conn: object, record: Any, *_exc: object) -> None:
        _release(record.info)  # a connection lost or invalidated mid-transaction must not keep the lock

    return engine


_HELD = "dualwrite_write_lock"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _write_lock(path: str) -> threading.Lock:
    """One lock per database file in this process (shared by every write engine on it)."""
    if path in ("", ":memory:") or path.startswith("file:"):
        return threading.Lock()  # a private database: nobody to queue with
    key = os.path.realpath(path)
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _release(info: dict[Any, Any]) -> None:
    lock = info.pop(_HELD, None)
    if lock is not None:
        lock.release()


def sqlite_read_engine(url: str, busy_ms: int = SQLITE_BUSY_MS) -> Engine:
    """An engine whose transactions are deferred (readers never take the write lock)."""
    engine = create_engine(url, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")

    @event.listens_for(engine, "begin")
    def _begin(conn: object) -> None:
        conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    return engine


def search_path_option(schema: str) -> str:
    """The libpq `options` value that sets search_path to exactly `schema`: quoted as an identifier (any
    case, comma, quote or space survives), then backslash-escaped as the server splits options on spaces."""
    ident = '"' + schema.replace('"', '""') + '"'
    return "-csearch_path=" + ident.replace("\\", "\\\\").replace(" ", "\\ ")


def postgres_engine(
    url: str,
    schema: str = "public",
    *,
    pool_size: int = 10,
    replica: bool = False,
    autocommit: bool = False,
    pre_ping: bool = True,
) -> Engine:
    """replica=True: sessions run with session_replication_role=replica, so foreign-key triggers do not
    fire while replicated row images are applied (the primary enforced them; events of different tables
    may arrive before the history they refer to is copied). Needs a superuser; otherwise FKs stay on.
    autocommit=True (with pre_ping=False): for callers that send one self-contained statement and retry on
    a broken connection themselves; it then costs exactly one round trip (no ping, BEGIN or COMMIT)."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=pre_ping,
        connect_args={"options": search_path_option(schema), "connect_timeout": 5},
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    if replica:

        @event.listens_for(engine, "connect")
        def _replica(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            try:
                cur.execute("SET session_replication_role = replica")
            except Exception:  # noqa: BLE001 - not a superuser: keep FKs, apply order then matters
                dbapi_conn.rollback()  # type: ignore[attr-defined]
            else:
                dbapi_conn.commit()  # type: ignore[attr-defined]
            cur.close()

    return engine


def check_postgres(settings: Settings) -> str:
    """Connect once; return the server version or raise a one-line ConfigError."""
    engine = postgres_engine(settings.postgres_url, settings.pg_schema, pool_size=1)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("show server_version")).scalar())
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ConfigError(
            f"postgres: cannot connect to {mask_url(settings.postgres_url)} ({mask_text_safe(reason, settings)})"
        ) from None
    finally:
        engine.dispose()


def mask_text_safe(text_: str, settings: Settings) -> str:
    from dualwrite.settings import mask_text

    return mask_text(text_, [settings.password] if settings.password else None)

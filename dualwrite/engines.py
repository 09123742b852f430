"""Engines for both backends, configured the same way everywhere (pragmas, search_path, pool), and
`Backends`: every connection a process needs (six engines, Redis, the shared phase), built once from
Settings and handed to each role instead of a writer."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from dualwrite import metrics
from dualwrite.errors import ConfigError
from dualwrite.kept_connections import KeptConnections
from dualwrite.phase import PhaseStore
from dualwrite.phase_record import PhaseRecord
from dualwrite.retry import wal_switch
from dualwrite.settings import Settings, mask_text, mask_url

T = TypeVar("T")

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
        # an application's file is usually in rollback-journal mode until our first connection: the switch
        # waits out the application's write transactions (SQLite would refuse it at once)
        for attempt in wal_switch(busy_ms / 1000):
            with attempt:
                cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    lock = _write_lock(path)
    # BEGIN IMMEDIATE and the write lock through the dialect's do_begin/do_commit/do_rollback of this
    # engine, not engine events: any engine event makes every Connection build and consult a joined
    # event dispatcher, ~7% of a dual write's Python (profiled). SQLAlchemy calls them exactly where the
    # events fired (do_rollback not on an invalidated connection), and the pool's reset-on-return too.
    dialect: Any = engine.dialect
    dialect.do_begin = functools.partial(_begin_immediate, lock, busy_ms)
    dialect.do_commit = functools.partial(_end_held, "commit")
    dialect.do_rollback = functools.partial(_end_held, "rollback")

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


def _begin_immediate(lock: threading.Lock, busy_ms: int, fairy: Any) -> None:
    # Writers of this process queue on a lock that wakes the next one the moment a commit is done,
    # instead of SQLite's busy handler, which polls with sleeps of up to 100 ms (a p99 of its own).
    if not lock.acquire(timeout=busy_ms / 1000):
        raise sqlite3.OperationalError("database is locked (by another writer of this process)")
    fairy.info[_HELD] = lock
    try:
        # IMMEDIATE takes the write lock up front: no deadlock when a reader upgrades to a writer.
        fairy.dbapi_connection.execute("BEGIN IMMEDIATE")
    except BaseException:
        _release(fairy.info)
        raise  # SQLAlchemy wraps it (a DBAPIError), as for any do_begin


def _end_held(how: Literal["commit", "rollback"], fairy: Any) -> None:
    """End (commit or rollback) the transaction on `fairy` (the pool's connection), then let the next
    writer in if it held the write lock."""
    try:
        getattr(fairy.dbapi_connection, how)()
    finally:
        try:
            info = fairy.info
        except NotImplementedError:  # the engine's first-connect rollback: a bare connection, no lock held
            info = {}
        _release(info)


def read_rolled_back(engine: Engine, fn: Callable[[Connection], T]) -> T:
    """`fn` in one transaction on `engine`, rolled back: a read never commits (nor holds a snapshot open)."""
    with engine.connect() as conn:
        result = fn(conn)
        conn.rollback()
        return result


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


def search_path_option(schema: str, *more: str | None) -> str:
    """The libpq `options` value that sets search_path to exactly `schema` (then `more`, e.g. the state
    schema): each quoted as an identifier (any case, comma, quote or space survives), then
    backslash-escaped as the server splits options on spaces."""
    names = list(dict.fromkeys([schema, *(m for m in more if m)]))
    idents = ",".join('"' + s.replace('"', '""') + '"' for s in names)
    return "-csearch_path=" + idents.replace("\\", "\\\\").replace(" ", "\\ ")


# The one time-zone rule: a naive value of a timezone-aware column is UTC. Every Postgres session of
# dualwrite runs with this TimeZone, whatever the server's or the database's setting, so a naive value
# sent for a timestamptz column (SQLite hands them back for DateTime(timezone=True); the apply's casts,
# COPY's text) is read as UTC, and timestamptz values come back in UTC (doctor reports another setting).
SESSION_TIMEZONE = "UTC"


def session_options(schema: str, *more: str | None) -> str:
    """The libpq `options` of every dualwrite session: search_path (search_path_option) and TimeZone."""
    return f"{search_path_option(schema, *more)} -cTimeZone={SESSION_TIMEZONE}"


def postgres_engine(
    url: str,
    schema: str = "public",
    *,
    state_schema: str | None = None,
    pool_size: int = 5,
    max_overflow: int = 5,
    replica: bool = False,
    autocommit: bool = False,
    pre_ping: bool = True,
) -> Engine:
    """search_path: `schema`, then `state_schema` (where dualwrite's own tables live, see bookkeeping.py);
    TimeZone: UTC (SESSION_TIMEZONE).
    replica=True: sessions run with session_replication_role=replica, so foreign-key triggers do not
    fire while replicated row images are applied (the primary enforced them; events of different tables
    may arrive before the history they refer to is copied). Needs a superuser; otherwise FKs stay on.
    autocommit=True (with pre_ping=False): for callers that send one self-contained statement and retry on
    a broken connection themselves; it then costs exactly one round trip (no ping, BEGIN or COMMIT)."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        connect_args={"options": session_options(schema, state_schema), "connect_timeout": 5},
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


def pg_engine(settings: Settings, **kw: Any) -> Engine:
    """postgres_engine for these settings (URL, schema, state schema, pool); `kw` overrides the pool."""
    kw.setdefault("pool_size", settings.pool_size)
    kw.setdefault("max_overflow", settings.max_overflow)
    kw.setdefault("pre_ping", settings.pool_pre_ping)
    return postgres_engine(settings.postgres_url, settings.pg_schema, state_schema=settings.state_schema, **kw)


def open_redis(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """Every Redis client we open. redis-py (6+) retries a failed command three times with backoff by
    itself (4.6 s against a refused port, more when connecting times out), hidden under every retry
    policy of ours (retry.py); here it gets one immediate retry (a pooled connection the server closed is
    reopened at once), so an outage reaches our policies in milliseconds. `timeout` bounds connecting and
    each reply (a blocking read adds its own block time to it)."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1)
    )


def check_postgres(settings: Settings) -> str:
    """Connect once; return the server version or raise a one-line ConfigError."""
    engine = pg_engine(settings, pool_size=1)
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
    return mask_text(text_, [settings.password] if settings.password else None)


class Backends:
    """The connections of one process to SQLite, Postgres and Redis, and the shared phase (recorded in both
    databases, with Redis as its fast copy).

    - `sqlite`: writes (BEGIN IMMEDIATE, the in-process writer lock); `sqlite_apply`: the same with foreign
      keys off, for replicated images; `sqlite_read`: deferred transactions, never the write lock.
    - `postgres`: reads and primary writes; `postgres_apply`: session_replication_role = replica for
      replicated images; `postgres_direct`: the same in autocommit without pre-ping, for the one-statement
      inline apply (a broken connection fails the attempt, and the caller retries on a fresh one), whose
      connections `direct_kept` keeps between writes.
    Each Postgres pool is Settings.pool_size + max_overflow (pre-ping: Settings.pool_pre_ping); connections
    open on first use, so a role that never touches an engine costs nothing.
    """

    def __init__(
        self, settings: Settings, *, redis_client: redis.Redis | None = None, phases: PhaseStore | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis_client or open_redis(settings.redis_url)
        self.sqlite = sqlite_engine(settings.sqlite_url)
        self.sqlite_apply = sqlite_engine(settings.sqlite_url, foreign_keys=False)
        self.sqlite_read = sqlite_read_engine(settings.sqlite_url)
        self.postgres = pg_engine(settings)
        self.postgres_apply = pg_engine(settings, replica=True)
        self.postgres_direct = pg_engine(settings, replica=True, autocommit=True, pre_ping=False)
        # the inline apply's connections, kept between writes (no pool checkout and checkin per write)
        self.direct_kept = KeptConnections(self.postgres_direct, keep=settings.pool_size)
        # the phase of record in both databases, Redis its fast copy (phase.py, phase_record.py)
        record = PhaseRecord(
            readers={"sqlite": self.sqlite_read, "postgres": self.postgres},
            writers={"sqlite": self.sqlite, "postgres": self.postgres},
        )
        self.phases = phases or PhaseStore(
            self.redis, settings.namespace, cache_seconds=settings.phase_cache_seconds, record=record
        )

    def write_engine(self, backend: str) -> Engine:
        return self.sqlite if backend == "sqlite" else self.postgres

    def read_engine(self, backend: str) -> Engine:
        return self.sqlite_read if backend == "sqlite" else self.postgres

    def apply_engine(self, backend: str) -> Engine:
        return self.sqlite_apply if backend == "sqlite" else self.postgres_apply

    def timed_read(self, backend: str, store: str, query: str, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in a read transaction on `backend` (rolled back), timed in the read-latency histogram."""
        start = time.perf_counter()
        try:
            return read_rolled_back(self.read_engine(backend), fn)
        finally:
            metrics.READ_DURATION.labels(backend, store, query).observe(time.perf_counter() - start)

    def close(self) -> None:
        self.direct_kept.close()
        for engine in (self.sqlite, self.sqlite_apply, self.sqlite_read):
            engine.dispose()
        for engine in (self.postgres, self.postgres_apply, self.postgres_direct):
            engine.dispose()
        self.redis.close()

    # the context-manager protocol, as DualWriter has it: two owners, each closes its own
    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

"""The dual-write adapter: write the primary (with the outbox), then apply the row images to the other side.

    dw = DualWriter(settings)
    with dw.begin() as tx:
        rows = tx.execute(insert(items).values(...))        # full row images back
    # committed on the primary with its events; applied to the secondary; the relay publishes to Redis

The primary is the truth: if the secondary apply still fails after a brief retry, the write succeeds,
the failure is counted, and the replayer heals it from the stream (Settings.strict raises instead).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from sqlalchemy import Connection, Delete, Engine, Insert, Table, Update, false, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError

from dualwrite import cascade, metrics
from dualwrite.apply.rule import apply_events, pk_columns, plan_events, run_plan_direct
from dualwrite.bookkeeping import dialect_insert
from dualwrite.capture import (
    PrimaryMovedError,
    check_primary,
    events_from_images,
    events_from_rows,
    image_of,
    op_of,
    statement_table,
    with_returning,
    write_outbox,
)
from dualwrite.catalog import TableCatalog
from dualwrite.engines import postgres_engine, sqlite_engine, sqlite_read_engine
from dualwrite.events import ChangeEvent
from dualwrite.phase import Phase, PhaseStore
from dualwrite.settings import Settings
from dualwrite.stream.relay import Wakeup

log = logging.getLogger("dualwrite.adapter")
T = TypeVar("T")
# Attempts at the inline apply to the other side before the replayer is left to heal it.
APPLY_ATTEMPTS = 3
# How long a writer waits for a primary switch to finish before giving up.
SWITCH_WAIT_SECONDS = 15.0


@functools.cache
def _duration(backend: str, store: str, op: str) -> Any:
    """The labelled histogram child, looked up once (labels() costs more than observe())."""
    return metrics.WRITE_DURATION.labels(backend, store, op)


@functools.cache
def _events_written(backend: str) -> Any:
    return metrics.EVENTS_WRITTEN.labels(backend)


class SecondaryApplyError(RuntimeError):
    """Raised in strict mode when the other backend could not be written."""


class WriteTx:
    """One transaction on the primary. Every statement's row images become change events."""

    def __init__(self, dw: DualWriter, conn: Connection, phase: Phase) -> None:
        self.dw, self.connection, self.phase = dw, conn, phase
        self.events: list[ChangeEvent] = []
        self.ops: set[str] = set()

    def execute(
        self, stmt: Insert | Update | Delete, params: list[dict[str, Any]] | dict[str, Any] | None = None
    ) -> list[RowMapping]:
        table = statement_table(stmt)
        self.dw.catalog_check(table)
        before, watched, stmt = self._rows_before(stmt, table, params)
        result = (
            self.connection.execute(with_returning(stmt), params)
            if params
            else self.connection.execute(with_returning(stmt))
        )
        raw = result.all()
        rows = [r._mapping for r in raw]  # what the caller gets
        if watched:  # rows changed by the database's referential actions, which RETURNING does not report
            for child, op, image in cascade.changes_after(self.connection, watched, rows):
                self.events.extend(events_from_rows(child, op, [image]))  # type: ignore[list-item]
        if before and isinstance(stmt, Update):
            pk = pk_columns(table)
            after = {tuple(r[c] for c in pk) for r in rows}
            moved = [r for r in before if tuple(r[c] for c in pk) not in after]
            self.events.extend(events_from_rows(table, "delete", moved))
        self.events.extend(events_from_images(table, op_of(stmt), [image_of(table, r) for r in raw]))
        self.ops.add(stmt.__visit_name__)
        return rows

    def _rows_before(
        self, stmt: Insert | Update | Delete, table: Table, params: Any
    ) -> tuple[list[RowMapping] | None, cascade.Watch | None, Any]:
        """The rows a statement is about to change, read (locked) first when RETURNING is not enough: an
        UPDATE of a primary key (RETURNING only gives the new images, so the old key needs a delete) and
        any statement that fires referential actions (their rows are watched, see cascade.py).
        Returns them, the watch, and the statement to run."""
        refs = self.dw.catalog.referrers().get(table.name, [])
        if isinstance(stmt, Insert):
            cascade.refuse_upsert_into_referenced(stmt, table, refs)
            return None, None, stmt
        if isinstance(stmt, Delete):
            if not any(r.ondelete for r in refs):
                return None, None, stmt
            names: set[str] = set()
        else:
            values = list(stmt._values or {})  # noqa: SLF001 - the SET clause (values() and ordered_values())
            names = {str(getattr(k, "key", getattr(k, "name", k))) for k in values}
            if isinstance(params, dict):
                names |= set(params)
            referenced = {c for r in refs if r.onupdate for c in r.parent_cols}
            if not (set(pk_columns(table)) | referenced) & names:
                return None, None, stmt
        query = select(table)
        if stmt.whereclause is not None:
            query = query.where(stmt.whereclause)
        if self.connection.dialect.name == "postgresql":
            query = query.with_for_update(of=table)
        rows = [
            r for p in (params if isinstance(params, list) else [params or {}])
            for r in self.connection.execute(query, p).mappings()
        ]
        watched = cascade.watch(
            self.connection, self.dw.catalog.referrers(), table, rows, delete=isinstance(stmt, Delete), changed=names
        )
        if self.connection.dialect.name == "postgresql":
            # Read committed: the statement takes a new snapshot and could also reach rows committed after
            # the read above, whose old keys or cascades nobody saw. Confine it to the rows read (and locked).
            pk = pk_columns(table)
            keys = list(dict.fromkeys(tuple(r[c] for c in pk) for r in rows))
            stmt = stmt.where(cascade.key_in(self.connection, table, pk, keys) if keys else false())
        return rows, watched or None, stmt

    def upsert(
        self,
        table: Table,
        values: dict[str, Any] | list[dict[str, Any]],
        conflict: list[str],
        update: list[str] | None = None,
    ) -> list[RowMapping]:
        """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update (default: every other column)."""
        ins = dialect_insert(self.connection, table).values(values)
        cols = (
            update
            if update is not None
            else [c.name for c in table.columns if c.name not in conflict and c.name not in pk_columns(table)]
        )
        stmt = (
            ins.on_conflict_do_update(index_elements=conflict, set_={c: ins.excluded[c] for c in cols})
            if cols
            else ins.on_conflict_do_nothing(index_elements=conflict)
        )
        rows = self.execute(stmt)
        self.ops.discard("insert")
        self.ops.add("upsert")
        return rows


class DualWriter:
    def __init__(
        self,
        settings: Settings,
        *,
        catalog: TableCatalog | None = None,
        redis_client: redis.Redis | None = None,
        phases: PhaseStore | None = None,
        relay: bool = False,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or TableCatalog.default()
        names = [t.name for t in self.catalog.tables()]
        metrics.prime(stores={self.catalog.store(n) for n in names}, tables=names)  # 0, not "No data"
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        self.phases = phases or PhaseStore(self.redis, settings.namespace, cache_seconds=settings.phase_cache_seconds)
        self.sqlite = sqlite_engine(settings.sqlite_url)
        self.sqlite_apply = sqlite_engine(settings.sqlite_url, foreign_keys=False)
        self.sqlite_read = sqlite_read_engine(settings.sqlite_url)
        self.postgres = postgres_engine(settings.postgres_url, settings.pg_schema)
        self.postgres_apply = postgres_engine(settings.postgres_url, settings.pg_schema, replica=True)
        # The inline apply of one write is usually one statement: autocommit and no ping make it one round
        # trip (a broken connection fails the attempt, and _apply_secondary retries on a fresh one).
        self.postgres_direct = postgres_engine(
            settings.postgres_url, settings.pg_schema, replica=True, autocommit=True, pre_ping=False
        )
        self.reader: Any = None  # a shadow reader may be installed (shadow/ package); see read()
        self.committed = Wakeup()  # notified after every commit (wakes the relays)
        self._relay: Any = None
        self._phase_shown = ""
        if relay:
            self.start_relay()

    # -- engines ---------------------------------------------------------------------------------
    def write_engine(self, backend: str) -> Engine:
        return self.sqlite if backend == "sqlite" else self.postgres

    def read_engine(self, backend: str) -> Engine:
        return self.sqlite_read if backend == "sqlite" else self.postgres

    def catalog_check(self, table: Table) -> None:
        self.catalog.table(table.name)  # raises UnknownTableError: uncaptured tables would be lost on replay

    # -- writes ----------------------------------------------------------------------------------
    @contextmanager
    def begin(self) -> Iterator[WriteTx]:
        conn, phase = self._open_primary()
        tx = WriteTx(self, conn, phase)
        start = time.perf_counter()
        try:
            yield tx
            write_outbox(conn, tx.events)
            conn.commit()
        except BaseException:
            conn.rollback()
            conn.close()
            raise
        conn.close()
        primary_s = time.perf_counter() - start
        store = self.catalog.store(tx.events[0].table) if tx.events else "none"
        op = next(iter(tx.ops)) if len(tx.ops) == 1 else "tx"
        _duration(phase.primary, store, op).observe(primary_s)
        if tx.events:
            _events_written(phase.primary).inc(len(tx.events))
            self.committed.notify()  # the relay publishes in its own thread, never on this path
            if phase.secondary:
                self._apply_secondary(phase.secondary, tx.events, store, op)
        _duration("dual", store, op).observe(time.perf_counter() - start)

    def execute(self, stmt: Insert | Update | Delete, params: Any = None) -> list[RowMapping]:
        with self.begin() as tx:
            return tx.execute(stmt, params)

    def session(self, **session_kw: Any) -> Any:
        """An ORM Session whose flushes are captured (see orm.py); commits when the block ends."""
        from dualwrite.orm import capture_session

        return capture_session(self, **session_kw)

    def _open_primary(self) -> tuple[Connection, Phase]:
        deadline = time.monotonic() + SWITCH_WAIT_SECONDS
        fresh = False
        while True:
            phase = self.phases.current(fresh=fresh)
            if phase.name != self._phase_shown:
                metrics.set_phase(phase.name)
                self._phase_shown = phase.name
            conn = self.write_engine(phase.primary).connect()
            try:
                conn.begin()
                if check_primary(conn):
                    return conn, phase
            except BaseException:
                conn.close()
                raise
            conn.rollback()
            conn.close()
            if time.monotonic() > deadline:
                raise PrimaryMovedError(
                    f"{phase.primary} is not the primary and no switch completed in {SWITCH_WAIT_SECONDS:.0f}s"
                )
            fresh = True
            time.sleep(0.02)

    def _apply_secondary(self, backend: str, events: list[ChangeEvent], store: str, op: str) -> None:
        start = time.perf_counter()
        try:
            # a brief retry (10 ms, then 20 ms) for a dropped connection or a deadlock; a plain loop, since
            # a retry library's per-call setup costs more than the rest of this method
            for attempt in range(APPLY_ATTEMPTS):
                try:
                    self.apply(backend, events)
                    break
                except DBAPIError:
                    if attempt == APPLY_ATTEMPTS - 1:
                        raise
                    time.sleep(0.01 * 2**attempt)
        except Exception as exc:
            metrics.SECONDARY_FAILURES.labels(store).inc()
            log.warning(
                "secondary apply to %s failed for %d event(s) (seq %d-%d); the replayer will heal: %s",
                backend,
                len(events),
                events[0].seq,
                events[-1].seq,
                str(exc).splitlines()[0][:300],
            )
            if self.settings.strict:
                raise SecondaryApplyError(f"apply to {backend} failed: {str(exc).splitlines()[0]}") from exc
        finally:
            _duration(backend, store, op).observe(time.perf_counter() - start)

    def apply(self, backend: str, events: list[ChangeEvent]) -> None:
        """Apply events to `backend` in one transaction with the ordered, idempotent rule."""
        if backend == "sqlite":
            with self.sqlite_apply.begin() as conn:
                apply_events(conn, self.catalog.table, events)
            return
        # autocommit: a single statement is atomic on its own; more get BEGIN/COMMIT on their first and last
        run_plan_direct(self.postgres_direct, plan_events(self.postgres_direct, self.catalog.table, events))

    # -- reads -----------------------------------------------------------------------------------
    def read(
        self,
        store: str,
        query: str,
        fn: Callable[[Connection], T],
        *,
        params: dict[str, Any] | None = None,
        ordered: bool = True,
    ) -> T:
        """Run a read on the backend the phase names; a shadow reader (if installed) may compare it."""
        phase = self.phases.current()
        if self.reader is not None:
            return self.reader.read(self, phase, store, query, fn, params=params, ordered=ordered)
        return self.timed_read(phase.reads, store, query, fn)

    def timed_read(self, backend: str, store: str, query: str, fn: Callable[[Connection], T]) -> T:
        start = time.perf_counter()
        try:
            with self.read_engine(backend).connect() as conn:
                result = fn(conn)
                conn.rollback()
                return result
        finally:
            metrics.READ_DURATION.labels(backend, store, query).observe(time.perf_counter() - start)

    # -- relay and lifecycle ---------------------------------------------------------------------
    def start_relay(self) -> None:
        from dualwrite.stream.relay import Relay

        if self._relay is None:
            self._relay = Relay.for_writer(self)
            self._relay.start()

    def stop_relay(self) -> None:
        if self._relay is not None:
            self._relay.stop()
            self._relay = None

    def close(self) -> None:
        self.stop_relay()
        for engine in (self.sqlite, self.sqlite_apply, self.sqlite_read):
            engine.dispose()
        for engine in (self.postgres, self.postgres_apply, self.postgres_direct):
            engine.dispose()
        self.redis.close()

    def __enter__(self) -> DualWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

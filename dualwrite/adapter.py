"""The dual-write adapter: write the primary (with the outbox), then apply the row images to the other side.

    dw = DualWriter(settings, tables=Tables.of(Base.metadata))
    with dw.begin() as tx:
        rows = tx.execute(insert(items).values(...))        # full row images back
    with dw.session() as session:                           # ORM code, captured the same way
        session.add(Item(...))
    notes = dw.read("notes", "recent", lambda conn: conn.execute(select(notes_t)).all())
    # committed on the primary with its events; applied to the secondary; the relay publishes to Redis

The primary is the truth: if the secondary apply still fails after a brief retry, the write succeeds,
the failure is counted, and the replayer heals it from the stream. With Settings.write_behind
(DUALWRITE_WRITE_BEHIND=1), while reads come from the primary, the other side is not applied inline at
all: the replayer applies it from the stream (README: Write-behind, its consistency rules).

Strict mode (Settings.strict, DUALWRITE_STRICT=1) applies to the other side BEFORE the primary commits,
in a transaction of its own that is committed right after the primary's: if that apply fails (after the
same brief retry) the primary is rolled back and SecondaryApplyError is raised, so nothing is committed
anywhere and a retry by the application is safe; if the primary's commit fails, the other side's is
rolled back. Once the primary has committed the write is never reported as failed: should the other
side's COMMIT itself fail then (its connection lost in that instant), the failure is counted and logged
and the replayer heals it, as outside strict mode. The cost: the primary's write lock (SQLite's database
lock, Postgres' `last_seq` row, which every writer takes) is held across the other side's apply and
commit, so strict writes are serialised over one more round trip each.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Delete, Insert, Update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError

from dualwrite import metrics
from dualwrite.apply.rule import apply_events, plan_events, run_plan_direct
from dualwrite.capture import WriteTx, check_primary, write_outbox
from dualwrite.engines import Backends
from dualwrite.errors import PrimaryMovedError, SecondaryApplyError, first_line
from dualwrite.events import ChangeEvent
from dualwrite.fence import FenceMember
from dualwrite.phase import Phase
from dualwrite.retry import SECONDARY_APPLY, SECONDARY_APPLY_AGAIN, primary_switch
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay, Wakeup
from dualwrite.tables import Tables

log = logging.getLogger("dualwrite.adapter")
T = TypeVar("T")
# How long a writer waits for a primary switch to finish before giving up.
SWITCH_WAIT_SECONDS = 15.0
_SWITCH_WAIT = primary_switch(SWITCH_WAIT_SECONDS)


@functools.cache
def _duration(backend: str, store: str, op: str) -> Any:
    """The labelled histogram child, looked up once (labels() costs more than observe())."""
    return metrics.WRITE_DURATION.labels(backend, store, op)


@functools.cache
def _events_written(backend: str) -> Any:
    return metrics.EVENTS_WRITTEN.labels(backend)


def _secondary_behind(what: str, backend: str, events: list[ChangeEvent], store: str, exc: Exception) -> None:
    """The other side failed after the primary committed: not the application's failure (its write is
    committed), so counted and logged; the replayer heals it."""
    metrics.SECONDARY_FAILURES.labels(store).inc()
    log.warning(
        "%s on %s failed after the primary committed %d event(s) (seq %d-%d); the replayer will heal: %s",
        what,
        backend,
        len(events),
        events[0].seq,
        events[-1].seq,
        first_line(exc, 300),
    )


def _in_read_session(fn: Callable[[Any], T], session_kw: dict[str, Any]) -> Callable[[Connection], T]:
    """`fn(session)` as a `fn(connection)`: a fresh read-only Session on the read connection per call (so
    a shadow comparison's control and candidate never share objects). A partial of a module-level
    function, so it pickles whenever `fn` does (comparator="process" compares it in its own process)."""
    return functools.partial(_run_in_session, fn, session_kw)


def _run_in_session(fn: Callable[[Any], T], session_kw: dict[str, Any], conn: Connection) -> T:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    session = Session(bind=conn, autoflush=False, **session_kw)
    event.listen(session, "before_flush", _refuse_flush)
    try:
        return fn(session)
    finally:
        session.close()  # the objects are detached with what they loaded (close() does not expire them)


def _refuse_flush(_session: Any, _ctx: Any, _objs: Any) -> None:
    raise ValueError("a dw.read(..., orm=True) session is read-only: write with dw.session() or dw.begin()")


class DualWriter:
    """Writes through the primary with change capture and applies them to the other side; reads from the
    backend the phase names. `tables` are the application's captured tables (anything `Tables.of`
    takes); a statement on any other table is refused, since its changes could never be replayed."""

    def __init__(
        self,
        settings: Settings,
        tables: Tables | Any,
        *,
        backends: Backends | None = None,
        relay: bool = False,
        fence: bool = True,
    ) -> None:
        self.settings = settings
        self.tables = tables if isinstance(tables, Tables) else Tables.of(tables)
        names = self.tables.names()
        metrics.prime(stores={self.tables.store(n) for n in names}, tables=names)  # 0, not "No data"
        self.backends = backends or Backends(settings)
        self.phases = self.backends.phases
        self.reader: Any = None  # a shadow reader may be installed (dualwrite.shadow); see read()
        self.committed = Wakeup()  # notified after every commit (wakes the relays)
        self._relay: Relay | None = None
        self._phase_shown = ""
        # a member of the write fence (fence.py): a flip that moves the primary or the reads pauses this
        # process' writes for a bounded moment; after it, the new phase is read before they go on
        self.fence: FenceMember | None = None
        if fence:
            self.fence = FenceMember(
                self.backends.redis, settings.namespace, on_lift=lambda: self.phases.current(fresh=True)
            )
            self.fence.start()
        if relay:
            self.start_relay()

    # -- writes ----------------------------------------------------------------------------------
    @contextmanager
    def begin(self) -> Iterator[WriteTx]:
        fence = self.fence
        if fence is not None:
            fence.enter()  # waits while a flip's write fence stands (bounded)
        try:
            with self._begin() as tx:
                yield tx
        finally:
            if fence is not None:
                fence.exit()

    @contextmanager
    def _begin(self) -> Iterator[WriteTx]:
        conn, phase = self._open_primary()
        tx = WriteTx(conn, phase, self.tables)
        start = time.perf_counter()
        held: Connection | None = None  # strict mode: the other side's open transaction
        try:
            yield tx
            write_outbox(conn, tx.events)
            if self.settings.strict and phase.secondary and tx.events:
                held = self._prepare_secondary(phase.secondary, tx.events)  # raises: nothing committed
            conn.commit()
        except BaseException:
            if held is not None:
                held.close()  # rolls the other side's transaction back
            conn.rollback()
            conn.close()
            raise
        conn.close()
        primary_s = time.perf_counter() - start
        store = self.tables.store(tx.events[0].table) if tx.events else "none"
        op = next(iter(tx.ops)) if len(tx.ops) == 1 else "tx"
        _duration(phase.primary, store, op).observe(primary_s)
        if tx.events:
            _events_written(phase.primary).inc(len(tx.events))
            self.committed.notify()  # the relay publishes in its own thread, never on this path
            if held is not None:
                self._commit_secondary(held, phase.secondary or "", tx.events, store)
            elif phase.secondary and not (self.settings.write_behind and phase.reads == phase.primary):
                # write-behind (while reads come from the primary): the replayer applies it from the stream
                self._apply_secondary(phase.secondary, tx.events, store, op)
                # the whole write, both sides: only when there was a second side (none in sqlite/postgres)
                _duration("dual", store, op).observe(time.perf_counter() - start)

    def execute(self, stmt: Insert | Update | Delete, params: Any = None) -> list[RowMapping]:
        with self.begin() as tx:
            return tx.execute(stmt, params)

    @contextmanager
    def session(self, **session_kw: Any) -> Iterator[Any]:
        """An ORM Session joined to one primary write transaction, whose flushes are captured (see orm.py);
        flushed and committed when the block ends, then applied to the other side."""
        from dualwrite.orm import captured_session

        with self.begin() as tx, captured_session(tx, **session_kw) as session:
            yield session

    def _open_primary(self) -> tuple[Connection, Phase]:
        fresh, last = [False], [""]  # after the first miss: re-read the phase from its record

        def attempt() -> tuple[Connection, Phase] | None:
            phase = self.phases.current(fresh=fresh[0], verify=fresh[0])  # after a fence: the record decides
            if phase.name != self._phase_shown:
                metrics.follow_phase(self.phases, phase.name)
                self._phase_shown = phase.name
            conn = self.backends.write_engine(phase.primary).connect()
            try:
                conn.begin()
                if check_primary(conn):
                    return conn, phase
            except BaseException:
                conn.close()
                raise
            conn.rollback()
            conn.close()
            fresh[0] = True
            last[0] = phase.primary
            return None

        opened = attempt()  # the common case, without tenacity's per-call bookkeeping
        if opened is None:
            opened = _SWITCH_WAIT(attempt)
        if opened is None:
            raise PrimaryMovedError(
                f"{last[0]} is not the primary and no switch completed in {SWITCH_WAIT_SECONDS:.0f}s"
            )
        return opened

    def _apply_secondary(self, backend: str, events: list[ChangeEvent], store: str, op: str) -> None:
        start = time.perf_counter()
        try:
            # a brief retry for a dropped connection or a deadlock (retry.SECONDARY_APPLY's three tries)
            try:
                self.apply(backend, events)
            except DBAPIError:
                SECONDARY_APPLY_AGAIN(self.apply, backend, events)
        except Exception as exc:
            _secondary_behind("secondary apply", backend, events, store, exc)
        finally:
            _duration(backend, store, op).observe(time.perf_counter() - start)

    def _prepare_secondary(self, backend: str, events: list[ChangeEvent]) -> Connection:
        """Strict mode, before the primary commits: apply `events` to `backend` in a transaction that is
        left open (the caller commits it after the primary). Raises SecondaryApplyError after the brief
        retry; the caller then rolls the primary back."""

        def prepare() -> Connection:
            conn = self.backends.apply_engine(backend).connect()
            try:
                conn.begin()
                apply_events(conn, self.tables.table, events)
            except BaseException:
                conn.close()
                raise
            return conn

        # unreachable, a dropped connection, a deadlock: tried again briefly; the events cannot be applied
        # (schema drift, an unknown table): not
        try:
            return SECONDARY_APPLY(prepare)
        except Exception as exc:  # noqa: BLE001 - any failure rolls the primary back (SecondaryApplyError)
            metrics.SECONDARY_FAILURES.labels(self.tables.store(events[0].table)).inc()
            raise SecondaryApplyError(
                f"strict: apply to {backend} failed, so the write was rolled back and nothing committed: "
                f"{first_line(exc)}"
            ) from exc

    def _commit_secondary(self, conn: Connection, backend: str, events: list[ChangeEvent], store: str) -> None:
        """Strict mode, after the primary committed: commit the other side. A failure now is not the
        application's (its write is committed): counted and logged; the replayer heals it."""
        try:
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - never report a committed write as failed
            _secondary_behind("strict: commit", backend, events, store, exc)
        finally:
            conn.close()

    def apply(self, backend: str, events: list[ChangeEvent]) -> None:
        """Apply events to `backend` in one transaction with the ordered, idempotent rule."""
        if backend == "sqlite":
            with self.backends.sqlite_apply.begin() as conn:
                apply_events(conn, self.tables.table, events)
            return
        # autocommit: a single statement is atomic on its own; more get BEGIN/COMMIT on their first and last
        direct = self.backends.postgres_direct
        run_plan_direct(direct, plan_events(direct, self.tables.table, events), self.backends.direct_kept)

    # -- reads -----------------------------------------------------------------------------------
    def read(
        self,
        store: str,
        query: str,
        fn: Callable[[Any], T],
        *,
        params: dict[str, Any] | None = None,
        ordered: bool = True,
        orm: bool = False,
        **session_kw: Any,
    ) -> T:
        """Run `fn` in a read transaction on the backend the phase names; a shadow reader (if installed)
        may run it on the other backend too and compare the results.

        `fn` gets a Connection, or with `orm=True` an ORM Session bound to that connection (`session_kw`
        go to the Session): `lambda s: s.scalars(select(Note)).all()` returns Note objects, compared by
        their mapped values. The session is read-only (a flush raises) and closed when `fn` returns; the
        objects keep what was loaded (load relationships inside `fn`, e.g. with selectinload)."""
        if orm:
            fn = _in_read_session(fn, session_kw)
        elif session_kw:
            raise TypeError(f"read() got session options {sorted(session_kw)} without orm=True")
        phase = self.phases.current()
        if self.reader is not None:
            return self.reader.read(self.backends, phase, store, query, fn, params=params, ordered=ordered)
        return self.backends.timed_read(phase.reads, store, query, fn)

    # -- relay and lifecycle ---------------------------------------------------------------------
    def start_relay(self) -> None:
        if self._relay is None:
            self._relay = Relay.for_backends(self.backends, wakeup=self.committed)
            self._relay.start()

    def stop_relay(self) -> None:
        if self._relay is not None:
            self._relay.stop()
            self._relay = None

    def close(self) -> None:
        if self.fence is not None:
            self.fence.close()
        self.stop_relay()
        self.backends.close()

    # The context-manager protocol on close(), as Backends has it (both are closed by their owner or a `with`).
    def __enter__(self) -> DualWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

"""The one apply rule, used by the inline dual write, the replayer and the backfill.

A row image with version v is applied iff v > the key's version in `_dw_versions`; a delete with version
d likewise (the version row stays behind as the tombstone). The key's version row holds the maximum of
"the row's seq" and "the tombstone's seq" of the design notes, so one comparison covers both. Equal
versions are no-ops: duplicates and replays change nothing, and arrival order does not matter.

Race-freedom: the decision is taken by one statement, `INSERT INTO _dw_versions ... ON CONFLICT DO UPDATE
SET seq = new WHERE seq < new RETURNING pk`. Two transactions touching the same key (a live event and a
backfill chunk, or two replayers) meet on that unique index: the second waits for the first to commit
and then sees its version, so an older image can never land after a newer one, nor resurrect a delete.
On Postgres an upsert's claim and the write of the keys it won are one statement (see applysql.py); a
delete's are two in one transaction (a DELETE inside the claim's statement would only see that statement's
snapshot and miss a row an older apply committed while the claim waited). On SQLite the claim runs first
and the winners are written in the same transaction.

Unique constraints: a batch a unique constraint refuses (two rows exchanging a value inside one transaction)
is applied again event by event in seq order, and an image that collides with a newer row is stale (see
uniques.py): neither fails the inline apply nor makes a dead letter.

Foreign keys are not enforced while applying (the apply engines of db.py: Postgres sessions run with
session_replication_role = replica, as logical replication does; SQLite's has foreign_keys off): the
primary already enforced them, and events of different tables may arrive before the history they refer
to has been copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import DBAPIError

from dualwrite.apply.statements import MAX_PARAMS, TableSQL, pk_columns, statements
from dualwrite.apply.uniques import is_unique_violation, superseded
from dualwrite.errors import DualwriteError
from dualwrite.events import ChangeEvent, key_text

if TYPE_CHECKING:
    from dualwrite.kept_connections import KeptConnections

__all__ = [
    "ApplyResult",
    "Plan",
    "apply_events",
    "apply_snapshot_rows",
    "pk_columns",
    "plan_events",
    "run_plan",
    "run_plan_direct",
]

TableLookup = Callable[[str], Table]
Item = tuple[list[Any], str, int]  # (bound values: image or key, key text, version)


@dataclass
class ApplyResult:
    applied: int = 0
    stale: int = 0  # older than or equal to what the target already reflects

    def __iadd__(self, other: ApplyResult) -> ApplyResult:
        self.applied += other.applied
        self.stale += other.stale
        return self


@dataclass
class Plan:
    """Deduplicated work per table: deletes are run before upserts (a key freed by a delete can then be
    reused by another row's image, e.g. under a unique index)."""

    deletes: list[tuple[TableSQL, list[Item]]] = field(default_factory=list)
    upserts: list[tuple[TableSQL, list[Item]]] = field(default_factory=list)
    superseded: int = 0  # events dropped because a newer event of their key is in the same batch
    events: list[ChangeEvent] = field(default_factory=list)  # the batch, for the ordered retry (uniques.py)

    def statement_count(self) -> int:
        """Statements on Postgres (a delete takes two: claim, then delete; SQLite is in-process)."""
        return sum(len(_parts(sql, op, items)) * (2 if op == "delete" else 1) for op, sql, items in self.groups())

    def groups(self) -> Iterable[tuple[str, TableSQL, list[Item]]]:
        for sql, items in self.deletes:
            yield "delete", sql, items
        for sql, items in self.upserts:
            yield "upsert", sql, items


def _parts(sql: TableSQL, op: str, items: list[Item]) -> list[list[Item]]:
    size = max(1, MAX_PARAMS // sql.width(op))
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan_events(conn: Connection | Engine, lookup: TableLookup, events: Sequence[ChangeEvent]) -> Plan:
    """Keep the newest event per key (the rest are superseded or duplicates) and bind its values."""
    plan = Plan()
    latest: dict[tuple[str, str], ChangeEvent] = {}
    pks: dict[str, tuple[str, ...]] = {}
    for ev in events:
        pk = pks.get(ev.table)
        if pk is None:
            pk = pks[ev.table] = pk_columns(lookup(ev.table))
        key = (ev.table, key_text([ev.key[c] for c in pk]))
        prev = latest.get(key)
        if prev is None or ev.seq > prev.seq:
            if prev is not None:
                plan.superseded += 1
            latest[key] = ev
        else:
            plan.superseded += 1
    plan.events = list(events)
    by_table: dict[tuple[str, str], list[Item]] = {}
    tables = {name: statements.get(conn, lookup(name)) for name in pks}
    # key order: concurrent appliers lock version rows in the same order (fewer deadlocks)
    for (tname, ktext), ev in sorted(latest.items()):
        sql = tables[tname]
        if ev.op == "delete":
            values = sql.key_params(ev.key)
        elif ev.image is None:
            raise DualwriteError(f"upsert event {ev.id} for table {tname!r} has no row image")
        else:
            values = sql.image_params(ev.image)
        by_table.setdefault((ev.op, tname), []).append((values, ktext, ev.seq))
    for (op, tname), items in by_table.items():
        (plan.deletes if op == "delete" else plan.upserts).append((tables[tname], items))
    return plan


def run_plan(conn: Connection, plan: Plan, *, own_transaction: bool = False) -> ApplyResult:
    """Execute a plan inside the caller's transaction. own_transaction=True: `conn` is in autocommit and
    the plan brings its own BEGIN/COMMIT, riding on its first and last statements (no extra round trips)."""
    return _run(_SAExec(conn), plan, own_transaction)


def run_plan_direct(engine: Engine, plan: Plan, kept: KeptConnections | None = None) -> ApplyResult:
    """run_plan on a connection of an autocommit engine, straight through the driver: the inline apply of
    one write is one statement, and SQLAlchemy's execution machinery would cost a fifth of its round trip.
    kept: the engine's kept connections (kept_connections.py), to take the connection from and give it back to."""
    if kept is not None and kept.engine is not engine:
        kept = None
    raw = engine.raw_connection() if kept is None else kept.take()
    # a ranged table's shared lock (ranges.py) must be held in the claim's transaction: psycopg2 sends it
    # in the claim's own string (one implicit transaction); other drivers need BEGIN .. COMMIT around both
    locks = engine.dialect.driver != "psycopg2" and any(sql.lock_sql for _op, sql, _i in plan.groups())
    try:
        return _run(_RawExec(engine, raw), plan, plan.statement_count() > 1 or locks)
    finally:
        if kept is None:
            raw.close()
        else:
            kept.give(raw)


def _run(ex: _SAExec | _RawExec, plan: Plan, own: bool) -> ApplyResult:
    """The plan as one statement per table and op; if a unique constraint refuses it, the batch again
    event by event in seq order (uniques.py). In the caller's transaction that retry needs a savepoint
    around the first attempt: taken only when an event's table has a unique constraint besides its key."""
    groups = list(plan.groups())
    in_callers_tx = isinstance(ex, _SAExec) and not own
    guard = in_callers_tx and bool(plan.events) and any(sql.has_uniques for _op, sql, _i in groups)
    result = ApplyResult(stale=plan.superseded)
    run = _Runner(ex, own)
    if guard:
        ex(f"SAVEPOINT {_SAVEPOINT}")
    try:
        for i, (op, sql, items) in enumerate(groups):
            try:
                won = _run_group(run, op, sql, items, last=i == len(groups) - 1)
            except DBAPIError as exc:
                if not is_unique_violation(exc):
                    statements.forget(ex.engine, sql.table)  # the table may have changed: re-read its catalog
                raise
            result.applied += won
            result.stale += len(items) - won
        run.finish()
    except DBAPIError as exc:
        if not (plan.events and is_unique_violation(exc)) or (in_callers_tx and not guard):
            run.abort()
            raise
        if guard:
            ex(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        else:
            run.abort()  # autocommit or our own transaction: nothing of the attempt is left
        return _run_ordered(ex, plan, groups, begin=not in_callers_tx)
    except BaseException:
        run.abort()
        raise
    if guard:
        ex(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return result


_SAVEPOINT = "dw_apply"


def _run_ordered(
    ex: _SAExec | _RawExec, plan: Plan, groups: list[tuple[str, TableSQL, list[Item]]], *, begin: bool
) -> ApplyResult:
    """Every event of the batch on its own, in seq order (the primary's order of valid states), each in a
    savepoint so that an image a newer row supersedes (uniques.superseded) is skipped as stale."""
    by_name = {sql.name: sql for _op, sql, _items in groups}
    result = ApplyResult()
    run = _Runner(ex, False)
    if begin:
        ex("BEGIN")
    try:
        for ev in sorted(plan.events, key=lambda e: e.seq):
            sql = by_name[ev.table]
            values = sql.key_params(ev.key) if ev.op == "delete" else sql.image_params(ev.image or {})
            item = (values, key_text([ev.key[c] for c in sql.pk]), ev.seq)
            ex(f"SAVEPOINT {_SAVEPOINT}_ev")
            try:
                won = _run_group(run, ev.op, sql, [item], last=False)
            except DBAPIError as exc:
                if not is_unique_violation(exc):
                    raise
                ex(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}_ev")
                if not superseded(ex, exc, sql, values, ev.seq):
                    raise
                won = 0  # stale: a newer row holds the value (see uniques.py)
            ex(f"RELEASE SAVEPOINT {_SAVEPOINT}_ev")
            result.applied += won
            result.stale += 1 - won
        if begin:
            ex("COMMIT")
    except BaseException:
        if begin:
            try:
                ex("ROLLBACK")
            except Exception:  # noqa: BLE001 - a broken connection: never reuse it
                ex.invalidate()
        raise
    return result


class _SAExec:
    def __init__(self, conn: Connection) -> None:
        self.conn, self.engine, self.info, self.driver = conn, conn.engine, conn.info, conn.dialect.driver

    def __call__(self, sql: str, params: Any = None) -> list[Any]:
        res = self.conn.exec_driver_sql(sql, params) if params is not None else self.conn.exec_driver_sql(sql)
        return res.fetchall() if res.returns_rows else []

    def invalidate(self) -> None:
        self.conn.invalidate()


class _RawExec:
    def __init__(self, engine: Engine, raw: Any) -> None:
        self.engine, self.raw, self.info, self.driver = engine, raw, raw.info, engine.dialect.driver

    def __call__(self, sql: str, params: Any = None) -> list[Any]:
        dialect = self.engine.dialect
        cur = self.raw.cursor()
        try:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
        except dialect.loaded_dbapi.Error as exc:  # raised as SQLAlchemy would: retries and callers see DBAPIError
            gone = dialect.is_disconnect(exc, self.raw.dbapi_connection, cur)
            if gone:
                self.raw.invalidate(exc)
            raise DBAPIError.instance(
                sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone, dialect=dialect
            ) from exc
        finally:
            cur.close()

    def invalidate(self) -> None:
        self.raw.invalidate()


class _Runner:
    def __init__(self, ex: _SAExec | _RawExec, own: bool) -> None:
        self.ex, self.own, self.open, self.committed = ex, own, False, False
        # psycopg2 binds client side, so one execute may carry several commands (and it never prepares on
        # its own); psycopg 3 binds on the server, one command per execute, and prepares repeated ones itself
        self.psycopg2 = ex.driver == "psycopg2"

    def __call__(
        self, sql: str, params: Any, op: Any = None, *, commit: bool = False, lock: str | None = None
    ) -> list[Any]:
        """The statement's rows. op: its preparable form. commit=True: the caller needs no result from
        this statement, so COMMIT may follow it. lock: a statement to run first, in its own snapshot (a
        ranged table's shared lock, ranges.py)."""
        prepared = None
        if op is not None and self.psycopg2:
            names = self.ex.info.setdefault(_PREPARED, {"gen": 0, "names": set()})
            name = f"{op.name}_{names['gen']}"
            if name in names["names"]:
                sql = f"EXECUTE {name}{op.execute}"
            else:
                sql, prepared = f"PREPARE {name}{op.prepare}; EXECUTE {name}{op.execute}", name
        if lock is not None and self.psycopg2:
            sql = f"{lock}; {sql}"  # one round trip; each statement of the string gets its own snapshot
        if self.own and not self.open:
            self.open = True
            if self.psycopg2:
                sql = "BEGIN; " + sql
            else:
                self.ex("BEGIN")
        if lock is not None and not self.psycopg2:
            self.ex(lock)
        commits = self.own and commit and self.psycopg2
        if commits:
            sql += "; COMMIT"
        try:
            rows = self.ex(sql, params)
        except BaseException:
            if op is not None and self.psycopg2:  # whatever was prepared, use fresh names from now on
                names["gen"] += 1
                names["names"].clear()
            raise  # the COMMIT did not run (the server skips the rest of a failed string): abort() rolls back
        self.committed = self.committed or commits
        if prepared:
            names["names"].add(prepared)
        return rows

    def finish(self) -> None:
        if self.open and not self.committed:
            self.ex("COMMIT")

    def abort(self) -> None:
        if self.open and not self.committed:
            try:
                self.ex("ROLLBACK")
            except Exception:  # noqa: BLE001 - a broken connection: never reuse it
                self.ex.invalidate()


_PREPARED = "dualwrite_prepared"


def _run_group(run: _Runner, op: str, sql: TableSQL, items: list[Item], *, last: bool) -> int:
    won = 0
    if sql.postgres:
        parts = _parts(sql, op, items)
        lock = sql.lock_sql  # taken again by each part: a lock already held is granted at once
        for j, part in enumerate(parts):
            if op == "upsert":
                won += int(run(*sql.pg_upsert(part), lock=lock)[0][0])
                continue
            keys = {r[0] for r in run(*sql.pg_delete_claim(part), lock=lock)}
            winners = [item for item in part if item[1] in keys]
            if winners:
                run(*sql.pg_delete_rows(winners), commit=last and j == len(parts) - 1)
            won += len(winners)
        return won
    winners: set[str] = set()
    for part in _parts(sql, op, items):
        flat: list[Any] = []
        for _values, ktext, seq in part:
            flat += (sql.name, ktext, seq)
        text = sql.claim_head + ", ".join([sql.claim_row] * len(part)) + sql.claim_tail
        winners.update(r[0] for r in run(text, tuple(flat)))
    rows = [tuple(values) for values, ktext, _seq in items if ktext in winners]
    if rows:
        run(sql.upsert_sql if op == "upsert" else sql.delete_sql, rows)
    return len(rows)


def apply_events(conn: Connection, lookup: TableLookup, events: Sequence[ChangeEvent]) -> ApplyResult:
    """Apply change events (any tables, any order, duplicates allowed) inside the caller's transaction."""
    return run_plan(conn, plan_events(conn, lookup, events))


def apply_snapshot_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], version: int) -> ApplyResult:
    """Apply rows read from the primary in one snapshot that reflects every change up to `version`."""
    sql = statements.get(conn, table)
    keyed = {key_text([r[c] for c in sql.pk]): r for r in rows}
    items = [(sql.image_params(r), k, version) for k, r in sorted(keyed.items())]
    plan = Plan(upserts=[(sql, items)] if items else [])
    return run_plan(conn, plan)

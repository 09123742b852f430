"""The one apply rule, used by the inline dual write, the replayer and the backfill.

A row image with version v is applied iff v > the key's version in `_dw_versions`; a delete with version
d likewise (the version row stays behind as the tombstone). The key's version row holds the maximum of
"the row's seq" and "the tombstone's seq" of the design notes, so one comparison covers both. Equal
versions are no-ops: duplicates and replays change nothing, and arrival order does not matter.

Race-freedom: the decision is taken by one statement, `INSERT INTO _dw_versions ... ON CONFLICT DO UPDATE
SET seq = new WHERE seq < new RETURNING pk`. Two transactions touching the same key (a live event and a
backfill chunk, or two replayers) meet on that unique index: the second waits for the first to commit
and then sees its version, so an older image can never land after a newer one, nor resurrect a delete.
On Postgres the claim and the write of the keys it won are one statement (see applysql.py); on SQLite
the claim runs first and the winners are written in the same transaction.

Foreign keys are not enforced while applying (the apply engines of db.py: Postgres sessions run with
session_replication_role = replica, as logical replication does; SQLite's has foreign_keys off): the
primary already enforced them, and events of different tables may arrive before the history they refer
to has been copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError

from dualwrite.applysql import MAX_PARAMS, SchemaDriftError, TableSQL, pk_columns, statements
from dualwrite.errors import DualwriteError
from dualwrite.events import ChangeEvent, key_text

__all__ = [
    "ApplyResult",
    "Plan",
    "SchemaDriftError",
    "apply_events",
    "apply_snapshot_rows",
    "pk_columns",
    "plan_events",
    "run_plan",
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

    def statement_count(self) -> int:
        """Round trips on Postgres (SQLite is in-process)."""
        return sum(len(_parts(sql, op, items)) for op, sql, items in self.groups())

    def groups(self) -> Iterable[tuple[str, TableSQL, list[Item]]]:
        for sql, items in self.deletes:
            yield "delete", sql, items
        for sql, items in self.upserts:
            yield "upsert", sql, items


def _parts(sql: TableSQL, op: str, items: list[Item]) -> list[list[Item]]:
    size = max(1, MAX_PARAMS // sql.width(op))
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan_events(conn: Connection, lookup: TableLookup, events: Sequence[ChangeEvent]) -> Plan:
    """Keep the newest event per key (the rest are superseded or duplicates) and bind its values."""
    plan = Plan()
    latest: dict[tuple[str, str], ChangeEvent] = {}
    pks: dict[str, tuple[str, ...]] = {}
    for ev in events:
        pk = pks.get(ev.table)
        if pk is None:
            pk = pks[ev.table] = pk_columns(lookup(ev.table))
        key = (ev.table, ev.key_text(pk))
        prev = latest.get(key)
        if prev is None or ev.seq > prev.seq:
            if prev is not None:
                plan.superseded += 1
            latest[key] = ev
        else:
            plan.superseded += 1
    by_table: dict[tuple[str, str], list[Item]] = {}
    # key order: concurrent appliers lock version rows in the same order (fewer deadlocks)
    for (tname, ktext), ev in sorted(latest.items()):
        sql = statements.get(conn, lookup(tname))
        if ev.op == "delete":
            values = sql.key_params(ev.key)
        elif ev.image is None:
            raise DualwriteError(f"upsert event {ev.id} for table {tname!r} has no row image")
        else:
            values = sql.image_params(ev.image)
        by_table.setdefault((ev.op, tname), []).append((values, ktext, ev.seq))
    tables = {name: statements.get(conn, lookup(name)) for _, name in by_table}
    for (op, tname), items in by_table.items():
        (plan.deletes if op == "delete" else plan.upserts).append((tables[tname], items))
    return plan


def run_plan(conn: Connection, plan: Plan) -> ApplyResult:
    """Execute a plan inside the caller's transaction (or alone, in autocommit, if it is one statement)."""
    result = ApplyResult(stale=plan.superseded)
    for op, sql, items in plan.groups():
        try:
            won = _run_group(conn, op, sql, items)
        except DBAPIError:
            statements.forget(conn, sql.table)  # the table may have changed under us: re-read its catalog
            raise
        result.applied += won
        result.stale += len(items) - won
    return result


def _run_group(conn: Connection, op: str, sql: TableSQL, items: list[Item]) -> int:
    won = 0
    if sql.postgres:
        for part in _parts(sql, op, items):
            text, params = sql.pg_upsert(part) if op == "upsert" else sql.pg_delete(part)
            won += int(conn.exec_driver_sql(text, tuple(params)).scalar_one())
        return won
    winners: set[str] = set()
    for part in _parts(sql, op, items):
        flat: list[Any] = []
        for _values, ktext, seq in part:
            flat += (sql.name, ktext, seq)
        text = sql.claim_head + ", ".join([sql.claim_row] * len(part)) + sql.claim_tail
        winners.update(r[0] for r in conn.exec_driver_sql(text, tuple(flat)))
    rows = [tuple(values) for values, ktext, _seq in items if ktext in winners]
    if rows:
        conn.exec_driver_sql(sql.upsert_sql if op == "upsert" else sql.delete_sql, rows)
    return len(rows)


def apply_events(conn: Connection, lookup: TableLookup, events: Sequence[ChangeEvent]) -> ApplyResult:
    """Apply change events (any tables, any order, duplicates allowed) inside the caller's transaction."""
    return run_plan(conn, plan_events(conn, lookup, events))


def apply_snapshot_rows(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], version: int
) -> ApplyResult:
    """Apply rows read from the primary in one snapshot that reflects every change up to `version`."""
    sql = statements.get(conn, table)
    keyed = {key_text([r[c] for c in sql.pk]): r for r in rows}
    items = [(sql.image_params(r), k, version) for k, r in sorted(keyed.items())]
    plan = Plan(upserts=[(sql, items)] if items else [])
    return run_plan(conn, plan)


def claim_versions(conn: Connection, table: str, keyed: Sequence[tuple[str, int]]) -> set[str]:
    """Record the versions (key text, seq) that are newer than this side's; return the keys that won
    (the caller then writes exactly the winners). Keys must be unique within `keyed`."""
    from dualwrite.internal import dialect_insert, versions

    won: set[str] = set()
    step = MAX_PARAMS // 3
    for i in range(0, len(keyed), step):
        ins = dialect_insert(conn, versions).values([{"tbl": table, "pk": k, "seq": s} for k, s in keyed[i : i + step]])
        stmt = ins.on_conflict_do_update(
            index_elements=["tbl", "pk"], set_={"seq": ins.excluded.seq}, where=versions.c.seq < ins.excluded.seq
        ).returning(versions.c.pk)
        won.update(conn.execute(stmt).scalars())
    return won

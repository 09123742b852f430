"""The one apply rule, used by the inline dual write, the replayer and the backfill.

A row image with version v is applied iff v > the key's version in `_dw_versions`; a delete with version
d likewise (the version row stays behind as the tombstone). The key's version row holds the maximum of
"the row's seq" and "the tombstone's seq" of the design notes, so one comparison covers both. Equal
versions are no-ops: duplicates and replays change nothing, and arrival order does not matter.

Race-freedom: the decision is taken by one statement, `INSERT INTO _dw_versions ... ON CONFLICT DO UPDATE
SET seq = new WHERE seq < new RETURNING pk`. Two transactions touching the same key (a live event and a
backfill chunk, or two replayers) meet on that unique index: the second waits for the first to commit
and then sees its version, so an older image can never land after a newer one, nor resurrect a delete.

Foreign keys are not enforced while applying (the apply engines of db.py: Postgres sessions run with
session_replication_role = replica, as logical replication does; SQLite's has foreign_keys off): the
primary already enforced them, and events of different tables may arrive before the history they refer
to has been copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, or_, tuple_

from dualwrite.events import ChangeEvent, key_text
from dualwrite.internal import dialect_insert, versions

TableLookup = Callable[[str], Table]
# Bind parameters per statement, well under SQLite's 32766 and Postgres' 65535.
MAX_PARAMS = 30_000


@dataclass
class ApplyResult:
    applied: int = 0
    stale: int = 0  # older than or equal to what the target already reflects

    def __iadd__(self, other: ApplyResult) -> ApplyResult:
        self.applied += other.applied
        self.stale += other.stale
        return self


def pk_columns(table: Table) -> tuple[str, ...]:
    cols = tuple(c.name for c in table.primary_key.columns)
    if not cols:
        raise ValueError(f"table {table.name!r} has no primary key; dualwrite needs one to version rows")
    return cols


def _chunks(items: Sequence[Any], width: int) -> Iterable[Sequence[Any]]:
    size = max(1, MAX_PARAMS // max(1, width))
    for i in range(0, len(items), size):
        yield items[i : i + size]


def claim_versions(conn: Connection, table: str, keyed: Sequence[tuple[str, int]]) -> set[str]:
    """Record the versions (key text, seq) that are newer than this side's; return the keys that won.

    The caller then writes exactly the winners. Keys must be unique within `keyed`.
    """
    won: set[str] = set()
    for part in _chunks(keyed, 3):
        ins = dialect_insert(conn, versions).values([{"tbl": table, "pk": k, "seq": s} for k, s in part])
        stmt = ins.on_conflict_do_update(
            index_elements=["tbl", "pk"],
            set_={"seq": ins.excluded.seq},
            where=versions.c.seq < ins.excluded.seq,
        ).returning(versions.c.pk)
        won.update(conn.execute(stmt).scalars())
    return won


def upsert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or fully overwrite rows by primary key (the caller has already won their versions)."""
    if not rows:
        return
    pk = pk_columns(table)
    cols = [c.name for c in table.columns]
    for part in _chunks(rows, len(cols)):
        values = [{c: r.get(c) for c in cols} for r in part]
        ins = dialect_insert(conn, table).values(values)
        update = {c: ins.excluded[c] for c in cols if c not in pk}
        stmt = (
            ins.on_conflict_do_update(index_elements=list(pk), set_=update)
            if update
            else ins.on_conflict_do_nothing(index_elements=list(pk))
        )
        conn.execute(stmt)


def delete_keys(conn: Connection, table: Table, keys: Sequence[dict[str, Any]]) -> None:
    if not keys:
        return
    pk = pk_columns(table)
    for part in _chunks(keys, len(pk)):
        if len(pk) == 1:
            col = table.c[pk[0]]
            cond = col.in_([k[pk[0]] for k in part])
        elif conn.dialect.name == "postgresql":
            cond = tuple_(*(table.c[c] for c in pk)).in_([tuple(k[c] for c in pk) for k in part])
        else:
            cond = or_(*(and_(*(table.c[c] == k[c] for c in pk)) for k in part))
        conn.execute(delete(table).where(cond))


def apply_events(conn: Connection, lookup: TableLookup, events: Sequence[ChangeEvent]) -> ApplyResult:
    """Apply change events (any tables, any order, duplicates allowed) inside the caller's transaction."""
    result = ApplyResult()
    # Only the newest event per key matters; the rest are superseded (or duplicates).
    latest: dict[tuple[str, str], ChangeEvent] = {}
    tables: dict[str, Table] = {}
    for ev in events:
        table = tables.get(ev.table)
        if table is None:
            table = tables[ev.table] = lookup(ev.table)
        key = (ev.table, ev.key_text(pk_columns(table)))
        prev = latest.get(key)
        if prev is None or ev.seq > prev.seq:
            if prev is not None:
                result.stale += 1
            latest[key] = ev
        else:
            result.stale += 1
    by_table: dict[str, list[tuple[str, ChangeEvent]]] = {}
    for (tname, ktext), ev in sorted(latest.items(), key=lambda kv: kv[1].seq):
        by_table.setdefault(tname, []).append((ktext, ev))
    upserts: list[tuple[Table, list[dict[str, Any]]]] = []
    for tname, items in by_table.items():
        table = tables[tname]
        won = claim_versions(conn, tname, [(k, ev.seq) for k, ev in items])
        winners = [ev for k, ev in items if k in won]
        result.applied += len(winners)
        result.stale += len(items) - len(winners)
        # Deletes before upserts, so a key freed by a delete can be reused by another row's image.
        delete_keys(conn, table, [ev.key for ev in winners if ev.op == "delete"])
        upserts.append((table, [ev.image for ev in winners if ev.op == "upsert" and ev.image is not None]))
    for table, rows in upserts:
        upsert_rows(conn, table, rows)
    return result


def apply_snapshot_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], version: int) -> ApplyResult:
    """Apply rows read from the primary in one snapshot that reflects every change up to `version`."""
    pk = pk_columns(table)
    keyed = {key_text([r[c] for c in pk]): r for r in rows}
    won = claim_versions(conn, table.name, [(k, version) for k in keyed])
    upsert_rows(conn, table, [r for k, r in keyed.items() if k in won])
    return ApplyResult(applied=len(won), stale=len(keyed) - len(won))

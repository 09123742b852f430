"""`dualwrite backfill reset`: the rollback of a failed load — delete the target rows the backfill wrote,
then forget its checkpoints, leases and recorded chunk versions.

Which rows: each chunk's version S is recorded in `_dw_backfill_versions` with the chunk (checkpoint.py).
A key whose `_dw_versions` seq is one of its table's recorded versions was last written by a backfill
chunk; a key a live event changed afterwards carries that event's (other) seq and is kept. One case is
ambiguous: the live event whose seq is exactly S, on a key of the same table (at most one key per recorded
version, as every event has its own seq). Its row is the very image the chunk read and SQLite still holds
it, so deleting it too loses nothing that the next copy does not bring back.

Ranged tables (apply/ranges.py): a row covered by a range version was written by the chunk of that
range unless its own version is newer than every range covering it (a live change after the copy); those
rows go first, in batches holding the table's range lock exclusively, then the table's ranges.

Only keys whose row exists are touched: a version entry without a row is a tombstone (a delete whose seq
happens to equal a chunk's S) and is kept, or an older event could resurrect the row. A row and its
version entry go in the same transaction, in batches that lock the version entries first (the order the
apply rule locks in), so a live event on one of these keys waits, then applies as new.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, MetaData, Table, bindparam, inspect, select, text, tuple_

from dualwrite.apply import ranges
from dualwrite.apply.rule import pk_columns
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.cursor import decode_key
from dualwrite.bookkeeping import has_state_table, versions
from dualwrite.retry import transient_db

log = logging.getLogger("dualwrite.backfill.reset")

# Phases in which Postgres serves reads or is the primary: deleting rows there would lose answers.
ROWS_LOCKED_PHASES = ("postgres_reads", "postgres_primary", "postgres")
_CANDIDATES = text(
    "SELECT v.pk FROM _dw_versions v WHERE v.tbl = :t AND v.pk > :after"
    " AND v.seq IN (SELECT b.seq FROM _dw_backfill_versions b WHERE b.tbl = :t)"
    " ORDER BY v.pk LIMIT :n FOR UPDATE OF v"
)


@dataclass
class TableRollback:
    table: str
    deleted: int = 0
    kept: int = 0  # backfill-versioned keys without a row (tombstones), left as they are


def _ranged_rows(table: Table, prep: object, *, count: bool = False) -> str:
    """Rows of a ranged table covered by a range and not changed since (no own version above it)."""
    key = prep.quote(table.c[ranges.ranged_key(table)].name)  # type: ignore[attr-defined]
    target = prep.format_table(table)  # type: ignore[attr-defined]
    cover = f"(SELECT max(r.seq) FROM {ranges.RANGES} r WHERE r.tbl = :t AND r.span @> CAST(a.{key} AS bigint))"
    head = "SELECT count(*)" if count else f"SELECT a.{key}"
    tail = "" if count else f" AND a.{key} > :after ORDER BY a.{key} LIMIT :n FOR UPDATE OF a"
    return (
        f"{head} FROM {target} a WHERE {cover} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM _dw_versions v "
        f"WHERE v.tbl = :t AND v.pk = '[' || a.{key} || ']' AND v.seq > {cover}){tail}"
    )


def _has_ranges(conn: Connection, table: Table) -> bool:
    if ranges.ranged_key(table) is None or conn.dialect.name != "postgresql":
        return False
    if ranges.located(conn) is None:
        return False
    return bool(
        conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {ranges.RANGES} WHERE tbl = :t)"), {"t": table.name}).scalar()
    )


def _reflect(conn: Connection, name: str) -> Table | None:
    return Table(name, MetaData(), autoload_with=conn) if inspect(conn).has_table(name) else None


def tables_with_progress(engine: Engine) -> list[str]:
    """Tables that have a checkpoint or recorded chunk versions (none before any backfill: nothing is created)."""
    names: set[str] = set()
    with engine.connect() as conn:
        if has_state_table(conn, ckpt.checkpoints.name):
            names |= set(conn.execute(select(ckpt.checkpoints.c.tbl)).scalars())
        if has_state_table(conn, ckpt.chunk_versions.name):
            names |= set(conn.execute(select(ckpt.chunk_versions.c.tbl).distinct()).scalars())
        conn.rollback()
    return sorted(names)


def count_candidates(engine: Engine, table: str) -> int:
    """Keys last written by a backfill chunk (an upper bound of the rows reset deletes)."""
    with engine.connect() as conn:
        n = conn.execute(
            text(
                "SELECT count(*) FROM _dw_versions v WHERE v.tbl = :t"
                " AND v.seq IN (SELECT b.seq FROM _dw_backfill_versions b WHERE b.tbl = :t)"
            ),
            {"t": table},
        ).scalar()
        reflected = _reflect(conn, table)
        if reflected is not None and _has_ranges(conn, reflected):
            n = (n or 0) + conn.execute(
                text(_ranged_rows(reflected, conn.dialect.identifier_preparer, count=True)), {"t": table}
            ).scalar()
        conn.rollback()
    return int(n or 0)


def delete_backfill_rows(
    engine: Engine, name: str, batch: int = 5000, progress: Callable[[TableRollback], None] | None = None
) -> TableRollback:
    """Delete `name`'s rows the backfill wrote, and their version entries (`engine`: an apply engine, so
    foreign-key triggers stay off as during the copy). The table is reflected from Postgres."""
    out = TableRollback(name)
    with engine.connect() as conn:
        table = _reflect(conn, name)
        ranged = table is not None and _has_ranges(conn, table)
        conn.rollback()
    if table is None:  # never created on Postgres: only version entries can be left
        return out
    if ranged:
        _delete_ranged(engine, table, batch, out, progress)

    def one_batch(after: str) -> tuple[str, bool]:
        with engine.begin() as conn:
            return _batch(conn, table, after, batch, out)

    retrying = transient_db(5, f"backfill reset {name}: batch", log)  # a deadlock with a live event
    after = ""
    while True:
        after, done = retrying(one_batch, after)
        if progress is not None:
            progress(out)
        if done:
            return out


def _delete_ranged(
    engine: Engine, table: Table, batch: int, out: TableRollback, progress: Callable[[TableRollback], None] | None
) -> None:
    """The rows the chunks of a ranged table wrote, then its ranges (each batch under the range lock)."""
    key = table.c[ranges.ranged_key(table) or ""]

    def one_batch(after: int) -> list[int]:
        with engine.begin() as conn:
            conn.exec_driver_sql(ranges.exclusive_lock_sql(ranges.located(conn) or "", table.name))
            params = {"t": table.name, "after": after, "n": batch}
            found = list(conn.execute(text(_ranged_rows(table, conn.dialect.identifier_preparer)), params).scalars())
            if found:
                conn.execute(table.delete().where(key.in_(found)))
                pks = [f"[{k}]" for k in found]
                conn.execute(versions.delete().where(versions.c.tbl == table.name, versions.c.pk.in_(pks)))
            else:  # every row of the ranges is gone: the ranges go too
                conn.execute(text(f"DELETE FROM {ranges.RANGES} WHERE tbl = :t"), {"t": table.name})
            return found

    retrying = transient_db(5, f"backfill reset {table.name}: ranged batch", log)
    after = -(2**63)
    while found := retrying(one_batch, after):
        out.deleted += len(found)
        if progress is not None:
            progress(out)
        after = found[-1]


def _batch(conn: Connection, table: Table, after: str, n: int, out: TableRollback) -> tuple[str, bool]:
    pks = list(conn.execute(_CANDIDATES, {"t": table.name, "after": after, "n": n}).scalars())
    if not pks:
        return after, True
    keys = {decode_key(pk): pk for pk in pks}
    cols = [table.c[c] for c in pk_columns(table)]
    target = cols[0] if len(cols) == 1 else tuple_(*cols)
    wanted = [k[0] for k in keys] if len(cols) == 1 else list(keys)
    found = conn.execute(select(*cols).where(target.in_(wanted)).with_for_update()).all()
    # Compared as Python values: a key that does not round-trip equal is kept, never half-deleted.
    matched = [keys[tuple(r)] for r in found if tuple(r) in keys]
    if matched:
        doomed = [decode_key(pk) for pk in matched]
        conn.execute(table.delete().where(target.in_([k[0] for k in doomed] if len(cols) == 1 else doomed)))
        conn.execute(
            versions.delete().where(versions.c.tbl == table.name, versions.c.pk.in_(bindparam("pks", expanding=True))),
            {"pks": matched},
        )
    out.deleted += len(matched)
    out.kept += len(pks) - len(matched)
    return pks[-1], len(pks) < n

"""Per-table backfill checkpoints in Postgres, written in the SAME transaction as each chunk.

So a worker killed at any point resumes exactly after the last committed chunk. Each chunk's version S is
also recorded in `_dw_backfill_versions` (same transaction): a target row whose `_dw_versions` seq is one
of them was last written by the backfill, which is how `backfill reset` finds the rows it may delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    MetaData,
    Table,
    Text,
    and_,
    case,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dualwrite.bookkeeping import has_state_table, in_state_schema

# The backfill's own tables, declared as bookkeeping.py declares dualwrite's: alike in shape, not logic.
checkpoint_metadata = MetaData()

checkpoints = Table(
    "_dw_backfill_checkpoints",
    checkpoint_metadata,
    Column("tbl", Text, primary_key=True),
    Column("last_key", Text),  # JSON list of the last copied primary key values (events.key_text form)
    Column("rows_copied", BigInteger, nullable=False, default=0),
    Column("rows_rejected", BigInteger, nullable=False, default=0),
    Column("status", Text, nullable=False),  # copying | done
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # progress for `status`, and the lease head (leases.py)
    Column("started_at", DateTime(timezone=True)),
    Column("rate", Float),  # rows/s, moving average over recent chunks of every worker
    Column("claimed_key", Text),  # last key of the furthest lease handed out
    Column("claims", BigInteger, nullable=False, server_default="0"),  # leases handed out so far
    Column("claimed_all", Boolean, nullable=False, server_default="false"),  # the open-ended last lease is out
)
# shaped like bookkeeping.py's tables: the backfill's own, nothing shared
chunk_versions = Table(
    "_dw_backfill_versions",
    checkpoint_metadata,
    Column("tbl", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
)
# Ranges of a table handed to workers (leases.py); rows are deleted once the checkpoint's frontier passes them.
leases = Table(
    "_dw_backfill_leases",
    checkpoint_metadata,
    Column("tbl", Text, primary_key=True),
    Column("n", BigInteger, primary_key=True),  # claim order = key order
    Column("after_key", Text),  # exclusive lower bound (None: the table's start)
    Column("upto_key", Text),  # inclusive upper bound (None: the table's end)
    Column("owner", BigInteger),  # advisory-lock id of the worker holding it
    Column("owner_name", Text),
    Column("expires_at", DateTime(timezone=True)),
    Column("state", Text, nullable=False),  # claimed | done
)
# A pause longer than this between two chunks (a restart) does not drag the moving rate towards 0.
RATE_GAP_S = 60.0


@dataclass
class Checkpoint:
    table: str
    last_key: str | None = None
    rows_copied: int = 0
    rows_rejected: int = 0
    status: str = "pending"
    updated_at: datetime | None = None
    started_at: datetime | None = None
    rate: float | None = None
    version: int | None = None  # the version S of the chunk being saved (recorded, not stored here)


def ensure(engine: Engine) -> None:
    """Create the backfill's tables in the state schema if missing."""
    with engine.begin() as conn:
        # Two workers starting together would both try CREATE TABLE (the loser fails on pg_type).
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('dualwrite.backfill.ensure'))"))
        checkpoint_metadata.create_all(in_state_schema(conn), checkfirst=True)


def load(conn: Connection, table: str) -> Checkpoint:
    row = conn.execute(select(checkpoints).where(checkpoints.c.tbl == table)).mappings().first()
    if row is None:
        return Checkpoint(table)
    return Checkpoint(
        table,
        row["last_key"],
        row["rows_copied"],
        row["rows_rejected"],
        row["status"],
        row["updated_at"],
        row["started_at"],
        row["rate"],
    )


def save(conn: Connection, cp: Checkpoint) -> None:
    cp.updated_at = datetime.now(UTC)
    values = {
        "tbl": cp.table,
        "last_key": cp.last_key,
        "rows_copied": cp.rows_copied,
        "rows_rejected": cp.rows_rejected,
        "status": cp.status,
        "updated_at": cp.updated_at,
    }
    ins = pg_insert(checkpoints).values(values | {"started_at": cp.updated_at})
    set_ = {k: ins.excluded[k] for k in values}
    set_["started_at"] = func.coalesce(checkpoints.c.started_at, ins.excluded.started_at)
    set_["rate"] = moving_rate(ins.excluded.rows_copied - checkpoints.c.rows_copied, ins.excluded.updated_at)
    conn.execute(ins.on_conflict_do_update(index_elements=["tbl"], set_=set_))
    record_version(conn, cp.table, cp.version)


def moving_rate(delta_rows: Any, now: Any) -> Any:
    """The new `rate` of a checkpoint row gaining delta_rows at `now` (an UPDATE's SET expression)."""
    dt = func.extract("epoch", now - checkpoints.c.updated_at)
    inst = delta_rows / func.nullif(dt, 0)
    return case(
        (and_(dt > 0, dt < RATE_GAP_S), func.coalesce(0.7 * checkpoints.c.rate + 0.3 * inst, inst)),
        else_=checkpoints.c.rate,
    )


def record_version(conn: Connection, table: str, version: int | None) -> None:
    if version is not None:
        ins = pg_insert(chunk_versions).values(tbl=table, seq=version)
        conn.execute(ins.on_conflict_do_nothing())


def load_all(engine: Engine) -> dict[str, Checkpoint]:
    ensure(engine)
    with engine.connect() as conn:
        names = conn.execute(select(checkpoints.c.tbl)).scalars().all()
        out = {n: load(conn, n) for n in names}
        conn.rollback()
    return out


def statuses(conn: Connection) -> dict[str, str]:
    """Table -> checkpoint status ('copying' or 'done'), read-only: {} before any backfill ran."""
    if not has_state_table(conn, checkpoints.name):
        return {}
    return {str(t): str(s) for t, s in conn.execute(select(checkpoints.c.tbl, checkpoints.c.status)).all()}


def reset(engine: Engine, tables: list[str] | None = None) -> int:
    """Forget the progress of `tables` (all if None): checkpoints, leases and recorded chunk versions."""
    ensure(engine)
    with engine.begin() as conn:
        for book in (leases, chunk_versions):
            stmt = delete(book)
            conn.execute(stmt.where(book.c.tbl.in_(tables)) if tables else stmt)
        stmt = delete(checkpoints)
        if tables:
            stmt = stmt.where(checkpoints.c.tbl.in_(tables))
        return conn.execute(stmt).rowcount or 0

"""Per-table backfill checkpoints in Postgres, written in the SAME transaction as each chunk.

So a worker killed at any point resumes exactly after the last committed chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Connection, DateTime, Engine, MetaData, Table, Text, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

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
)


@dataclass
class Checkpoint:
    table: str
    last_key: str | None = None
    rows_copied: int = 0
    rows_rejected: int = 0
    status: str = "pending"
    updated_at: datetime | None = None


def ensure(engine: Engine) -> None:
    with engine.begin() as conn:
        checkpoint_metadata.create_all(conn, checkfirst=True)


def load(conn: Connection, table: str) -> Checkpoint:
    row = conn.execute(select(checkpoints).where(checkpoints.c.tbl == table)).mappings().first()
    if row is None:
        return Checkpoint(table)
    return Checkpoint(
        table, row["last_key"], row["rows_copied"], row["rows_rejected"], row["status"], row["updated_at"]
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
    ins = pg_insert(checkpoints).values(values)
    conn.execute(ins.on_conflict_do_update(index_elements=["tbl"], set_={k: ins.excluded[k] for k in values}))


def load_all(engine: Engine) -> dict[str, Checkpoint]:
    ensure(engine)
    with engine.connect() as conn:
        names = conn.execute(select(checkpoints.c.tbl)).scalars().all()
        out = {n: load(conn, n) for n in names}
        conn.rollback()
    return out


def reset(engine: Engine, tables: list[str] | None = None) -> int:
    ensure(engine)
    with engine.begin() as conn:
        stmt = delete(checkpoints)
        if tables:
            stmt = stmt.where(checkpoints.c.tbl.in_(tables))
        return conn.execute(stmt).rowcount or 0

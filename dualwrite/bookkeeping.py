"""The bookkeeping tables dualwrite keeps on BOTH backends (either can be primary or secondary).

- `_dw_outbox`: change events written in the same transaction as the change (primary side).
- `_dw_versions`: per (table, key) the `seq` of the last event (or backfill chunk) applied to this side.
  The row outlives a delete, so it is also the tombstone; its unique index is what serialises a live
  event and a backfill chunk that touch the same key (see apply.py).
- `_dw_meta`: `last_seq` (the sequence high-water mark, bumped under a row lock at commit so seq order
  is commit order) and `is_primary` (1 on the side that accepts writes; the fence for a primary switch).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from dualwrite.demo.app.base import UTCDateTime

internal_metadata = MetaData()

Seq = BigInteger().with_variant(Integer, "sqlite")

outbox = Table(
    "_dw_outbox",
    internal_metadata,
    Column("seq", Seq, primary_key=True, autoincrement=False),
    Column("id", String(32), nullable=False),
    Column("tbl", Text, nullable=False),
    Column("op", String(8), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

versions = Table(
    "_dw_versions",
    internal_metadata,
    Column("tbl", Text, primary_key=True),
    Column("pk", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

meta = Table(
    "_dw_meta",
    internal_metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


def dialect_insert(conn: Connection | Engine, table: Table):  # type: ignore[no-untyped-def]
    """INSERT with ON CONFLICT support for the connection's dialect."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def create_internal(conn: Connection, *, primary: bool) -> None:
    """Create the bookkeeping tables if missing and seed `_dw_meta` (idempotent)."""
    internal_metadata.create_all(conn, checkfirst=True)
    ins = dialect_insert(conn, meta)
    conn.execute(ins.values(name="last_seq", value=0).on_conflict_do_nothing(index_elements=["name"]))
    conn.execute(
        ins.values(name="is_primary", value=1 if primary else 0).on_conflict_do_nothing(index_elements=["name"])
    )


def read_meta(conn: Connection, name: str) -> int | None:
    return conn.execute(select(meta.c.value).where(meta.c.name == name)).scalar()


def write_meta(conn: Connection, name: str, value: int) -> None:
    ins = dialect_insert(conn, meta).values(name=name, value=value)
    conn.execute(ins.on_conflict_do_update(index_elements=["name"], set_={"value": value}))

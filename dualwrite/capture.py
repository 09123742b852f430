"""Change capture on the primary: statements run with RETURNING, row images turned into events, and the
events written to the outbox in the same transaction with their commit-ordered `seq`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Delete, Insert, Table, Update, select, update
from sqlalchemy.engine import RowMapping

from dualwrite.apply import pk_columns
from dualwrite.events import ChangeEvent
from dualwrite.internal import dialect_insert, meta, outbox
from dualwrite.stores.base import utcnow

TENANT_COLUMNS = ("tenant_id", "tenant")


class PrimaryMovedError(RuntimeError):
    """The backend this transaction began on is no longer the primary (a switch is under way)."""


def statement_table(stmt: Insert | Update | Delete) -> Table:
    table = stmt.table
    if not isinstance(table, Table):
        raise TypeError("dualwrite captures statements on a plain Table (not a join or alias)")
    return table


def with_returning(stmt: Insert | Update | Delete) -> Insert | Update | Delete:
    if stmt._returning:  # noqa: SLF001 - the adapter owns RETURNING; a user's would be replaced silently
        raise ValueError("do not add .returning(): the adapter returns the full row images itself")
    return stmt.returning(*statement_table(stmt).columns)


def op_of(stmt: Insert | Update | Delete) -> str:
    return "delete" if isinstance(stmt, Delete) else "upsert"


def events_from_rows(table: Table, op: str, rows: Sequence[RowMapping]) -> list[ChangeEvent]:
    pk = pk_columns(table)
    tenant_col = next((c for c in TENANT_COLUMNS if c in table.c), None)
    events = []
    for row in rows:
        image = {c.name: row[c.name] for c in table.columns}
        events.append(
            ChangeEvent(
                table=table.name,
                op=op,
                key={c: image[c] for c in pk},
                image=image if op == "upsert" else None,
                tenant=None if tenant_col is None or image.get(tenant_col) is None else str(image[tenant_col]),
            )
        )
    return events


def check_primary(conn: Connection) -> bool:
    """Inside the write transaction: is this side still the primary? Takes a lock the switch conflicts with."""
    stmt = select(meta.c.value).where(meta.c.name == "is_primary")
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(read=True)  # FOR SHARE: the switch's UPDATE waits for us
    # SQLite: BEGIN IMMEDIATE already holds the database's write lock.
    return conn.execute(stmt).scalar() == 1


def write_outbox(conn: Connection, events: list[ChangeEvent]) -> None:
    """Give the events their seq (commit order: the last_seq row stays locked until commit) and store them."""
    if not events:
        return
    top = conn.execute(
        update(meta).where(meta.c.name == "last_seq").values(value=meta.c.value + len(events)).returning(meta.c.value)
    ).scalar_one()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for i, ev in enumerate(events):
        ev.seq = top - len(events) + 1 + i
        ev.ts = now
        ev.origin = conn.dialect.name.replace("postgresql", "postgres")
        rows.append(
            {"seq": ev.seq, "id": ev.id, "tbl": ev.table, "op": ev.op, "payload": ev.to_json(), "created_at": now}
        )
    conn.execute(dialect_insert(conn, outbox), rows)

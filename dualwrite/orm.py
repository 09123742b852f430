"""ORM integration: existing Session code gets change capture without changes.

    with dw.session() as session:       # a Session joined to the primary's write transaction
        session.add(Item(...)); obj.name = "x"; session.delete(other)
    # on exit: flushed, events in the outbox, committed, applied to the other side

After every flush the changed rows are re-read by primary key inside the same transaction, so the
events carry the exact stored images (server defaults, triggers and type processing included), never
the Python objects' idea of them. Mapped classes must map one table with a primary key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, event, inspect, select
from sqlalchemy.orm import Session

from dualwrite.apply import pk_columns
from dualwrite.capture import events_from_rows

if TYPE_CHECKING:
    from dualwrite.adapter import DualWriter, WriteTx


def _capture(tx: WriteTx, session: Session, _ctx: Any) -> None:
    conn = session.connection()
    for obj in list(session.new) + list(session.dirty):
        if not session.is_modified(obj) and obj not in session.new:
            continue
        mapper = inspect(obj).mapper
        table = mapper.local_table
        tx.dw.catalog_check(table)
        pk = pk_columns(table)
        key = dict(zip(pk, mapper.primary_key_from_instance(obj), strict=True))
        rows = list(conn.execute(select(table).where(and_(*(table.c[c] == v for c, v in key.items())))).mappings())
        tx.events.extend(events_from_rows(table, "upsert", rows))
        tx.ops.add("orm")
    for obj in session.deleted:
        state = inspect(obj)
        table = state.mapper.local_table
        tx.dw.catalog_check(table)
        image = {
            c.name: state.mapper.get_property_by_column(c).class_attribute.__get__(obj, type(obj))
            for c in table.columns
        }
        tx.events.extend(events_from_rows(table, "delete", [image]))  # type: ignore[list-item]
        tx.ops.add("orm")


@contextmanager
def capture_session(dw: DualWriter, **session_kw: Any) -> Iterator[Session]:
    with dw.begin() as tx:
        session = Session(bind=tx.connection, join_transaction_mode="create_savepoint", **session_kw)
        event.listen(session, "after_flush", lambda s, ctx: _capture(tx, s, ctx))
        try:
            yield session
            session.commit()  # flushes; releases the savepoint; dw.begin() commits the transaction
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

"""ORM integration: existing Session code gets change capture without changes.

    with dw.session() as session:       # a Session joined to the primary's write transaction (a WriteTx)
        session.add(Item(...)); obj.name = "x"; session.delete(other); parent.kids.remove(kid)
        session.execute(update(Item).where(Item.stock == 0).values(hidden=True))
    # on exit: flushed, events in the outbox, committed, applied to the other side

Capture comes from the statements themselves, not from the session's lists (orm_capture.py): every row
any statement on the session's connection inserts, updates or deletes while the session is open,
whatever made the ORM emit it (delete-orphan, save-update and delete cascades, many-to-many association
rows, self-referencing post_update rows, the legacy bulk_* methods), and every row the database's
referential actions change (`passive_deletes`: ON DELETE CASCADE / SET NULL, ON UPDATE CASCADE). At the
end of the block each touched key is read again in the same transaction, so the events carry the exact
stored images (server defaults, triggers and type processing included).

`session.execute(insert/update/delete(...))` (ORM-enabled or Core, bulk INSERT with a list of
parameters, bulk UPDATE by primary key) runs through the WriteTx path with RETURNING, exactly as
`tx.execute` in `dw.begin()`: the session is flushed first, and afterwards the objects it holds of the
rows changed are synchronised as `synchronize_session="fetch"` would: expired (reloaded on next access)
or, when deleted, expunged. Refused with one line: a `.returning()` of the application's own (the
adapter returns the images itself: use `tx.execute` in `dw.begin()`), an ORM statement on a mapper of
several tables (joined inheritance), raw SQL text that changes rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, and_, event, insert, inspect, update
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import ORMExecuteState, Session

from dualwrite.orm_capture import StatementCapture, UncapturableStatementError, _kt

if TYPE_CHECKING:
    from dualwrite.capture import WriteTx
    from dualwrite.events import ChangeEvent


class DMLResult(IteratorResult):  # type: ignore[type-arg]
    """What session.execute(insert/update/delete) returns in dw.session(): no rows, the rows' count."""

    def __init__(self, rowcount: int) -> None:
        super().__init__(SimpleResultMetaData([]), iter([]))
        self.rowcount = rowcount


def _run_dml(tx: WriteTx, session: Session, state: ORMExecuteState) -> DMLResult | None:
    """do_orm_execute: an INSERT/UPDATE/DELETE through the session, run by `tx` (see the docstring)."""
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    stmt = state.statement
    if getattr(stmt, "_returning", ()):
        raise UncapturableStatementError(
            "session.execute(...returning()) in dw.session(): the adapter returns the row images itself; "
            "run it in dw.begin() with tx.execute(), which returns them"
        )
    mapper = state.bind_mapper if state.is_orm_statement else None
    if mapper is not None and len(mapper.tables) > 1:
        raise UncapturableStatementError(
            f"session.execute() of an ORM INSERT/UPDATE/DELETE on {mapper.class_.__name__}, which maps several "
            "tables, cannot be captured as one statement: change the objects, or run one statement per table"
        )
    if session.autoflush:
        session.flush()  # what the ORM does before a DML statement; the statements are then ours
    table: Table = stmt.table._deannotate()  # noqa: SLF001 - the Table behind an ORM statement
    params = state.parameters
    rows = params if isinstance(params, list) else None
    first = len(tx.events)
    count = 0
    if rows and mapper is not None:  # ORM bulk: parameters by attribute name
        rows = [_columns_of(mapper, r) for r in rows]
    if rows and state.is_update:  # bulk UPDATE by primary key: one statement per row
        pk = [c for c in table.primary_key.columns]
        for r in rows:
            missing = [c.key for c in pk if c.key not in r]
            if missing:
                raise UncapturableStatementError(
                    f"bulk UPDATE of {table.name!r} without primary-key value(s) {', '.join(missing)} in a row"
                )
            where = and_(*(c == r[c.key] for c in pk))
            count += len(
                tx.execute(
                    update(table).where(where).values({k: v for k, v in r.items() if k not in {c.key for c in pk}})
                )
            )
    elif rows and state.is_insert and mapper is not None:
        count = len(tx.execute(insert(table), rows))
    else:
        count = len(tx.execute(stmt, params or None))
    _synchronize(session, tx.events[first:])
    return DMLResult(count)


def _columns_of(mapper: Any, row: dict[str, Any]) -> dict[str, Any]:
    """An ORM bulk parameter row (attribute names) by column key."""
    out = {}
    for name, value in row.items():
        prop = mapper.attrs.get(name)
        columns = getattr(prop, "columns", None)
        if not columns:
            raise UncapturableStatementError(f"bulk parameter {name!r} is not a column attribute of {mapper}")
        out[columns[0].key] = value
    return out


def _synchronize(session: Session, events: list[ChangeEvent]) -> None:
    """The session's objects of the rows `events` changed: expired (reloaded on access), or expunged when
    deleted, as synchronize_session="fetch" leaves them."""
    if not events:
        return
    changed = {(ev.table, _kt(ev.key.values())): ev.op for ev in events}
    for obj in list(session.identity_map.values()):
        st = inspect(obj)
        table = st.mapper.local_table
        if st.identity is None or not isinstance(table, Table):
            continue
        op = changed.get((table.name, _kt(st.identity)))
        if op == "delete":
            session.expunge(obj)
        elif op == "upsert":
            session.expire(obj)


@contextmanager
def captured_session(tx: WriteTx, **session_kw: Any) -> Iterator[Session]:
    """A Session on `tx`'s connection (in a savepoint) whose statements become `tx`'s events; committed
    into `tx` when the block ends (the caller commits `tx`)."""
    conn = tx.connection
    capture = StatementCapture(tx)
    session = Session(bind=conn, join_transaction_mode="create_savepoint", **session_kw)
    event.listen(conn, "before_execute", capture.before, retval=True)
    event.listen(conn, "after_execute", capture.after)
    event.listen(session, "do_orm_execute", lambda state: _run_dml(tx, session, state))
    try:
        try:
            yield session
            session.commit()  # flushes; releases the savepoint; the caller commits the transaction
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            event.remove(conn, "before_execute", capture.before)
            event.remove(conn, "after_execute", capture.after)
        capture.resolve(conn)
    except BaseException:
        capture.touched.clear()
        raise

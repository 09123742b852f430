"""ORM integration: existing Session code gets change capture without changes.

    with dw.session() as session:       # a Session joined to the primary's write transaction (a WriteTx)
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
from sqlalchemy.orm import ORMExecuteState, Session

from dualwrite import cascade
from dualwrite.apply.statements import pk_columns
from dualwrite.capture import events_from_rows

if TYPE_CHECKING:
    from dualwrite.capture import WriteTx


def _key_rows(conn: Any, table: Any, key: dict[str, Any]) -> list[Any]:
    query = select(table).where(and_(*(table.c[c] == v for c, v in key.items())))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(of=table)
    return list(conn.execute(query).mappings())


def _watch(tx: WriteTx, session: Session, watches: list[tuple[cascade.Watch, Any, Any]]) -> None:
    """before_flush: read (locked) the rows the flush's deletes and key updates can reach through the
    database's referential actions (see cascade.py); after_flush reports what happened to them."""
    refs = tx.tables.referrers()
    conn = session.connection()
    todo = [(obj, True) for obj in session.deleted] + [(obj, False) for obj in session.dirty]
    for obj, deleting in todo:
        state = inspect(obj)
        table = state.mapper.local_table
        mine = refs.get(table.name, [])
        if deleting:
            if not any(r.ondelete for r in mine):
                continue
            changed: set[str] = set()
        else:
            referenced = {c for r in mine if r.onupdate for c in r.parent_cols}
            props = {c.name: state.mapper.get_property_by_column(c).key for c in table.columns if c.name in referenced}
            changed = {name for name, prop in props.items() if state.attrs[prop].history.has_changes()}
            if not changed:
                continue
        pk = pk_columns(table)
        key = dict(zip(pk, state.identity, strict=True))  # stored key
        rows = _key_rows(conn, table, key)
        w = cascade.watch(conn, refs, table, rows, delete=deleting, changed=changed)
        if w:
            watches.append((w, None if deleting else obj, table))


def _flushed_deletes(session: Session, flush_context: Any) -> list[Any]:
    """Every object the flush deleted: those given to session.delete() and the orphans a delete-orphan
    cascade removed during the flush (which never appear in session.deleted)."""
    deleted = list(session.deleted)
    seen = {id(obj) for obj in deleted}
    for state, (isdelete, listonly) in getattr(flush_context, "states", {}).items():
        obj = state.obj()
        if isdelete and not listonly and obj is not None and id(obj) not in seen:
            deleted.append(obj)
            seen.add(id(obj))
    return deleted


def _capture(
    tx: WriteTx, session: Session, watches: list[tuple[cascade.Watch, Any, Any]], flush_context: Any = None
) -> None:
    conn = session.connection()
    deleted = _flushed_deletes(session, flush_context)
    orm_deleted = set()
    for obj in deleted:
        state = inspect(obj)
        orm_deleted.add((state.mapper.local_table.name, tuple(state.identity)))
    for w, parent, table in watches:
        new_rows: list[Any] = []
        if parent is not None:
            key = dict(zip(pk_columns(table), inspect(parent).mapper.primary_key_from_instance(parent), strict=True))
            new_rows = _key_rows(conn, table, key)
        for child, op, image in cascade.changes_after(conn, w, new_rows):
            if op == "delete" and (child.name, tuple(image[c] for c in pk_columns(child))) in orm_deleted:
                continue  # the ORM deleted it itself: its event follows below
            tx.events.extend(events_from_rows(child, op, [image]))
    watches.clear()
    for obj in list(session.new) + list(session.dirty):
        if not session.is_modified(obj) and obj not in session.new:
            continue
        mapper = inspect(obj).mapper
        table = mapper.local_table
        tx.tables.table(table.name)  # UnknownTableError: an uncaptured table
        pk = pk_columns(table)
        key = dict(zip(pk, mapper.primary_key_from_instance(obj), strict=True))
        rows = list(conn.execute(select(table).where(and_(*(table.c[c] == v for c, v in key.items())))).mappings())
        tx.events.extend(events_from_rows(table, "upsert", rows))
        tx.ops.add("orm")
    for obj in deleted:
        state = inspect(obj)
        table = state.mapper.local_table
        tx.tables.table(table.name)  # UnknownTableError: an uncaptured table
        image = {
            c.name: state.mapper.get_property_by_column(c).class_attribute.__get__(obj, type(obj))
            for c in table.columns
        }
        tx.events.extend(events_from_rows(table, "delete", [image]))  # type: ignore[list-item]
        tx.ops.add("orm")


def _refuse_statements(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ValueError(
            "session.execute(insert/update/delete) in dw.session() bypasses change capture: "
            "change mapped objects, or run the statement with dw.begin() / tx.execute()"
        )


@contextmanager
def captured_session(tx: WriteTx, **session_kw: Any) -> Iterator[Session]:
    """A Session on `tx`'s connection (in a savepoint) whose flushes become `tx`'s events; committed into
    `tx` when the block ends (the caller commits `tx`)."""
    session = Session(bind=tx.connection, join_transaction_mode="create_savepoint", **session_kw)
    watches: list[tuple[cascade.Watch, Any, Any]] = []
    event.listen(session, "before_flush", lambda s, _ctx, _objs: _watch(tx, s, watches))
    event.listen(session, "after_flush", lambda s, ctx: _capture(tx, s, watches, ctx))
    event.listen(session, "do_orm_execute", _refuse_statements)
    try:
        yield session
        session.commit()  # flushes; releases the savepoint; the caller commits the transaction
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

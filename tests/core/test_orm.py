"""ORM capture: plain Session code, run through dw.session(), reaches Postgres with the stored images."""

from __future__ import annotations

from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dualwrite.bookkeeping import outbox
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "orm_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    note: Mapped[str] = mapped_column(String(50), server_default="from-server")


def test_orm_session_changes_are_captured_and_applied(settings) -> None:  # type: ignore[no-untyped-def]
    dw = prepared_writer(settings, Tables.of(Item.__table__, store="orm"), phase="dual_write")
    try:
        with dw.session() as session:
            session.add_all([Item(id=1, name="a"), Item(id=2, name="b"), Item(id=3, name="c")])
        with dw.session() as session:
            session.get(Item, 1).name = "changed"  # type: ignore[union-attr]
            session.delete(session.get(Item, 2))
        table = Item.__table__
        with dw.backends.sqlite_read.connect() as conn:
            lite = conn.execute(select(table).order_by(table.c.id)).all()
            events = conn.execute(select(outbox.c.seq, outbox.c.op).order_by(outbox.c.seq)).all()
        with dw.backends.postgres.connect() as conn:
            pg = conn.execute(select(table).order_by(table.c.id)).all()
        assert lite == pg == [(1, "changed", "from-server"), (3, "c", "from-server")]
        assert [op for _, op in events] == ["upsert"] * 3 + ["upsert", "delete"]
        assert [seq for seq, _ in events] == [1, 2, 3, 4, 5]
    finally:
        dw.close()


def test_rolled_back_session_records_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    dw = prepared_writer(settings, Tables.of(Item.__table__, store="orm"), phase="dual_write")
    try:
        try:
            with dw.session() as session:
                session.add(Item(id=9, name="x"))
                session.flush()
                raise RuntimeError("application error")
        except RuntimeError:
            pass
        with dw.backends.sqlite_read.connect() as conn:
            assert conn.execute(select(outbox)).all() == []
            assert conn.execute(select(Item.__table__)).all() == []
        with dw.backends.postgres.connect() as conn:
            assert conn.execute(select(Item.__table__)).all() == []
    finally:
        dw.close()

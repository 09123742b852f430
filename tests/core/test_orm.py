"""ORM capture: plain Session code, run through dw.session(), reaches Postgres with the stored images."""

from __future__ import annotations

import enum

from sqlalchemy import Enum, ForeignKey, String, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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
    with prepared_writer(settings, Tables.of(Item.__table__, store="orm"), phase="dual_write") as dw:
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


def test_rolled_back_session_records_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    with prepared_writer(settings, Tables.of(Item.__table__, store="orm"), phase="dual_write") as dw:
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


class Basket(Base):
    __tablename__ = "orm_baskets"
    id: Mapped[int] = mapped_column(primary_key=True)
    eggs: Mapped[list[Egg]] = relationship(cascade="all, delete-orphan")


class Egg(Base):
    __tablename__ = "orm_eggs"
    basket_id: Mapped[int] = mapped_column(ForeignKey("orm_baskets.id"), primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


def test_orphans_removed_by_a_delete_orphan_cascade_are_captured(settings) -> None:  # type: ignore[no-untyped-def]
    """The flush deletes an orphan without it ever being in session.deleted: its delete still reaches Postgres."""
    tables = Tables.of(Base.metadata, only=["orm_baskets", "orm_eggs"])
    with prepared_writer(settings, tables, phase="dual_write") as dw:
        with dw.session() as session:
            session.add(Basket(id=1, eggs=[Egg(n=1), Egg(n=2), Egg(n=3)]))
        with dw.session() as session:
            basket = session.get(Basket, 1)
            basket.eggs.remove(next(e for e in basket.eggs if e.n == 2))  # type: ignore[union-attr]
        eggs = Egg.__table__
        for engine in (dw.backends.sqlite_read, dw.backends.postgres):
            with engine.connect() as conn:
                assert conn.execute(select(eggs.c.n).order_by(eggs.c.n)).scalars().all() == [1, 3], engine.url


class Mood(enum.Enum):
    calm = "c"
    angry = "a"


class Person(Base):
    __tablename__ = "orm_people"
    id: Mapped[int] = mapped_column(primary_key=True)
    mood: Mapped[Mood] = mapped_column(Enum(Mood, name="orm_mood"))
    shout: Mapped[Mood | None] = mapped_column(
        Enum(Mood, name="orm_shout", values_callable=lambda e: [m.value for m in e])
    )


def test_enum_columns_reach_the_other_side_as_stored(settings) -> None:  # type: ignore[no-untyped-def]
    """An Enum column's images carry the string the database stores (the member name, or its value with
    values_callable), so Core and ORM writes of Python enum members apply on the other side."""
    with prepared_writer(settings, Tables.of(Person.__table__), phase="dual_write") as dw:
        with dw.session() as session:
            session.add(Person(id=1, mood=Mood.angry, shout=Mood.calm))
        dw.execute(insert(Person.__table__).values(id=2, mood=Mood.calm, shout=None))
        people = Person.__table__
        for engine in (dw.backends.sqlite_read, dw.backends.postgres):
            with engine.connect() as conn:
                assert conn.execute(select(people).order_by(people.c.id)).all() == [
                    (1, Mood.angry, Mood.calm),
                    (2, Mood.calm, None),
                ], engine.url
                raw = conn.execute(select(people.c.mood.cast(String), people.c.shout.cast(String))).all()
                assert sorted(raw, key=str) == sorted([("angry", "c"), ("calm", None)], key=str)

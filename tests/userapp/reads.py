"""The application's reads, as module-level functions: `functools.partial(customer_page, writer="w1")`
pickles by reference, so a ShadowReader(comparator="process") compares it in its comparator process (a
closure or a lambda cannot reach that process and would be compared by the reader's threads instead)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session, selectinload

from tests.userapp.models import Customer, Ledger, Order

PAGE = 20


def customer_page(session: Session, writer: str) -> list[Customer]:
    """ORM: the writer's first customers, their orders loaded with them."""
    stmt = (
        select(Customer)
        .where(Customer.writer == writer)
        .order_by(Customer.id)
        .limit(PAGE)
        .options(selectinload(Customer.orders))
    )
    return list(session.scalars(stmt))


def orders_per_customer(conn: Connection, writer: str) -> list[Any]:
    """Core: how many orders each of the writer's customers has."""
    orders = Order.__table__
    stmt = select(orders.c.customer_id, func.count().label("n")).where(orders.c.writer == writer)
    return list(conn.execute(stmt.group_by(orders.c.customer_id)).all())


def ledger_page(session: Session, writer: str) -> list[Ledger]:
    """ORM: the writer's first ledger rows, its oldest transactions: rows read on and never written again."""
    stmt = select(Ledger).where(Ledger.writer == writer).order_by(Ledger.n).limit(PAGE)
    return list(session.scalars(stmt))

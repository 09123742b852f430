"""The models of an application dualwrite did not write: a small shop, plain SQLAlchemy 2.0 declarative.

Nothing here knows about dualwrite (no dualwrite.types, no tenant column): it is what a user brings.
Between them the tables hold every shape the issue names:

| table          | key                               | what it exercises                                        |
|----------------|-----------------------------------|----------------------------------------------------------|
| customers      | integer, autoincrement            | Numeric(12,2), DateTime(timezone=True), Date, Boolean,   |
|                |                                   | JSON, LargeBinary, Enum, unicode text, a unique email    |
| orders         | UUID                              | FK -> customers ON DELETE CASCADE (the DB cascades)      |
| order_lines    | composite (order_id, line_no)     | FK -> orders ON DELETE CASCADE (the ORM cascades)        |
| categories     | integer                           | self-reference ON DELETE CASCADE (a subtree goes)        |
| products       | text (sku)                        | FK -> categories ON DELETE SET NULL                      |
| documents      | integer, autoincrement            | 1 MB text, 300 KB blob; FK -> customers ON DELETE SET NULL|
| ledger         | composite (writer, n)             | one row per committed transaction (see Ledger)           |

Every row carries `writer`, the name of the process that made it (see tests/userapp/writer.py): each writer
changes only its own rows, and a foreign key never crosses writers, so one writer's log alone decides
its rows' final state (see tests/userapp/state.py).
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    metadata = MetaData()


class Tier(enum.Enum):
    free = "free"
    pro = "pro"
    enterprise = "enterprise"


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    writer: Mapped[str] = mapped_column(String(40), index=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(Text)
    tier: Mapped[Tier] = mapped_column(Enum(Tier, name="ua_tier"))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    active: Mapped[bool] = mapped_column(Boolean)
    signed_up: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    birthday: Mapped[date | None] = mapped_column(Date)
    prefs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    avatar: Mapped[bytes | None] = mapped_column(LargeBinary)

    # The database deletes a customer's orders (passive_deletes): dualwrite must see the cascade itself.
    orders: Mapped[list[Order]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", passive_deletes=True
    )
    # ... and sets their documents' owner to NULL.
    documents: Mapped[list[Document]] = relationship(back_populates="owner", passive_deletes=True)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    writer: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    placed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)

    customer: Mapped[Customer] = relationship(back_populates="orders")
    # The ORM deletes an order's lines itself (no passive_deletes): they are loaded and deleted one by one.
    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="OrderLine.line_no"
    )


class OrderLine(Base):
    __tablename__ = "order_lines"

    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    writer: Mapped[str] = mapped_column(String(40))
    sku: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    gift: Mapped[bool] = mapped_column(Boolean, default=False)

    order: Mapped[Order] = relationship(back_populates="lines")


# the models are shaped alike (mapped columns): each its own table of the application
class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    writer: Mapped[str] = mapped_column(String(40))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    parent: Mapped[Category | None] = relationship(back_populates="children", remote_side=[id])
    children: Mapped[list[Category]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", passive_deletes=True
    )


class Product(Base):
    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(40), primary_key=True)
    writer: Mapped[str] = mapped_column(String(40))
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="SET NULL"), index=True)
    title: Mapped[str] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    in_stock: Mapped[bool] = mapped_column(Boolean)
    released: Mapped[date | None] = mapped_column(Date)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    # No back-reference: deleting a category leaves its products to the database's SET NULL.
    category: Mapped[Category | None] = relationship()


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    writer: Mapped[str] = mapped_column(String(40))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id", ondelete="SET NULL"), index=True)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # ~1 MB
    attachment: Mapped[bytes] = mapped_column(LargeBinary)  # ~300 KB
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    owner: Mapped[Customer | None] = relationship(back_populates="documents")


class Ledger(Base):
    """One row per committed transaction of a writer, written in that transaction: whether a transaction
    whose outcome its writer never learned (an error at commit, a kill) committed is a row lookup."""

    __tablename__ = "ledger"

    writer: Mapped[str] = mapped_column(String(40), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    op: Mapped[str] = mapped_column(String(40))
    api: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


metadata = Base.metadata
MODELS: tuple[type[Base], ...] = (Customer, Order, OrderLine, Category, Product, Document, Ledger)

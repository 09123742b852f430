"""The example application's schema vocabulary: the declarative base and constraint naming, the columns
every store table is made of (key, tenant, references, stamps; mixins for the shared ones) and the row
TypedDicts' matching bases. Its column types are dualwrite's portable ones, `dualwrite.types`.

Each store module then lists its own columns twice, as a model and as the row TypedDict its methods
return: declarative lists, alike in shape from store to store (a duplicates finder pairs them), which is
their right form; what the tables share is said once, here."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import BigInteger, Integer, MetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, mapped_column

from dualwrite.types import OrderedString, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
ID = BigInteger().with_variant(Integer, "sqlite")
TENANT_MAX = 64


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def ref_column(nullable: bool = False) -> MappedColumn[Any]:
    return mapped_column(ID, nullable=nullable)


def stamp_column(nullable: bool = False) -> MappedColumn[Any]:
    return mapped_column(UTCDateTime, nullable=nullable, default=None if nullable else utcnow)


# The stamps TenantStore sets from its clock wherever a table has them (insert: both; update: updated_at).
STAMPS = ("created_at", "updated_at")


class TenantKeyed:
    """Mixin of every store table's first two columns: the surrogate key and the owning tenant."""

    # BIGSERIAL on Postgres, the rowid alias on SQLite
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True, sort_order=-2)
    # indexed through the unique constraints and indexes that lead with it (every table has one)
    tenant_id: Mapped[str] = mapped_column(OrderedString(TENANT_MAX), nullable=False, sort_order=-1)


class Stamped:
    """Mixin of a mutable row's stamps (after the table's own columns)."""

    created_at: Mapped[datetime] = stamp_column()
    updated_at: Mapped[datetime] = stamp_column()


# The row TypedDicts' bases, field for field the mixins above.
class TenantKeyedRow(TypedDict):
    id: int
    tenant_id: str


class StampedRow(TypedDict):
    created_at: datetime
    updated_at: datetime


def tenant_fk(column: str, parent: str, *extra: str) -> tuple[list[str], list[str]]:
    """Columns of a composite foreign key (column, *extra, tenant_id) -> parent (id, *extra, tenant_id):
    the database itself refuses a reference to another tenant's row."""
    return [column, *extra, "tenant_id"], [f"{parent}.id", *(f"{parent}.{e}" for e in extra), f"{parent}.tenant_id"]

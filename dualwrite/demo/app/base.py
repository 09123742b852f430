"""The example application's schema vocabulary: the declarative base and constraint naming, the mixins of
the columns every store table shares (key, tenant, stamps; built from `columns`) and the row
TypedDicts' matching bases. Its column types are dualwrite's portable ones, `dualwrite.types`.

Each store module then lists its own columns three times: as a model, as the row TypedDict its methods
return and as the values dict its insert writes. Declarative lists, alike in shape from store to store (a
duplicates finder pairs them), which is their right form; what the tables share is said once, here."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict, cast

from sqlalchemy import MetaData, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dualwrite.demo.app.columns import ID, stamp_column
from dualwrite.types import OrderedString

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
TENANT_MAX = 64


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def core_tables(*models: type[Base]) -> tuple[Table, ...]:
    """The Core tables of declarative models: every store declares models and runs Core statements."""
    return tuple(cast(Table, m.__table__) for m in models)


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


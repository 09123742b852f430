"""The example application's column factories: the surrogate-key type, references to it, stamps and the
tenant-scoped composite foreign key. The store models (and the mixins in `base`) are built from them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer
from sqlalchemy.orm import MappedColumn, mapped_column

from dualwrite.types import UTCDateTime, utcnow

ID = BigInteger().with_variant(Integer, "sqlite")


def ref_column(nullable: bool = False) -> MappedColumn[Any]:
    return mapped_column(ID, nullable=nullable)


def stamp_column(nullable: bool = False) -> MappedColumn[Any]:
    return mapped_column(UTCDateTime, nullable=nullable, default=None if nullable else utcnow)


def tenant_fk(column: str, parent: str, *extra: str) -> tuple[list[str], list[str]]:
    """Columns of a composite foreign key (column, *extra, tenant_id) -> parent (id, *extra, tenant_id):
    the database itself refuses a reference to another tenant's row."""
    return [column, *extra, "tenant_id"], [f"{parent}.id", *(f"{parent}.{e}" for e in extra), f"{parent}.tenant_id"]

"""Memory store (P0): key/value memories per tenant and namespace, with TTLs and retention policies.

An item expires at its own `expires_at` (from `put(..., ttl_seconds=)`), and a namespace's retention
policy removes items not written for `ttl_seconds`. Expired items are hidden from reads at once and
deleted by `prune()`, which is one transaction (every deletion is captured as a change event).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Index, Integer, Text, UniqueConstraint, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, Stamped, StampedRow, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import stamp_column
from dualwrite.demo.app.common import Row, TenantStore, check_aware, check_id, check_limit, check_text, prefix_range
from dualwrite.demo.app.errors import ValidationError
from dualwrite.types import JSONType, OrderedString

MAX_TTL_SECONDS = 100 * 366 * 86400


class MemoryItem(TenantKeyed, Stamped, Base):
    __tablename__ = "memory_items"
    __table_args__ = (
        UniqueConstraint("tenant_id", "namespace", "key"),
        Index(None, "tenant_id", "expires_at"),
        Index(None, "tenant_id", "namespace", "updated_at"),
    )
    namespace: Mapped[str] = mapped_column(OrderedString(128))
    key: Mapped[str] = mapped_column(OrderedString(255))
    content: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    expires_at: Mapped[datetime | None] = stamp_column(nullable=True)


class MemoryRetention(TenantKeyed, Base):
    __tablename__ = "memory_retention"
    __table_args__ = (UniqueConstraint("tenant_id", "namespace"),)
    namespace: Mapped[str] = mapped_column(OrderedString(128))
    ttl_seconds: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = stamp_column()


# shaped like marketplace.py's models and rows: each store its own columns (core_tables, TenantKeyedRow are shared)
memory_items, memory_retention = core_tables(MemoryItem, MemoryRetention)


class MemoryItemRow(TenantKeyedRow, StampedRow):
    namespace: str
    key: str
    content: str
    metadata: dict[str, Any]
    expires_at: datetime | None


ItemList = list[MemoryItemRow]


class RetentionRow(TenantKeyedRow):
    namespace: str
    ttl_seconds: int
    updated_at: datetime


def _ttl(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TTL_SECONDS:
        raise ValidationError(f"{where}: {value!r} is not a number of seconds in 1..{MAX_TTL_SECONDS}")
    return value


class MemoryStore(TenantStore):
    store = "memory"

    def put(
        self,
        namespace: str,
        key: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        ttl_seconds: int | None = None,
        expires_at: datetime | None = None,
    ) -> MemoryItemRow:
        """Insert or replace the item (namespace, key); created_at survives a replace."""
        now = self.now()
        if ttl_seconds is not None:
            if expires_at is not None:
                raise ValidationError("memory_items.expires_at: give ttl_seconds or expires_at, not both")
            expires_at = now + timedelta(seconds=_ttl(ttl_seconds, "memory_items.ttl_seconds"))
        values = {
            "namespace": namespace,
            "key": key,
            "content": content,
            "metadata": {} if metadata is None else metadata,
            "expires_at": expires_at,
            "created_at": now,  # given, not left to TenantStore.stamped: the instant expires_at counts from
            "updated_at": now,
        }
        with self.write() as tx:
            row = self.upsert(tx, memory_items, values, ["namespace", "key"], keep=("created_at",))
        return cast(MemoryItemRow, row)

    # `list` is defined last: it shadows the builtin in this class's namespace
    def _live(self, now: datetime | None) -> Any:
        now = self.now() if now is None else check_aware(now, "now")
        return or_(memory_items.c.expires_at.is_(None), memory_items.c.expires_at > now)

    def get(self, namespace: str, key: str, *, now: datetime | None = None) -> MemoryItemRow | None:
        stmt = select(memory_items).where(
            self.mine(memory_items), memory_items.c.namespace == namespace, memory_items.c.key == key, self._live(now)
        )
        return cast(MemoryItemRow | None, self.first("get", stmt, namespace=namespace, key=key))

    def delete(self, namespace: str, key: str) -> bool:
        with self.write() as tx:
            gone = self.delete_where(tx, memory_items, memory_items.c.namespace == namespace, memory_items.c.key == key)
        return bool(gone)

    def delete_id(self, item_id: int) -> bool:
        item_id = check_id(item_id, "memory_items.id")
        with self.write() as tx:
            return bool(self.delete_where(tx, memory_items, memory_items.c.id == item_id))

    def get_id(self, item_id: int) -> MemoryItemRow | None:
        """The tenant's item by id (expired or not), or None."""
        return cast(MemoryItemRow | None, self.get_row("get_id", memory_items, item_id))

    def set_retention(self, namespace: str, ttl_seconds: int | None) -> RetentionRow | None:
        """Set the namespace's retention TTL; None removes the policy."""
        check_text(namespace, "memory_retention.namespace", 128, empty=False)
        with self.write() as tx:
            if ttl_seconds is None:
                self.delete_where(tx, memory_retention, memory_retention.c.namespace == namespace)
                return None
            values = {
                "namespace": namespace,
                "ttl_seconds": _ttl(ttl_seconds, "memory_retention.ttl_seconds"),
            }
            return cast(RetentionRow, self.upsert(tx, memory_retention, values, ["namespace"], keep=()))

    def retention(self, namespace: str) -> int | None:
        stmt = select(memory_retention).where(self.mine(memory_retention), memory_retention.c.namespace == namespace)
        row = self.first("retention", stmt, namespace=namespace)
        return None if row is None else int(row["ttl_seconds"])

    def retentions(self) -> list[RetentionRow]:
        stmt = select(memory_retention).where(self.mine(memory_retention)).order_by(memory_retention.c.namespace)
        return cast(list[RetentionRow], self.rows("retentions", stmt))

    def prune(self, now: datetime | None = None) -> int:
        """Delete expired items and items not written within their namespace's retention TTL."""
        now = self.now() if now is None else check_aware(now, "now")
        with self.write() as tx:
            gone = self.delete_where(tx, memory_items, memory_items.c.expires_at <= now)
            policies: list[Row] = [
                dict(r)
                for r in tx.connection.execute(
                    select(memory_retention.c.namespace, memory_retention.c.ttl_seconds)
                    .where(self.mine(memory_retention))
                    .order_by(memory_retention.c.namespace)
                ).mappings()
            ]
            for policy in policies:
                cutoff = now - timedelta(seconds=int(policy["ttl_seconds"]))
                gone += self.delete_where(
                    tx,
                    memory_items,
                    memory_items.c.namespace == policy["namespace"],
                    memory_items.c.updated_at < cutoff,
                )
        return len(gone)

    def list(
        self,
        namespace: str,
        prefix: str = "",
        limit: int = 100,
        *,
        after: str | None = None,
        now: datetime | None = None,
    ) -> ItemList:
        """Live items of the namespace whose key starts with `prefix`, by key; `after` pages on."""
        check_text(prefix, "prefix")
        check_limit(limit)
        conds = [self.mine(memory_items), memory_items.c.namespace == namespace, self._live(now)]
        conds += prefix_range(memory_items.c.key, prefix)
        if after is not None:
            conds.append(memory_items.c.key > check_text(after, "after"))
        stmt = select(memory_items).where(*conds).order_by(memory_items.c.key).limit(limit)
        rows = self.rows("list", stmt, namespace=namespace, prefix=prefix, limit=limit)
        return cast(ItemList, rows)

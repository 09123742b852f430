"""Archive store (P2): rows moved out of other stores, kept with where they came from.

The payload is a row image (column -> value) stored with the change-event value codec, so datetimes,
decimals, bytes and JSON values come back exactly as they went in. The original key is stored as the
canonical key text dualwrite's versions use (`dualwrite.events.key_text`): 7, (7,) and {"id": 7} all
archive under '[7]'.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Index, select
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import stamp_column
from dualwrite.demo.app.common import TenantStore, check_id, check_json, check_limit, check_text
from dualwrite.demo.app.errors import ValidationError
from dualwrite.errors import EventDecodeError
from dualwrite.events import decode_row, encode_row
from dualwrite.events import key_text as events_key_text
from dualwrite.types import JSONType, OrderedString


class ArchivedRecord(TenantKeyed, Base):
    __tablename__ = "archive_records"
    __table_args__ = (Index(None, "tenant_id", "original_store", "original_table", "original_key"),)
    original_store: Mapped[str] = mapped_column(OrderedString(64))
    original_table: Mapped[str] = mapped_column(OrderedString(128))
    original_key: Mapped[str] = mapped_column(OrderedString(255))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    archived_at: Mapped[datetime] = stamp_column()


(archive_records,) = core_tables(ArchivedRecord)


class ArchivedRecordRow(TenantKeyedRow):
    original_store: str
    original_table: str
    original_key: str
    payload: dict[str, Any]
    archived_at: datetime


Key = str | int | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def key_text(key: Key) -> str:
    """The text an original key is archived under (a mapping's values are taken in its order)."""
    if isinstance(key, bool) or key is None:
        raise ValidationError(f"archive_records.original_key: {key!r} is not a key")
    values = list(key.values()) if isinstance(key, Mapping) else list(key) if isinstance(key, tuple | list) else [key]
    if not values:
        raise ValidationError("archive_records.original_key: an empty key")
    try:
        return check_text(events_key_text(values), "archive_records.original_key", 255)
    except TypeError as exc:
        raise ValidationError(f"archive_records.original_key: {exc}") from None


def _decoded(row: dict[str, Any] | None) -> ArchivedRecordRow | None:
    if row is None:
        return None
    try:
        return cast(ArchivedRecordRow, {**row, "payload": decode_row(row["payload"])})
    except EventDecodeError as exc:
        raise ValidationError(f"archive_records.payload of record {row['id']}: {exc}") from None


def _encoded(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, Mapping) or not payload:
        raise ValidationError("archive_records.payload: expected a non-empty row image (column -> value)")
    try:
        encoded = encode_row(dict(payload))
    except TypeError as exc:
        raise ValidationError(f"archive_records.payload: {exc}") from None
    return cast(dict[str, Any], check_json(encoded, "archive_records.payload"))


class ArchiveStore(TenantStore):
    store = "archive"

    def archive(self, store: str, table: str, key: Key, payload: Mapping[str, Any]) -> ArchivedRecordRow:
        """Archive a row image taken from `store`.`table` under its primary key."""
        check_text(store, "archive_records.original_store", 64, empty=False)
        check_text(table, "archive_records.original_table", 128, empty=False)
        values = {
            "original_store": store,
            "original_table": table,
            "original_key": key_text(key),
            "payload": _encoded(payload),
            "archived_at": self.now(),
        }
        with self.write() as tx:
            return cast(ArchivedRecordRow, _decoded(self.insert(tx, archive_records, values)))

    def get(self, record_id: int) -> ArchivedRecordRow | None:
        return _decoded(self.get_row("get", archive_records, record_id))

    def find(self, store: str, table: str, key: Key | None = None, limit: int = 100) -> list[ArchivedRecordRow]:
        """Archived records of one original table (and key), oldest first."""
        t = archive_records
        conds = [self.mine(t), t.c.original_store == store, t.c.original_table == table]
        if key is not None:
            conds.append(t.c.original_key == key_text(key))
        stmt = select(t).where(*conds).order_by(t.c.archived_at, t.c.id).limit(check_limit(limit))
        rows = self.rows("find", stmt, original_store=store, original_table=table)
        return [cast(ArchivedRecordRow, _decoded(r)) for r in rows]

    def delete(self, record_id: int) -> bool:
        record_id = check_id(record_id, "archive_records.id")
        with self.write() as tx:
            return bool(self.delete_where(tx, archive_records, archive_records.c.id == record_id))

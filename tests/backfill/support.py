"""A small table set for the backfill tests: int pk, composite text+int pk, and a child with a FK."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
)

from dualwrite.adapter import DualWriter
from dualwrite.redis_keys import stream_key
from dualwrite.stream.relay import Relay
from dualwrite.tables import Tables
from dualwrite.types import JSONType, UTCDateTime

md = MetaData()
accounts = Table(
    "bf_accounts",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", Text),
    Column("doc", JSONType),
    Column("blob", LargeBinary),
    Column("at", UTCDateTime),
)
tags = Table(
    "bf_tags",
    md,
    Column("tenant", String(20), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("label", Text),
)
notes = Table(
    "bf_notes",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("account_id", Integer, ForeignKey("bf_accounts.id")),
    Column("body", Text),
)
TABLES = [accounts, tags, notes]  # parents first
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def catalog() -> Tables:
    return Tables.of(TABLES, store="bf")


def account_row(i: int, name: str | None = None) -> dict[str, Any]:
    return {
        "id": i,
        "name": name or f"acct-{i} é",
        "doc": {"i": i, "tags": ["a", "b"]},
        "blob": bytes([i % 256, 0, 255]),
        "at": T0 + timedelta(seconds=i, microseconds=i),
    }


def seed(dw: DualWriter, n: int) -> None:
    """Rows that existed before capture began: written to SQLite directly (no events)."""
    with dw.backends.sqlite.begin() as conn:
        conn.execute(insert(accounts), [account_row(i) for i in range(1, n + 1)])
        conn.execute(insert(tags), [{"tenant": f"t{i % 7}", "n": i, "label": f"label {i}"} for i in range(1, n + 1)])
        conn.execute(insert(notes), [{"id": i, "account_id": 1 + i % n, "body": f"note {i}"} for i in range(1, n + 1)])


def snapshot(engine: Any, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns)).all()]
        conn.rollback()
    return rows


def assert_equal(dw: DualWriter) -> None:
    for t in TABLES:
        left, right = snapshot(dw.backends.sqlite_read, t), snapshot(dw.backends.postgres, t)
        assert len(left) == len(right), t.name
        assert left == right, t.name


def drain_relay(dw: DualWriter) -> None:
    assert Relay.for_backends(dw.backends).drain(timeout=30)


def clear(dw: DualWriter) -> None:
    """Empty accounts, versions (and Postgres' range versions), outbox and stream on both sides, between
    hypothesis examples."""
    for engine in (dw.backends.sqlite, dw.backends.postgres):
        with engine.begin() as conn:
            conn.execute(delete(accounts))
            conn.execute(text("DELETE FROM _dw_versions"))
            conn.execute(text("DELETE FROM _dw_outbox"))
            if engine.dialect.name == "postgresql":
                conn.execute(text("DELETE FROM _dw_ranges"))
    dw.backends.redis.delete(stream_key(dw.settings.namespace))

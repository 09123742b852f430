"""Shared tables and helpers for the core (issue 3) tests: a small table set of every column type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, MetaData, Numeric, String, Table, select, text

from dualwrite.adapter import DualWriter
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.tables import Tables
from dualwrite.types import JSONType, UTCDateTime

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
items = Table(
    "items",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("tenant_id", String(20)),
    Column("name", String(60)),
    Column("qty", BigInteger),
    Column("price", Numeric(14, 3)),
    Column("ratio", Float),
    Column("blob", LargeBinary),
    Column("doc", JSONType),
    Column("at", UTCDateTime),
)
pairs = Table(
    "pairs",
    md,
    Column("a", Integer, primary_key=True, autoincrement=False),
    Column("b", String(10), primary_key=True),
    Column("v", Integer),
)
TABLES = (items, pairs)


def row(i: int, n: int) -> dict[str, Any]:
    return {
        "id": i,
        "tenant_id": f"t{i % 3}",
        "name": f"r{i}-{n} é\u6f22",
        "qty": 2**62 + n,
        "price": Decimal(f"{n}.125"),
        "ratio": n / 7,
        "blob": bytes([n % 256, 0, 255]),
        "doc": {"n": n, "$dt": "x", "l": [1, None, "z"]},
        "at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=n * 1_000_003),
    }


def catalog() -> Tables:
    return Tables.of(TABLES, store="toy")


def snapshot(engine: Any, table: Table = items) -> list[tuple[Any, ...]]:
    order = [c for c in table.primary_key.columns]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*order)).all()]


def both_sides(dw: DualWriter) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    return (
        {t.name: snapshot(dw.backends.sqlite_read, t) for t in TABLES},
        {t.name: snapshot(dw.backends.postgres, t) for t in TABLES},
    )


def stream_events(client: redis.Redis, settings: Settings) -> list[tuple[bytes, ChangeEvent]]:
    return [(eid, ChangeEvent.from_json(f[b"e"])) for eid, f in client.xrange(stream_key(settings.namespace))]


def reset_all(dw: DualWriter) -> None:
    """Empty the tables and the bookkeeping on both sides (between hypothesis examples)."""
    for engine in (dw.backends.sqlite, dw.backends.postgres):
        with engine.begin() as conn:
            for t in TABLES:
                conn.execute(t.delete())
            conn.execute(text("DELETE FROM _dw_versions"))
            conn.execute(text("DELETE FROM _dw_outbox"))
    dw.backends.redis.delete(stream_key(dw.settings.namespace))

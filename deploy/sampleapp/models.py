"""The shop's models: accounts (a text key) and their orders (a composite key, a cascading foreign key,
exact money, JSON line items, tz-aware timestamps, free text)."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, Text

from dualwrite import Tables
from dualwrite.types import ExactDecimal, JSONType, UTCDateTime, utcnow

metadata = MetaData()

accounts = Table(
    "shop_accounts",
    metadata,
    Column("handle", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)
orders = Table(
    "shop_orders",
    metadata,
    Column("account", String(64), ForeignKey("shop_accounts.handle", ondelete="CASCADE"), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("total", ExactDecimal(12, 2), nullable=False),
    Column("items", JSONType, nullable=False),
    Column("note", Text),
    Column("placed_at", UTCDateTime, nullable=False, default=utcnow),
)

# What dualwrite captures (`--metadata sampleapp.models:tables`): every table, store "shop" in the metrics.
tables = Tables.of(metadata, store="shop")

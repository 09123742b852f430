"""A small table set for the shadow tests and fast seeding of both backends."""

from __future__ import annotations

import io
from typing import Any

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

from dualwrite.adapter import DualWriter
from dualwrite.settings import Settings
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
items = Table(
    "sh_items",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False),
    Column("amount", Float, nullable=True),
    Column("note", Text, nullable=True),
)
pairs = Table(
    "sh_pairs",
    md,
    Column("tenant", String(32), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("value", Text, nullable=False),
)
TABLES = [items, pairs]


def catalog() -> Tables:
    return Tables.of(TABLES, store="shtest")


def writer(settings: Settings, phase: str = "sqlite") -> DualWriter:
    return prepared_writer(settings, catalog(), phase=phase)


def item_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"item-{i}", "amount": i * 0.25, "note": None if i % 7 else "seven"} for i in range(n)]


def pair_rows(n: int) -> list[dict[str, Any]]:
    tenants = ["acme", "Beta", "zeta", "émile"]
    return [{"tenant": tenants[i % 4], "n": i, "value": f"v{i}"} for i in range(n)]


def seed(dw: DualWriter, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows into SQLite (executemany) and Postgres (COPY), bypassing capture."""
    cols = [c.name for c in table.columns]
    raw = dw.backends.sqlite.raw_connection()
    try:
        raw.executemany(
            f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [tuple(r[c] for c in cols) for r in rows],
        )
        raw.commit()
    finally:
        raw.close()
    buf = io.StringIO()
    for r in rows:
        buf.write("\t".join("\\N" if r[c] is None else str(r[c]) for c in cols) + "\n")
    buf.seek(0)
    praw = dw.backends.postgres.raw_connection()
    try:
        cur = praw.cursor()
        cur.copy_expert(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN", buf)
        praw.commit()
    finally:
        praw.close()

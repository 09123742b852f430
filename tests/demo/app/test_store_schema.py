"""The unified store schema: its rules hold for every table, and it creates identically on both backends."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest
from sqlalchemy import DateTime, ForeignKeyConstraint, Integer, MetaData, String, UniqueConstraint, inspect
from sqlalchemy.dialects import postgresql, sqlite

from dualwrite.bookkeeping import create_schema
from dualwrite.demo.app import STORES, tables
from dualwrite.engines import pg_engine, sqlite_engine
from dualwrite.types import UTCDateTime

REG = tables()
STORE_MODULES = {s: importlib.import_module(f"dualwrite.demo.app.{s}") for s in STORES}


def test_every_store_module_is_registered_and_small() -> None:
    assert REG.stores() == list(STORES)
    for path in Path(importlib.import_module("dualwrite.demo.app").__path__[0]).glob("*.py"):
        assert len(path.read_text().splitlines()) < 400, path.name
    listed = {s.name for s in REG}
    declared = {t.name for m in STORE_MODULES.values() for t in m.Base.metadata.tables.values()}
    assert listed == declared  # every table of the stores is in the registry, and nothing else


@pytest.mark.parametrize("spec", list(REG), ids=lambda s: s.name)
def test_table_rules(spec) -> None:  # type: ignore[no-untyped-def]
    table = spec.table
    assert spec.name.startswith(spec.store.rstrip("s")), "table names are prefixed by their store"
    # integer surrogate key: BIGINT on Postgres, INTEGER (the rowid alias) on SQLite
    assert spec.pk == ("id",) and table.c.id.autoincrement is True
    assert table.c.id.type.compile(dialect=postgresql.dialect()) == "BIGINT"
    assert table.c.id.type.compile(dialect=sqlite.dialect()) == "INTEGER"
    # tenant_id: String(64), not null, and the leading column of some index or unique constraint
    tenant = table.c.tenant_id
    assert spec.tenant_column == "tenant_id" and not tenant.nullable
    assert isinstance(tenant.type, String) and tenant.type.length == 64
    leading = [list(i.columns)[0].name for i in table.indexes]
    leading += [list(c.columns)[0].name for c in table.constraints if isinstance(c, UniqueConstraint)]
    assert "tenant_id" in leading
    for con in table.constraints:
        if isinstance(con, UniqueConstraint | ForeignKeyConstraint):
            assert "tenant_id" in {c.name for c in con.columns}, f"{con.name} lacks tenant_id"
        if isinstance(con, ForeignKeyConstraint):
            assert con.ondelete is None, "no cascades: every change must be a captured event"
    for index in table.indexes:
        assert index.unique is False or "tenant_id" in {c.name for c in index.columns}
    for col in table.columns:
        assert not isinstance(col.type, DateTime), f"{col.name}: timestamps are UTCDateTime"
        if col.name.endswith("_at"):
            assert isinstance(col.type, UTCDateTime), col.name
        if col.name.endswith("_id") and col.name != "tenant_id":
            assert isinstance(col.type, Integer)


@pytest.mark.parametrize("store", list(STORES))
def test_row_types_match_columns(store: str) -> None:
    """Each TypedDict a store returns names exactly its table's columns."""
    module = STORE_MODULES[store]
    rows = {
        name: obj
        for name, obj in vars(module).items()
        if name.endswith("Row") and typing.is_typeddict(obj) and obj.__module__ == module.__name__
    }
    tables = {t.name: t for t in REG.select(stores=store).tables()}
    assert len(rows) == len(tables)
    for row in rows.values():
        keys = set(typing.get_type_hints(row))
        assert any(keys == set(t.c.keys()) for t in tables.values()), f"{row.__name__}: {sorted(keys)}"


def _shape(engine) -> dict[str, object]:  # type: ignore[no-untyped-def]
    insp = inspect(engine)
    shape: dict[str, object] = {}
    for spec in REG:
        name = spec.name
        shape[name] = {
            "columns": [(c["name"], c["nullable"]) for c in insp.get_columns(name)],
            "pk": insp.get_pk_constraint(name)["constrained_columns"],
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(name)),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in insp.get_foreign_keys(name)
            ),
            "indexes": sorted(tuple(i["column_names"]) for i in insp.get_indexes(name) if not i.get("unique")),
            "checks": sorted(c["name"] for c in insp.get_check_constraints(name)),
        }
    return shape


def test_create_all_on_both_backends_gives_the_same_schema(settings) -> None:  # type: ignore[no-untyped-def]
    lite = sqlite_engine(settings.sqlite_url)
    pg = pg_engine(settings)
    try:
        for engine in (lite, pg):
            create_schema(engine, REG.tables(), primary=True)
            create_schema(engine, REG.tables(), primary=True)  # idempotent
        names = {s.name for s in REG}
        assert {n for n in inspect(lite).get_table_names() if not n.startswith("_dw_")} == names
        assert set(inspect(pg).get_table_names(schema=settings.pg_schema)) == names  # ours: in the state schema
        assert _shape(lite) == _shape(pg)
        # the rowid alias on SQLite (ids come from the rowid; no separate sequence table)
        with lite.connect() as conn:
            ddl = conn.exec_driver_sql("select sql from sqlite_master where name = 'memory_items'").scalar()
        assert "id INTEGER NOT NULL" in ddl and "AUTOINCREMENT" not in ddl
        # text columns that reads order by sort by code point on Postgres whatever the locale
        with pg.connect() as conn:
            collation = conn.exec_driver_sql(
                "select collation_name from information_schema.columns"
                " where table_schema = current_schema() and table_name = 'memory_items' and column_name = 'key'"
            ).scalar()
        assert collation == "C"
    finally:
        lite.dispose()
        pg.dispose()


def test_reflected_schema_registers_as_a_foreign_app(settings) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.tables import Tables

    lite = sqlite_engine(settings.sqlite_url)
    try:
        create_schema(lite, REG.tables(), primary=True)
        reflected = MetaData()
        reflected.reflect(lite)
        reg = Tables.of(reflected, store="legacy")
        assert {s.name for s in reg} == {s.name for s in REG}
        order = [s.name for s in reg]
        for spec in reg:
            assert spec.store == "legacy" and spec.pk == ("id",)
            for parent in spec.parents:
                assert order.index(parent) < order.index(spec.name)
    finally:
        lite.dispose()

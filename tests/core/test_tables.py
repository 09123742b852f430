"""Tables: the application's captured tables, from models or reflected, ordered with clear errors."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dualwrite import Tables, TableSpec
from dualwrite.errors import ConfigError, UnknownTableError


def _tables() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    parent = Table("parent", md, Column("id", Integer, primary_key=True), Column("tenant_id", String(64)))
    child = Table("child", md, Column("id", Integer, primary_key=True), Column("parent_id", ForeignKey("parent.id")))
    return md, parent, child


def test_children_follow_parents_whatever_the_listing_order() -> None:
    _, parent, child = _tables()
    tables = Tables([TableSpec(child), TableSpec(parent)])
    assert [s.name for s in tables] == ["parent", "child"]
    assert tables.get("parent").tenant_column == "tenant_id" and tables.get("child").tenant_column is None


def test_of_metadata_base_table_and_list() -> None:
    md, parent, child = _tables()

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Tables.of(md, store="legacy", priority=3).names() == ["parent", "child"]
    assert [(s.store, s.priority, s.pk) for s in Tables.of(md, store="legacy", priority=3)] == [
        ("legacy", 3, ("id",)),
        ("legacy", 3, ("id",)),
    ]
    assert Tables.of(Base).names() == ["notes"]
    assert Tables.of(child).names() == ["child"]
    assert Tables.of([child, parent]).names() == ["parent", "child"]
    assert Tables.of(md, only=["child"]).names() == ["child"]
    with pytest.raises(UnknownTableError, match="nope"):
        Tables.of(md, only=["nope"])
    with pytest.raises(TypeError, match="not a Tables, MetaData"):
        Tables.of(42)


def test_stores_combine_and_select_filters() -> None:
    md, parent, child = _tables()
    other = MetaData()
    logs = Table("logs", other, Column("id", Integer, primary_key=True))
    tables = Tables.of(md, store="core", priority=0) + Tables.of(other, store="audit", priority=2)
    assert tables.names() == ["parent", "child", "logs"]
    assert tables.stores() == ["core", "audit"] and tables.priorities() == [0, 2]
    assert tables.select(priorities=[2]).names() == ["logs"]
    assert tables.select(stores="core", names=["child"]).names() == ["child"]
    assert not tables.select(priorities=[2], stores=["core"])
    assert tables.store("logs") == "audit" and tables.store("unknown") == "app"
    assert "logs" in tables and "nope" not in tables and len(tables) == 3
    with pytest.raises(UnknownTableError, match=r"^table 'nope' is not among the captured tables$"):
        tables.get("nope")
    with pytest.raises(UnknownTableError, match="store 'nope'"):
        tables.select(stores=["nope"])
    _ = logs


def test_bad_listings_are_refused() -> None:
    md, parent, child = _tables()
    with pytest.raises(ConfigError, match="listed twice"):
        Tables([TableSpec(parent, "a"), TableSpec(parent, "b")])
    with pytest.raises(ConfigError, match="would move after it"):
        Tables([TableSpec(parent, "a", 1), TableSpec(child, "a", 0)])
    nokey = Table("nokey", md, Column("x", Integer))
    with pytest.raises(ConfigError, match="has no primary key"):
        TableSpec(nokey)
    ours = Table("_dw_outbox", MetaData(), Column("seq", Integer, primary_key=True))
    with pytest.raises(ConfigError, match="dualwrite or SQLite table name"):
        TableSpec(ours)


def test_foreign_key_cycles_keep_the_listing_order() -> None:
    """users <-> teams (each references the other) is an ordinary schema: it is accepted."""
    md = MetaData()
    a = Table("a", md, Column("id", Integer, primary_key=True), Column("b_id", ForeignKey("b.id")))
    b = Table("b", md, Column("id", Integer, primary_key=True), Column("a_id", ForeignKey("a.id")))
    assert Tables([TableSpec(a), TableSpec(b)]).names() == ["a", "b"]


def test_reflect_takes_the_file_but_not_our_tables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.exec_driver_sql("CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id))")
        conn.exec_driver_sql("CREATE TABLE _dw_outbox (seq INTEGER PRIMARY KEY)")
    try:
        assert Tables.reflect(engine).names() == ["users", "posts"]
    finally:
        engine.dispose()


def test_load_names_what_is_wrong() -> None:
    assert Tables.load("dualwrite.demo.app:tables").names()[:2] == ["memory_items", "memory_retention"]
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        Tables.load("no_such_module:Base")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        Tables.load("dualwrite.demo.app:Nope")
    with pytest.raises(ConfigError, match="is not a Tables, MetaData"):
        Tables.load("dualwrite.demo.app:STORES")

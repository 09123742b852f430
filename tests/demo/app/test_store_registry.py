"""The registry: one ordered list of every table, parents before children, with clear errors."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table

from dualwrite.errors import ConfigError, UnknownTableError
from dualwrite.registry import STORES, Registry, TableSpec, default_registry


def test_default_order_is_by_priority_then_parents_first() -> None:
    reg = default_registry()
    assert reg is default_registry()
    specs = reg.tables()
    assert [s.priority for s in specs] == sorted(s.priority for s in specs)
    names = [s.name for s in specs]
    for spec in specs:
        assert spec.priority == STORES[spec.store]
        for parent in spec.parents:
            assert names.index(parent) < names.index(spec.name)
    assert names[:6] == [
        "memory_items",
        "memory_retention",
        "profiles",
        "profile_links",
        "ingest_jobs",
        "ingest_documents",
    ]
    assert reg.priorities() == [0, 1, 2]
    assert reg.get("debate_turns").parents == ("debate_agents", "debates")


def test_filters_combine() -> None:
    reg = default_registry()
    assert {s.store for s in reg.tables(priorities=[0])} == {"memory", "profiles", "ingest"}
    assert [s.name for s in reg.tables(stores="debate")] == ["debates", "debate_agents", "debate_turns"]
    assert [s.name for s in reg.tables(priorities=1, names=["graph_edges", "graph_nodes"])] == [
        "graph_nodes",
        "graph_edges",
    ]
    assert reg.tables(priorities=[2], stores=["memory"]) == []
    assert "profiles" in reg and "nope" not in reg and len(reg) == len(reg.tables())


def test_unknown_names_are_refused() -> None:
    reg = default_registry()
    with pytest.raises(UnknownTableError, match=r"^table 'nope' is not in the registry$"):
        reg.get("nope")
    with pytest.raises(UnknownTableError, match="table 'nope'"):
        reg.tables(names=["profiles", "nope"])
    with pytest.raises(UnknownTableError, match="store 'nope' is not in the registry"):
        reg.tables(stores=["nope"])


def _tables() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    parent = Table("parent", md, Column("id", Integer, primary_key=True), Column("tenant_id", String(64)))
    child = Table("child", md, Column("id", Integer, primary_key=True), Column("parent_id", ForeignKey("parent.id")))
    return md, parent, child


def test_children_follow_parents_whatever_the_listing_order() -> None:
    _, parent, child = _tables()
    reg = Registry([TableSpec("child", "app", 0, child), TableSpec("parent", "app", 0, parent)])
    assert [s.name for s in reg] == ["parent", "child"]
    assert reg.get("parent").tenant_column == "tenant_id" and reg.get("child").tenant_column is None


def test_bad_listings_are_refused() -> None:
    md, parent, child = _tables()
    with pytest.raises(ConfigError, match="listed twice"):
        Registry([TableSpec("parent", "a", 0, parent), TableSpec("parent", "b", 0, parent)])
    with pytest.raises(ConfigError, match="would move after it"):
        Registry([TableSpec("parent", "a", 1, parent), TableSpec("child", "a", 0, child)])
    nokey = Table("nokey", md, Column("x", Integer))
    with pytest.raises(ConfigError, match="has no primary key"):
        TableSpec("nokey", "a", 0, nokey)
    with pytest.raises(ConfigError, match="names table"):
        TableSpec("other", "a", 0, parent)
    a = Table("a", md, Column("id", Integer, primary_key=True), Column("b_id", ForeignKey("b.id")))
    b = Table("b", md, Column("id", Integer, primary_key=True), Column("a_id", ForeignKey("a.id")))
    with pytest.raises(ConfigError, match="cycle"):
        Registry([TableSpec("a", "x", 0, a), TableSpec("b", "x", 0, b)])


def test_from_metadata_takes_every_table() -> None:
    md, _, _ = _tables()
    reg = Registry.from_metadata(md, store="legacy", priority=3)
    assert [(s.name, s.store, s.priority, s.pk) for s in reg] == [
        ("parent", "legacy", 3, ("id",)),
        ("child", "legacy", 3, ("id",)),
    ]
    assert reg.metadata is md and reg.stores() == ["legacy"]


def test_the_adapter_catalog_reads_the_registry() -> None:
    from dualwrite.adapter import TableCatalog

    catalog = TableCatalog.default()
    for spec in default_registry():
        assert catalog.table(spec.name) is spec.table
        assert catalog.store(spec.name) == spec.store

"""The example application's tables: every store, in priority order, parents before children."""

from __future__ import annotations

from dualwrite.demo.app import STORES, tables


def test_order_is_by_priority_then_parents_first() -> None:
    app = tables()
    assert app is tables()
    specs = list(app)
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
    assert app.priorities() == [0, 1, 2]
    assert app.get("debate_turns").parents == ("debate_agents", "debates")


def test_filters_combine() -> None:
    app = tables()
    assert {s.store for s in app.select(priorities=[0])} == {"memory", "profiles", "ingest"}
    assert app.select(stores="debate").names() == ["debates", "debate_agents", "debate_turns"]
    assert app.select(priorities=1, names=["graph_edges", "graph_nodes"]).names() == ["graph_nodes", "graph_edges"]
    assert not app.select(priorities=[2], stores=["memory"])

"""The example application: a unified store layer of eight stores (our first customer's), one module per
store (schema + a tenant-bound repository class). The demo and the benchmarks run it; dualwrite itself
never imports it, and it uses dualwrite only as any application would.

    from dualwrite.demo.app import tables
    dw = DualWriter(settings, tables=tables())
"""

from __future__ import annotations

from functools import cache

from dualwrite import Tables, TableSpec

# Store name -> priority (0 moves first).
STORES: dict[str, int] = {
    "memory": 0,
    "profiles": 0,
    "ingest": 0,
    "graph": 1,
    "analytics": 1,
    "debate": 1,
    "marketplace": 2,
    "archive": 2,
}


@cache
def tables() -> Tables:
    """Every store's tables, in priority order (cached)."""
    from dualwrite.demo.app import analytics, archive, debate, graph, ingest, marketplace, memory, profiles

    listing = [
        ("memory", [memory.memory_items, memory.memory_retention]),
        ("profiles", [profiles.profiles, profiles.profile_links]),
        ("ingest", [ingest.ingest_jobs, ingest.ingest_documents]),
        ("graph", [graph.graph_nodes, graph.graph_edges]),
        ("analytics", [analytics.analytics_events, analytics.analytics_rollups]),
        ("debate", [debate.debates, debate.debate_agents, debate.debate_turns]),
        ("marketplace", [marketplace.marketplace_listings, marketplace.marketplace_purchases]),
        ("archive", [archive.archive_records]),
    ]
    return Tables(TableSpec(t, store, STORES[store]) for store, group in listing for t in group)

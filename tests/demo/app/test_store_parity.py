"""The same calls give the same results on either backend, and rows written through the stores in the
dual-write phase land identically on both sides (the types survive the change events and the apply)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from dualwrite.adapter import DualWriter
from dualwrite.demo.app import tables
from dualwrite.demo.app.analytics import AnalyticsStore
from dualwrite.demo.app.archive import ArchiveStore
from dualwrite.demo.app.debate import DebateStore
from dualwrite.demo.app.errors import StoreError
from dualwrite.demo.app.graph import GraphStore
from dualwrite.demo.app.ingest import IngestStore
from dualwrite.demo.app.marketplace import MarketplaceStore
from dualwrite.demo.app.memory import MemoryStore
from dualwrite.demo.app.profiles import ProfileStore
from dualwrite.testing import prepared_writer


def scenario(dw: DualWriter, clock: Any, tenant: str = "acme") -> list[Any]:
    """Every store's calls, with their results (errors as their type and message)."""
    out: list[Any] = []

    def call(fn: Any, *args: Any, **kw: Any) -> Any:
        clock.advance(0.25)
        try:
            result = fn(*args, **kw)
        except StoreError as exc:
            result = (type(exc).__name__, str(exc))
        out.append(result)
        return result

    mem = MemoryStore(dw, tenant, clock=clock)
    for key in ["b", "B", "é", "a", "😀", "a b"]:
        call(mem.put, "ns", key, f"v{key}", metadata={"k": [key, 1.5, None]}, ttl_seconds=60 if key < "b" else None)
    call(mem.put, "ns", "a", "replaced")
    call(mem.set_retention, "ns", 3600)
    call(mem.list, "ns")
    call(mem.list, "ns", "a")
    clock.advance(120)
    call(mem.prune)
    call(mem.list, "ns")

    ps = ProfileStore(dw, tenant, clock=clock)
    ann, bea = call(ps.create, "ann", attributes={"x": 1}), call(ps.create, "bea", bio="b")
    call(ps.create, "ann")
    call(ps.link, ann["id"], bea["id"], "follows")
    call(ps.link, bea["id"], ann["id"], "follows")
    call(ps.linked, ann["id"], direction="both")
    call(ps.update, bea["id"], display_name="Bea")

    ing = IngestStore(dw, tenant, clock=clock)
    job = call(ing.start_job, "src")
    doc = call(ing.add_document, job["id"], "text one", metadata={"p": 1})
    call(ing.add_document, job["id"], "text one")
    call(ing.mark_document, doc["id"], "failed", error="bad")
    call(ing.finish_job, job["id"])

    g = GraphStore(dw, tenant, clock=clock)
    n1, n2 = call(g.add_node, "p", "Ada", confidence=0.5), call(g.add_node, "p", "Bob")
    call(g.add_edge, n1["id"], n2["id"], "knows", weight=0.3, source="s")
    call(g.add_node, "p", "Ada", {"v": 2})
    call(g.neighbours, n1["id"], direction="both")
    call(g.add_node, "p", "Cy", confidence=2.0)

    an = AnalyticsStore(dw, tenant, clock=clock)
    for value in [0.1, "0.2", Decimal("-3.000001"), None, 7]:
        call(an.record, "metric", value, properties={"v": str(value)})
    call(an.rollup, clock.now.date())
    call(an.rollups, since=date(2026, 1, 1))

    ds = DebateStore(dw, tenant, clock=clock)
    deb = call(ds.start, "topic")
    agent = call(ds.add_agent, deb["id"], "x", role="pro")
    for text in ["one", "two", "three"]:
        call(ds.add_turn, deb["id"], agent["id"], text)
    call(ds.transcript, deb["id"])

    mk = MarketplaceStore(dw, tenant, clock=clock)
    item = call(mk.list_item, "Lamp", "19.99", seller="ann", attributes={"c": "red"})
    call(mk.purchase, item["id"], "bea", 3)
    call(mk.close_listing, item["id"])
    call(mk.purchase, item["id"], "bea")
    call(mk.listings)

    ar = ArchiveStore(dw, tenant, clock=clock)
    rec = call(ar.archive, "memory", "memory_items", {"id": 1}, mem.get_id(1) or {"id": 1})
    call(ar.find, "memory", "memory_items", 1)
    call(ar.get, rec["id"])
    return out


def test_same_calls_same_results_on_both_backends(pair, make_clock) -> None:  # type: ignore[no-untyped-def]
    lite = scenario(pair["sqlite"], make_clock())
    pg = scenario(pair["postgres"], make_clock())
    assert len(lite) == len(pg)
    for i, (a, b) in enumerate(zip(lite, pg, strict=True)):
        assert a == b, f"call {i} differs"
    assert ("DuplicateError", "profiles.handle: 'ann' is already taken in this tenant") in lite


def _dump(dw: DualWriter, backend: str) -> dict[str, list[dict[str, Any]]]:
    with dw.backends.read_engine(backend).connect() as conn:
        return {
            s.name: [dict(r) for r in conn.execute(select(s.table).order_by(*s.table.primary_key.columns)).mappings()]
            for s in tables()
        }


def test_dual_write_lands_identical_rows_on_both_sides(settings, make_clock) -> None:  # type: ignore[no-untyped-def]
    with prepared_writer(settings, tables(), phase="dual_write") as dw:
        scenario(dw, make_clock())
        scenario(dw, make_clock(), tenant="other")
        lite, pg = _dump(dw, "sqlite"), _dump(dw, "postgres")
    assert sum(len(rows) for rows in lite.values()) > 40
    for name in lite:
        assert lite[name] == pg[name], name

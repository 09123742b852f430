"""Tenant isolation: a store bound to tenant A can neither read nor change tenant B's rows, whatever ids
it is given; references across tenants are refused by the API and, beneath it, by the database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, update

from dualwrite.demo.app import tables
from dualwrite.demo.app.analytics import AnalyticsStore
from dualwrite.demo.app.archive import ArchiveStore
from dualwrite.demo.app.common import TenantStore
from dualwrite.demo.app.debate import DebateStore
from dualwrite.demo.app.errors import CrossTenantError, DuplicateError, NotFoundError, ReferenceViolation
from dualwrite.demo.app.graph import GraphStore
from dualwrite.demo.app.ingest import IngestStore
from dualwrite.demo.app.marketplace import MarketplaceStore
from dualwrite.demo.app.memory import MemoryStore
from dualwrite.demo.app.profiles import ProfileStore, profile_links


def test_reads_and_changes_stay_inside_the_tenant(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    a = {cls: cls(dw, "tenant-a", clock=clock) for cls in (MemoryStore, ProfileStore, GraphStore, ArchiveStore)}
    b = {cls: cls(dw, "tenant-b", clock=clock) for cls in (MemoryStore, ProfileStore, GraphStore, ArchiveStore)}
    mem_b = b[MemoryStore].put("ns", "k", "b's secret", ttl_seconds=5)
    a[MemoryStore].put("ns", "k", "a's own")
    prof_b = b[ProfileStore].create("bea")
    node_b = b[GraphStore].add_node("person", "Bea")
    rec_b = b[ArchiveStore].archive("s", "t", 1, {"x": 1})
    b[MemoryStore].set_retention("ns", 1)
    before = counts(dw)

    # reads by B's ids find nothing
    assert a[MemoryStore].get_id(mem_b["id"]) is None
    assert a[MemoryStore].get("ns", "k")["content"] == "a's own"  # type: ignore[index]
    assert a[ProfileStore].get(prof_b["id"]) is None and a[ProfileStore].by_handle("bea") is None
    assert a[GraphStore].get_node(node_b["id"]) is None and a[GraphStore].node("person", "Bea") is None
    assert a[GraphStore].provenance(node_id=node_b["id"]) is None
    assert a[GraphStore].neighbours(node_b["id"], direction="both") == []
    assert a[ArchiveStore].get(rec_b["id"]) is None and a[ArchiveStore].find("s", "t") == []
    assert [r["tenant_id"] for r in a[MemoryStore].list("ns")] == ["tenant-a"]
    assert a[ProfileStore].list() == [] and a[ProfileStore].linked(prof_b["id"], direction="both") == []
    assert a[MemoryStore].retention("ns") is None

    # changes by B's ids change nothing
    assert a[MemoryStore].delete_id(mem_b["id"]) is False
    with pytest.raises(NotFoundError):
        a[ProfileStore].update(prof_b["id"], bio="hijacked")
    assert a[ProfileStore].delete(prof_b["id"]) is False
    assert a[GraphStore].delete_node(node_b["id"]) is False
    assert a[ArchiveStore].delete(rec_b["id"]) is False
    assert a[ProfileStore].unlink(prof_b["id"], prof_b["id"] + 1) == 0
    # A's prune, long after B's items expired, leaves B's items alone
    assert a[MemoryStore].prune(clock.now + timedelta(days=1)) == 0
    assert counts(dw) == before
    assert b[ProfileStore].get(prof_b["id"]) == prof_b and b[GraphStore].get_node(node_b["id"]) == node_b
    assert b[MemoryStore].get_id(mem_b["id"]) == mem_b


def test_references_across_tenants_are_refused(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    pa, pb = ProfileStore(dw, "tenant-a", clock=clock), ProfileStore(dw, "tenant-b", clock=clock)
    ga, gb = GraphStore(dw, "tenant-a", clock=clock), GraphStore(dw, "tenant-b", clock=clock)
    ia, ib = IngestStore(dw, "tenant-a", clock=clock), IngestStore(dw, "tenant-b", clock=clock)
    da, db = DebateStore(dw, "tenant-a", clock=clock), DebateStore(dw, "tenant-b", clock=clock)
    ma, mb = MarketplaceStore(dw, "tenant-a", clock=clock), MarketplaceStore(dw, "tenant-b", clock=clock)
    ann, bea = pa.create("ann"), pb.create("bea")
    na, nb = ga.add_node("k", "a"), gb.add_node("k", "b")
    job_b = ib.start_job("b-src")
    doc_b = ib.add_document(job_b["id"], "b text")
    deb_a, deb_b = da.start("a topic"), db.start("b topic")
    agent_a, agent_b = da.add_agent(deb_a["id"], "x"), db.add_agent(deb_b["id"], "y")
    listing_b = mb.list_item("thing", 5, seller="bea")
    before = counts(dw)

    refusals = [
        (lambda: pa.link(ann["id"], bea["id"], "follows"), "profile_links.target_profile_id: profiles id"),
        (lambda: pa.link(bea["id"], ann["id"], "follows"), "profile_links.source_profile_id: profiles id"),
        (lambda: ga.add_edge(na["id"], nb["id"], "r"), "graph_edges.dst_node_id: graph_nodes id"),
        (lambda: ga.add_edge(nb["id"], nb["id"], "r"), "graph_edges.src_node_id: graph_nodes id"),
        (lambda: ia.add_document(job_b["id"], "a text"), "ingest_documents.job_id: ingest_jobs id"),
        (lambda: ia.mark_document(doc_b["id"], "processed"), "ingest_documents.id: ingest_documents id"),
        (lambda: ia.finish_job(job_b["id"]), "ingest_jobs.id: ingest_jobs id"),
        (lambda: da.add_agent(deb_b["id"], "z"), "debate_agents.debate_id: debates id"),
        (lambda: da.add_turn(deb_b["id"], agent_b["id"], "hi"), "debate_turns.debate_id: debates id"),
        (lambda: da.add_turn(deb_a["id"], agent_b["id"], "hi"), "debate_turns.agent_id: debate_agents id"),
        (lambda: da.close(deb_b["id"]), "debates.id: debates id"),
        (lambda: ma.purchase(listing_b["id"], "ann"), "marketplace_purchases.listing_id: marketplace_listings id"),
        (lambda: ma.close_listing(listing_b["id"]), "marketplace_listings.id: marketplace_listings id"),
    ]
    for call, where in refusals:
        with pytest.raises(CrossTenantError, match=rf"^{where} \d+ belongs to another tenant$"):
            call()
    assert counts(dw) == before
    assert db.transcript(deb_b["id"]) == [] and da.get(deb_b["id"]) is None and agent_a["debate_id"] == deb_a["id"]
    assert mb.get_listing(listing_b["id"])["status"] == "open"  # type: ignore[index]

    # an id that exists nowhere is "not found", not "another tenant's"
    with pytest.raises(NotFoundError, match="profiles id 987654 does not exist"):
        pa.link(ann["id"], 987654, "follows")


def test_the_database_refuses_cross_tenant_references_too(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    """Beneath the API: the composite (id, tenant_id) foreign keys refuse a link to B's profile."""
    pa, pb = ProfileStore(dw, "tenant-a", clock=clock), ProfileStore(dw, "tenant-b", clock=clock)
    ann, ann2, bea = pa.create("ann"), pa.create("ann2"), pb.create("bea")
    raw = TenantStore(dw, "tenant-a")
    profiles = tables().table("profiles")
    before = counts(dw)
    row = {"tenant_id": "tenant-a", "source_profile_id": ann["id"], "target_profile_id": bea["id"]}
    with pytest.raises(ReferenceViolation, match="^profile_links: foreign key violated"):
        with raw.write() as tx:
            tx.execute(insert(profile_links).values(**row, relation="follows", created_at=clock.now))
    # nothing half-written: the first statement of a failed transaction is rolled back with it
    with pytest.raises(DuplicateError, match="^profiles: a row with this handle already exists for the tenant$"):
        with raw.write() as tx:
            now = clock.now
            tx.execute(insert(profiles).values(tenant_id="tenant-a", handle="new", created_at=now, updated_at=now))
            tx.execute(update(profiles).where(profiles.c.id == ann2["id"]).values(handle="ann"))
    assert counts(dw) == before
    assert pa.by_handle("new") is None and pa.get(ann2["id"]) == ann2


def test_analytics_rollups_count_only_the_tenants_events(dw, clock) -> None:  # type: ignore[no-untyped-def]
    a, b = AnalyticsStore(dw, "tenant-a", clock=clock), AnalyticsStore(dw, "tenant-b", clock=clock)
    a.record("m", 1)
    b.record("m", 100)
    b.record("m", 200)
    b.rollup(clock.now.date())
    assert [(r["count"], r["sum"]) for r in a.rollup(clock.now.date())] == [(1, 1)]
    assert [e["value"] for e in a.events()] == [1] and [r["count"] for r in a.rollups()] == [1]
    assert [(r["count"], r["sum"]) for r in b.rollups()] == [(2, 300)]

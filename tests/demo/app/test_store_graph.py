"""Graph store on each backend alone: node upserts, edges, neighbours in order, provenance."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dualwrite.demo.app.errors import ValidationError
from dualwrite.demo.app.graph import GraphStore


def test_nodes_upsert_by_kind_and_name(dw, clock) -> None:  # type: ignore[no-untyped-def]
    g = GraphStore(dw, "acme", clock=clock)
    seen = clock.now - timedelta(days=1)
    n = g.add_node("person", "Ada", {"born": 1815}, source="wiki", extractor="ner-v1", confidence=0.9, observed_at=seen)
    assert (n["kind"], n["name"], n["properties"], n["confidence"], n["observed_at"]) == (
        "person",
        "Ada",
        {"born": 1815},
        0.9,
        seen,
    )
    clock.advance(10)
    again = g.add_node("person", "Ada", {"born": 1815, "field": "math"}, source="book", confidence=0.75)
    assert again["id"] == n["id"] and again["created_at"] == n["created_at"] and again["updated_at"] == clock.now
    assert again["properties"] == {"born": 1815, "field": "math"} and again["extractor"] is None
    assert g.node("person", "Ada") == again and g.get_node(n["id"]) == again
    assert g.node("place", "Ada") is None
    g.add_node("person", "Babbage")
    assert [x["name"] for x in g.nodes("person")] == ["Ada", "Babbage"]


def test_edges_neighbours_provenance(dw, clock) -> None:  # type: ignore[no-untyped-def]
    g = GraphStore(dw, "acme", clock=clock)
    ada, bab, eng, lon = (
        g.add_node(k, name)
        for k, name in [("person", "Ada"), ("person", "Babbage"), ("thing", "Engine"), ("place", "London")]
    )
    e1 = g.add_edge(ada["id"], bab["id"], "knows", weight=0.5, source="letters", confidence=1.0)
    e1b = g.add_edge(ada["id"], bab["id"], "knows", weight=0.8, extractor="re-v2")
    assert e1b["id"] == e1["id"] and e1b["weight"] == 0.8 and e1b["source"] is None
    g.add_edge(ada["id"], eng["id"], "wrote_about")
    g.add_edge(bab["id"], eng["id"], "built")
    g.add_edge(ada["id"], lon["id"], "lived_in")
    g.add_edge(bab["id"], ada["id"], "knows")
    g.add_edge(ada["id"], ada["id"], "self_ref")  # a loop is allowed in a graph

    out = g.neighbours(ada["id"])
    assert [(x["edge"]["relation"], x["node"]["name"]) for x in out] == [
        ("knows", "Babbage"),
        ("lived_in", "London"),
        ("self_ref", "Ada"),
        ("wrote_about", "Engine"),
    ]
    assert all(x["direction"] == "out" and x["edge"]["src_node_id"] == ada["id"] for x in out)
    assert out[0]["node"] == g.get_node(bab["id"])
    assert [x["node"]["name"] for x in g.neighbours(eng["id"], direction="in")] == ["Babbage", "Ada"]
    both = g.neighbours(ada["id"], "knows", direction="both")
    assert [(x["direction"], x["node"]["name"]) for x in both] == [("out", "Babbage"), ("in", "Babbage")]

    assert g.provenance(edge_id=e1["id"]) == {
        "source": None,
        "extractor": "re-v2",
        "confidence": None,
        "observed_at": None,
    }
    assert g.provenance(node_id=ada["id"])["source"] is None  # type: ignore[index]
    assert g.provenance(node_id=10**9) is None
    with pytest.raises(TypeError):
        g.provenance()

    assert g.delete_edge(e1["id"]) is True and g.get_edge(e1["id"]) is None
    assert g.delete_node(ada["id"]) is True  # and every edge touching it
    assert g.neighbours(bab["id"], direction="both") == [
        {"direction": "out", "edge": g.neighbours(bab["id"])[0]["edge"], "node": g.get_node(eng["id"])}
    ]


def test_graph_values_are_checked(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    g = GraphStore(dw, "acme", clock=clock)
    a, b = g.add_node("k", "a"), g.add_node("k", "b")
    before = counts(dw)
    # the CHECK constraint refuses it on both backends; the error names the table and constraint
    with pytest.raises(ValidationError, match=r"^graph_nodes: check ck_graph_nodes_confidence failed$"):
        g.add_node("k", "c", confidence=1.5)
    with pytest.raises(ValidationError, match=r"graph_edges\.weight: nan is not finite"):
        g.add_edge(a["id"], b["id"], "r", weight=float("nan"))
    with pytest.raises(ValidationError, match=r"graph_nodes\.kind: must not be empty"):
        g.add_node("", "x")
    assert counts(dw) == before

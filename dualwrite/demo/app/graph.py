"""Graph store (P1): a knowledge graph of nodes (unique by kind + name) and typed, weighted edges, each
carrying its provenance (source, extractor, confidence, observed_at).

Edges reference nodes through composite (node id, tenant_id) foreign keys: an edge between two tenants'
nodes is refused by the API (CrossTenantError) and, failing that, by the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

# Each store module declares its tables from the same pieces (SQLAlchemy's, base.py's mixins and column
# helpers), so these import lists repeat by design: one store, one self-contained module.
from sqlalchemy import (
    CheckConstraint,
    Double,
    ForeignKeyConstraint,
    Index,
    String,
    UniqueConstraint,
    and_,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, Stamped, StampedRow, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import ref_column, stamp_column, tenant_fk
from dualwrite.demo.app.common import DIRECTIONS, Direction, TenantStore, check_choice, check_id, check_text
from dualwrite.types import JSONType, OrderedString

PROVENANCE = ("source", "extractor", "confidence", "observed_at")
CONFIDENCE_CHECK = "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)"


class GraphNode(TenantKeyed, Stamped, Base):
    __tablename__ = "graph_nodes"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "name"),
        UniqueConstraint("id", "tenant_id"),  # target of the edges' tenant-safe foreign keys
        CheckConstraint(CONFIDENCE_CHECK, name="confidence"),
    )
    kind: Mapped[str] = mapped_column(OrderedString(64))
    name: Mapped[str] = mapped_column(OrderedString(255))
    properties: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source: Mapped[str | None] = mapped_column(String(500))
    extractor: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Double)
    observed_at: Mapped[datetime | None] = stamp_column(nullable=True)


class GraphEdge(TenantKeyed, Stamped, Base):
    __tablename__ = "graph_edges"
    __table_args__ = (
        UniqueConstraint("tenant_id", "src_node_id", "dst_node_id", "relation"),
        ForeignKeyConstraint(*tenant_fk("src_node_id", "graph_nodes")),
        ForeignKeyConstraint(*tenant_fk("dst_node_id", "graph_nodes")),
        Index(None, "tenant_id", "dst_node_id"),
        CheckConstraint(CONFIDENCE_CHECK, name="confidence"),
    )
    src_node_id: Mapped[int] = ref_column()
    dst_node_id: Mapped[int] = ref_column()
    relation: Mapped[str] = mapped_column(OrderedString(64))
    weight: Mapped[float] = mapped_column(Double, default=1.0)
    source: Mapped[str | None] = mapped_column(String(500))
    extractor: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Double)
    observed_at: Mapped[datetime | None] = stamp_column(nullable=True)


graph_nodes, graph_edges = core_tables(GraphNode, GraphEdge)


class GraphNodeRow(TenantKeyedRow, StampedRow):
    kind: str
    name: str
    properties: dict[str, Any]
    source: str | None
    extractor: str | None
    confidence: float | None
    observed_at: datetime | None


class GraphEdgeRow(TenantKeyedRow, StampedRow):
    src_node_id: int
    dst_node_id: int
    relation: str
    weight: float
    source: str | None
    extractor: str | None
    confidence: float | None
    observed_at: datetime | None


class Provenance(TypedDict):
    source: str | None
    extractor: str | None
    confidence: float | None
    observed_at: datetime | None


class Neighbour(TypedDict):
    direction: str  # "out": node is the edge's destination; "in": its source
    edge: GraphEdgeRow
    node: GraphNodeRow


def _provenance(
    source: str | None, extractor: str | None, confidence: float | None, observed_at: datetime | None
) -> dict[str, Any]:
    return {"source": source, "extractor": extractor, "confidence": confidence, "observed_at": observed_at}


class GraphStore(TenantStore):
    store = "graph"

    def add_node(
        self,
        kind: str,
        name: str,
        properties: dict[str, Any] | None = None,
        *,
        source: str | None = None,
        extractor: str | None = None,
        confidence: float | None = None,
        observed_at: datetime | None = None,
    ) -> GraphNodeRow:
        """Insert the node (kind, name), or replace its properties and provenance if it exists."""
        check_text(kind, "graph_nodes.kind", 64, empty=False)
        check_text(name, "graph_nodes.name", 255, empty=False)
        values = {
            "kind": kind,
            "name": name,
            "properties": {} if properties is None else properties,
            **_provenance(source, extractor, confidence, observed_at),
        }
        with self.write() as tx:
            row = self.upsert(tx, graph_nodes, values, ["kind", "name"], keep=("created_at",))
        return cast(GraphNodeRow, row)

    def add_edge(
        self,
        src_node_id: int,
        dst_node_id: int,
        relation: str,
        *,
        weight: float = 1.0,
        source: str | None = None,
        extractor: str | None = None,
        confidence: float | None = None,
        observed_at: datetime | None = None,
    ) -> GraphEdgeRow:
        """Insert the edge (src, relation, dst) between this tenant's nodes, or update its weight and
        provenance; CrossTenantError if either node is another tenant's."""
        check_text(relation, "graph_edges.relation", 64, empty=False)
        values = {
            "src_node_id": src_node_id,
            "dst_node_id": dst_node_id,
            "relation": relation,
            "weight": weight,
            **_provenance(source, extractor, confidence, observed_at),
        }
        with self.write() as tx:
            self.owned(tx, graph_nodes, src_node_id, "graph_edges.src_node_id")
            self.owned(tx, graph_nodes, dst_node_id, "graph_edges.dst_node_id")
            conflict = ["src_node_id", "dst_node_id", "relation"]
            row = self.upsert(tx, graph_edges, values, conflict, keep=("created_at",))
        return cast(GraphEdgeRow, row)

    def get_node(self, node_id: int) -> GraphNodeRow | None:
        return cast(GraphNodeRow | None, self.get_row("get_node", graph_nodes, node_id))

    def get_edge(self, edge_id: int) -> GraphEdgeRow | None:
        return cast(GraphEdgeRow | None, self.get_row("get_edge", graph_edges, edge_id))

    def node(self, kind: str, name: str) -> GraphNodeRow | None:
        stmt = select(graph_nodes).where(self.mine(graph_nodes), graph_nodes.c.kind == kind, graph_nodes.c.name == name)
        return cast(GraphNodeRow | None, self.first("node", stmt, kind=kind, name=name))

    def nodes(self, kind: str) -> list[GraphNodeRow]:
        stmt = (
            select(graph_nodes).where(self.mine(graph_nodes), graph_nodes.c.kind == kind).order_by(graph_nodes.c.name)
        )
        return cast(list[GraphNodeRow], self.rows("nodes", stmt, kind=kind))

    def neighbours(self, node_id: int, relation: str | None = None, direction: Direction = "out") -> list[Neighbour]:
        """The node's neighbours with the connecting edge, by (direction, relation, kind, name, edge id)."""
        node_id = check_id(node_id, "node_id")
        check_choice(direction, "direction", DIRECTIONS)
        e, n = graph_edges, graph_nodes
        found: list[Neighbour] = []
        for way, here, there in (("out", e.c.src_node_id, e.c.dst_node_id), ("in", e.c.dst_node_id, e.c.src_node_id)):
            if direction not in (way, "both"):
                continue
            conds = [self.mine(e), here == node_id]
            if relation is not None:
                conds.append(e.c.relation == relation)
            stmt = (
                select(e, *[c.label(f"n_{c.name}") for c in n.columns])
                .join(n, and_(n.c.id == there, n.c.tenant_id == e.c.tenant_id))
                .where(*conds)
                .order_by(e.c.relation, n.c.kind, n.c.name, e.c.id)
            )
            rows = self.rows(f"neighbours_{way}", stmt, node_id=node_id, relation=relation)
            found += [_split(way, row) for row in rows]
        return found

    def provenance(self, *, node_id: int | None = None, edge_id: int | None = None) -> Provenance | None:
        """Where a node's or an edge's facts came from (give exactly one id); None if not this tenant's."""
        if (node_id is None) == (edge_id is None):
            raise TypeError("provenance() takes exactly one of node_id= or edge_id=")
        row = self.get_node(node_id) if node_id is not None else self.get_edge(cast(int, edge_id))
        return None if row is None else cast(Provenance, {k: row[k] for k in PROVENANCE})  # type: ignore[literal-required]

    def delete_edge(self, edge_id: int) -> bool:
        edge_id = check_id(edge_id, "graph_edges.id")
        with self.write() as tx:
            return bool(self.delete_where(tx, graph_edges, graph_edges.c.id == edge_id))

    def delete_node(self, node_id: int) -> bool:
        """Delete the node and every edge touching it (each a captured change)."""
        node_id = check_id(node_id, "graph_nodes.id")
        with self.write() as tx:
            self.delete_where(
                tx, graph_edges, or_(graph_edges.c.src_node_id == node_id, graph_edges.c.dst_node_id == node_id)
            )
            return bool(self.delete_where(tx, graph_nodes, graph_nodes.c.id == node_id))


def _split(direction: str, row: dict[str, Any]) -> Neighbour:
    edge = {k: v for k, v in row.items() if not k.startswith("n_")}
    node = {k[2:]: v for k, v in row.items() if k.startswith("n_")}
    return {"direction": direction, "edge": cast(GraphEdgeRow, edge), "node": cast(GraphNodeRow, node)}

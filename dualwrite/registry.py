"""The one list of every store and table, in priority order, with its primary key.

Backfill, verification, replay and the benchmarks read it; nobody repeats it. P0 stores move first:

    reg = default_registry()
    for spec in reg.tables(priorities=[0]):      # parents before children
        spec.name, spec.store, spec.pk, spec.tenant_column, spec.table

A foreign database (reflected) becomes a registry with `Registry.from_metadata(metadata)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from sqlalchemy import Column, Engine, MetaData, Table

from dualwrite.errors import ConfigError, UnknownTableError

# Store name -> priority (0 moves first). The tables of each store are listed in `_builtin()`.
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


@dataclass(frozen=True)
class TableSpec:
    name: str
    store: str
    priority: int
    table: Table
    tenant_key: str | None = "tenant_id"  # the tenant column's name, if the table has one

    def __post_init__(self) -> None:
        if self.name != self.table.name:
            raise ConfigError(f"registry: spec {self.name!r} names table {self.table.name!r}")
        if not self.table.primary_key.columns:
            raise ConfigError(f"registry: table {self.name!r} has no primary key; dualwrite needs one to version rows")

    @property
    def pk(self) -> tuple[str, ...]:
        """Primary key column names, in key order."""
        return tuple(c.name for c in self.table.primary_key.columns)

    @property
    def tenant_column(self) -> str | None:
        return self.tenant_key if self.tenant_key is not None and self.tenant_key in self.table.c else None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.table.columns)

    @property
    def serial_column(self) -> str | None:
        """The integer key the database generates (a Postgres sequence to move past copied ids), if any."""
        col: Column[object] | None = self.table.autoincrement_column
        return None if col is None else col.name

    @property
    def parents(self) -> tuple[str, ...]:
        """Names of the tables this one references (itself excluded), sorted."""
        return tuple(sorted({fk.column.table.name for fk in self.table.foreign_keys} - {self.name}))


class Registry:
    def __init__(self, specs: Iterable[TableSpec]) -> None:
        specs = list(specs)
        self._by_name: dict[str, TableSpec] = {}
        for spec in specs:
            if spec.name in self._by_name:
                raise ConfigError(f"registry: table {spec.name!r} is listed twice")
            self._by_name[spec.name] = spec
        metadatas = {id(s.table.metadata) for s in specs}
        if len(metadatas) > 1:
            raise ConfigError("registry: all tables must belong to one MetaData")
        self._metadata = specs[0].table.metadata if specs else MetaData()
        self._ordered = _order(specs)

    # -- lookups -----------------------------------------------------------------------------------
    def tables(
        self,
        priorities: Iterable[int] | int | None = None,
        stores: Iterable[str] | str | None = None,
        names: Iterable[str] | str | None = None,
    ) -> list[TableSpec]:
        """Specs in priority order, parents before children within a priority; filters combine (AND)."""
        pri = _as_set(priorities)
        sto = _as_set(stores)
        nam = _as_set(names)
        for name in nam or ():
            self.get(name)
        known = self.stores()
        for store in sto or ():
            if store not in known:
                raise UnknownTableError(f"store {store!r} is not in the registry (known: {', '.join(known)})")
        return [
            s
            for s in self._ordered
            if (pri is None or s.priority in pri) and (sto is None or s.store in sto) and (nam is None or s.name in nam)
        ]

    def get(self, name: str) -> TableSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownTableError(f"table {name!r} is not in the registry") from None

    def table(self, name: str) -> Table:
        """The Table of `name` (a `TableLookup` for dualwrite.apply)."""
        return self.get(name).table

    def stores(self) -> list[str]:
        """Store names in priority order."""
        return list(dict.fromkeys(s.store for s in self._ordered))

    def priorities(self) -> list[int]:
        return sorted({s.priority for s in self._ordered})

    @property
    def metadata(self) -> MetaData:
        """The MetaData every listed table belongs to (it may hold other tables too: see create_all)."""
        return self._metadata

    def create_all(self, bind: Engine) -> None:
        """Create the listed tables that are missing (nothing else of their MetaData)."""
        self._metadata.create_all(bind, tables=[s.table for s in self._ordered], checkfirst=True)

    def __iter__(self) -> Iterator[TableSpec]:
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._ordered)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"Registry({', '.join(s.name for s in self._ordered)})"

    @classmethod
    def from_metadata(
        cls, metadata: MetaData, store: str = "app", priority: int = 0, *, tenant_column: str | None = "tenant_id"
    ) -> Registry:
        """Every table of a (reflected) MetaData as one store; tables without a primary key are refused."""
        return cls(
            TableSpec(name=t.name, store=store, priority=priority, table=t, tenant_key=tenant_column)
            for t in metadata.sorted_tables
        )


def _as_set(value: Iterable[object] | object | None) -> set[object] | None:
    if value is None:
        return None
    if isinstance(value, str | int):
        return {value}
    return set(value)  # type: ignore[arg-type]


def _order(specs: list[TableSpec]) -> list[TableSpec]:
    """By priority; within one, a topological order of the foreign keys (ties keep the listing order)."""
    by_name = {s.name: s for s in specs}
    for spec in specs:
        for parent in spec.parents:
            if parent in by_name and by_name[parent].priority > spec.priority:
                raise ConfigError(
                    f"registry: {spec.name!r} (P{spec.priority}) references {parent!r} (P{by_name[parent].priority}),"
                    " which would move after it"
                )
    ordered: list[TableSpec] = []
    for priority in sorted({s.priority for s in specs}):
        pending = [s for s in specs if s.priority == priority]
        done = {s.name for s in ordered}
        while pending:
            ready = next((s for s in pending if all(p in done or p not in by_name for p in s.parents)), None)
            if ready is None:
                cycle = ", ".join(s.name for s in pending)
                raise ConfigError(f"registry: foreign keys form a cycle among {cycle}")
            ordered.append(ready)
            done.add(ready.name)
            pending.remove(ready)
    return ordered


def _builtin() -> list[TableSpec]:
    from dualwrite.demo.app import analytics, archive, debate, graph, ingest, marketplace, memory, profiles

    listing: list[tuple[str, list[Table]]] = [
        ("memory", [memory.memory_items, memory.memory_retention]),
        ("profiles", [profiles.profiles, profiles.profile_links]),
        ("ingest", [ingest.ingest_jobs, ingest.ingest_documents]),
        ("graph", [graph.graph_nodes, graph.graph_edges]),
        ("analytics", [analytics.analytics_events, analytics.analytics_rollups]),
        ("debate", [debate.debates, debate.debate_agents, debate.debate_turns]),
        ("marketplace", [marketplace.marketplace_listings, marketplace.marketplace_purchases]),
        ("archive", [archive.archive_records]),
    ]
    return [TableSpec(t.name, store, STORES[store], t) for store, tables in listing for t in tables]


@cache
def default_registry() -> Registry:
    """The built-in stores (cached)."""
    return Registry(_builtin())

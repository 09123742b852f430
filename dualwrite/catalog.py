"""The catalog of captured tables: event table names to Table objects, their store (for metric labels),
and the foreign keys with referential actions between them (built, and refused if uncapturable, up front)."""

from __future__ import annotations

from sqlalchemy import Table

from dualwrite import cascade
from dualwrite.errors import UnknownTableError


class TableCatalog:
    """Resolves event table names to Table objects and their store (for metric labels)."""

    def __init__(self, tables: dict[str, tuple[Table, str]] | None = None) -> None:
        self._tables = dict(tables or {})
        self._referrers = cascade.build_referrers(self.tables())  # refuses what cannot be captured

    def add(self, table: Table, store: str = "app") -> None:
        self._tables[table.name] = (table, store)
        self._referrers = cascade.build_referrers(self.tables())

    def referrers(self) -> dict[str, list[cascade.Referrer]]:
        """Parent table name -> foreign keys onto it with referential actions (see cascade.py)."""
        return self._referrers

    def table(self, name: str) -> Table:
        try:
            return self._tables[name][0]
        except KeyError:
            raise UnknownTableError(f"table {name!r} is not in the registry") from None

    def tables(self) -> list[Table]:
        return [t for t, _ in self._tables.values()]

    def store(self, name: str) -> str:
        entry = self._tables.get(name)
        return entry[1] if entry else "app"

    @classmethod
    def default(cls) -> TableCatalog:
        from dualwrite.registry import default_registry

        reg = default_registry()
        return cls({s.name: (s.table, s.store) for s in reg.tables()})

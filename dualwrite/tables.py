"""The tables dualwrite moves: the application's own, from its SQLAlchemy models or reflected from SQLite.

    tables = Tables.of(Base.metadata)                           # every table of the models, one store "app"
    tables = Tables.of(billing_md, store="billing", priority=0) + Tables.of(audit_md, store="audit", priority=2)
    tables = Tables.reflect(sqlite_engine)                     # any SQLite database, no models needed
    tables = Tables.load("myapp.models:Base")                  # what `--metadata` / DUALWRITE_METADATA name

Each `TableSpec` has a store (a label for metrics and `--stores`) and a priority (P0 moves first). The
order is by priority, then parents before children; a table may not reference one that moves after it.
The foreign keys with referential actions between the tables are worked out when the set is built, and
actions the capture cannot follow are refused then (see cascade.py). Every role takes its tables from
here; nothing falls back to a built-in list.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Engine, MetaData, Table, inspect
from sqlalchemy.exc import SAWarning

from dualwrite import cascade, casts
from dualwrite.errors import ConfigError, UnknownTableError

# Tables of dualwrite's own (the bookkeeping) and SQLite's, never captured.
OWN_PREFIXES = ("_dw_", "sqlite_")


@dataclass(frozen=True)
class TableSpec:
    table: Table
    store: str = "app"
    priority: int = 0
    tenant_key: str | None = "tenant_id"  # the tenant column's name, if the table has one

    def __post_init__(self) -> None:
        if not self.table.primary_key.columns:
            raise ConfigError(f"tables: table {self.name!r} has no primary key; dualwrite needs one to version rows")
        if self.name.startswith(OWN_PREFIXES):
            raise ConfigError(f"tables: {self.name!r} is a dualwrite or SQLite table name; it cannot be captured")
        if self.priority < 0:
            raise ConfigError(f"tables: table {self.name!r} has priority {self.priority}; priorities start at 0")

    @property
    def name(self) -> str:
        return self.table.name

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


class Tables:
    """An ordered set of captured tables (see the module docstring)."""

    def __init__(self, specs: Iterable[TableSpec]) -> None:
        specs = list(specs)
        self._by_name: dict[str, TableSpec] = {}
        for spec in specs:
            if spec.name in self._by_name:
                raise ConfigError(f"tables: table {spec.name!r} is listed twice")
            self._by_name[spec.name] = spec
        self._ordered = _order(specs)
        self._referrers = cascade.build_referrers(s.table for s in self._ordered)  # refuses what cannot be captured

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def of(
        cls,
        source: Any,
        *,
        store: str = "app",
        priority: int = 0,
        only: Iterable[str] | None = None,
        tenant_column: str | None = "tenant_id",
    ) -> Tables:
        """The tables of a MetaData, a declarative base, a Table or a list of Tables, as one store.
        `only` keeps the named tables (each must exist)."""
        if isinstance(source, Tables):
            return source if only is None else source.select(names=list(only))
        tables = _tables_of(source)
        if only is not None:
            wanted = list(only)
            known = {t.name for t in tables}
            missing = [n for n in wanted if n not in known]
            if missing:
                raise UnknownTableError(f"table(s) {', '.join(missing)} not found (known: {', '.join(sorted(known))})")
            tables = [t for t in tables if t.name in wanted]
        return cls(TableSpec(t, store, priority, tenant_column) for t in tables if not t.name.startswith(OWN_PREFIXES))

    @classmethod
    def reflect(
        cls,
        engine: Engine,
        *,
        store: str = "app",
        only: Iterable[str] | None = None,
        rowid_key: str | None = None,
    ) -> Tables:
        """Every table of a SQLite database (dualwrite's bookkeeping and SQLite's own excluded), as one store.
        Each column's type reads the stored values the way `dualwrite migrate` casts them (dualwrite.casts:
        ISO or epoch timestamps as UTC, 0/1 and 'yes'/'no' booleans, JSON text, UUID text...) and is the
        cast's type on Postgres, so verify compares what migrate wrote with the value it came from.

        A table without a primary key is refused, unless `rowid_key` names the column that holds its rowid
        (migrate's `_dw_rowid` on Postgres): it is then added as the key, and the table is marked
        (`table.info["rowid_key"]`) for a reader that shows SQLite's rowid under that name (rowid_views)."""
        md = MetaData()
        names = [n for n in inspect(engine).get_table_names() if not n.startswith(OWN_PREFIXES)]
        with warnings.catch_warnings():  # "did not recognize type 'UUID'": the casts below decide the types
            warnings.simplefilter("ignore", SAWarning)
            md.reflect(engine, only=names)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                for table in md.tables.values():
                    _cast_columns(conn, table)
                conn.rollback()
        if rowid_key is not None:
            for table in md.tables.values():
                if not table.primary_key.columns and rowid_key not in table.c:
                    table.append_column(Column(rowid_key, BigInteger, primary_key=True, autoincrement=False))
                    table.info["rowid_key"] = rowid_key
        return cls.of(md, store=store, only=only)

    def rowid_views(self) -> list[str]:
        """SQLite statements that show each table reflected with a `rowid_key` under its own name, its rowid
        in that column (TEMP VIEWs, which SQLite resolves before the table: run them on each connection of
        a read engine)."""
        out = []
        for t in self.tables():
            key = t.info.get("rowid_key")
            if key:
                taken = {c.name.lower() for c in t.columns if c.name != key}
                alias = next(a for a in ("rowid", "_rowid_", "oid") if a not in taken)
                name = _sql_ident(t.name)
                out.append(
                    f"CREATE TEMP VIEW IF NOT EXISTS {name} AS SELECT {alias} AS {_sql_ident(key)}, * FROM main.{name}"
                )
        return out

    @classmethod
    def load(cls, spec: str) -> Tables:
        """`module:attr` naming a Tables, a MetaData, a declarative base, or a function returning one of them
        (attr defaults to `metadata`). One-line ConfigError when it cannot be loaded."""
        module, _, attr = spec.partition(":")
        if not module:
            raise ConfigError(f"--metadata {spec!r}: give module:attribute, e.g. myapp.models:Base")
        name = attr or "metadata"
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--metadata {spec!r}: cannot import {module!r} ({exc})") from None
        except Exception as exc:  # the module itself fails while importing: say so in one line
            raise ConfigError(f"--metadata {spec!r}: importing {module!r} failed: {_one_line(exc)}") from None
        if not hasattr(loaded, name):
            raise ConfigError(f"--metadata {spec!r}: module {module!r} has no attribute {name!r}")
        found = getattr(loaded, name)
        if callable(found) and not isinstance(found, type | Table | MetaData):
            try:
                found = found()
            except (ConfigError, UnknownTableError):
                raise
            except Exception as exc:
                raise ConfigError(f"--metadata {spec!r}: calling {name}() failed: {_one_line(exc)}") from None
        try:
            return cls.of(found)
        except TypeError as exc:
            raise ConfigError(f"--metadata {spec!r}: {exc}") from None

    def __add__(self, other: Tables) -> Tables:
        return Tables([*self._ordered, *other._ordered])

    def select(
        self,
        names: Iterable[str] | str | None = None,
        priorities: Iterable[int] | int | None = None,
        stores: Iterable[str] | str | None = None,
    ) -> Tables:
        """The subset in this order; filters combine (AND); an unknown name or store is refused."""
        nam, pri, sto = _as_set(names), _as_set(priorities), _as_set(stores)
        for name in nam or ():
            self.get(str(name))
        known = self.stores()
        for s in sto or ():
            if s not in known:
                raise UnknownTableError(f"store {s!r} is not among the tables (known: {', '.join(known)})")
        return Tables(
            s
            for s in self._ordered
            if (pri is None or s.priority in pri) and (sto is None or s.store in sto) and (nam is None or s.name in nam)
        )

    # -- lookups -----------------------------------------------------------------------------------
    def get(self, name: str) -> TableSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownTableError(f"table {name!r} is not among the captured tables") from None

    def table(self, name: str) -> Table:
        """The Table of `name` (a `TableLookup` for dualwrite.apply)."""
        return self.get(name).table

    def tables(self) -> list[Table]:
        return [s.table for s in self._ordered]

    def names(self) -> list[str]:
        return [s.name for s in self._ordered]

    def store(self, name: str) -> str:
        """The store of `name` (its metric label); 'app' for a table not in the set."""
        spec = self._by_name.get(name)
        return spec.store if spec else "app"

    def stores(self) -> list[str]:
        """Store names in priority order."""
        return list(dict.fromkeys(s.store for s in self._ordered))

    def priorities(self) -> list[int]:
        return sorted({s.priority for s in self._ordered})

    def referrers(self) -> dict[str, list[cascade.Referrer]]:
        """Parent table name -> foreign keys onto it with referential actions (see cascade.py)."""
        return self._referrers

    def __iter__(self) -> Iterator[TableSpec]:
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._ordered)

    def __bool__(self) -> bool:
        return bool(self._ordered)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"Tables({', '.join(self.names())})"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _cast_columns(conn: Connection, table: Table) -> None:
    """Give each reflected column the SQLiteCast of its declared type (as migrate's schema plan does)."""
    declared = {
        row[1]: row[2] or ""
        for row in conn.exec_driver_sql(f"SELECT * FROM pragma_table_xinfo({_sql_string(table.name)})")
    }
    for col in table.columns:
        col.type = casts.SQLiteCast(casts.cast_for(declared.get(col.name, "")))


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _tables_of(source: Any) -> list[Table]:
    if isinstance(source, MetaData):
        return list(source.sorted_tables)
    if isinstance(source, Table):
        return [source]
    md = getattr(source, "metadata", None)
    if isinstance(md, MetaData):  # a declarative base (or anything carrying its MetaData)
        return list(md.sorted_tables)
    if isinstance(source, Iterable) and not isinstance(source, str | bytes):
        items = list(source)
        if all(isinstance(t, Table) for t in items):
            return items
    raise TypeError(f"{type(source).__name__} is not a Tables, MetaData, declarative base or list of Tables")


def _as_set(value: Iterable[object] | object | None) -> set[object] | None:
    if value is None:
        return None
    if isinstance(value, str | int):
        return {value}
    return set(value)  # type: ignore[arg-type]


def _order(specs: list[TableSpec]) -> list[TableSpec]:
    """By priority; within one, a topological order of the foreign keys (ties keep the listing order). Tables
    whose foreign keys form a cycle keep their listing order: the apply does not depend on it (foreign keys
    are not enforced while applying), only the copy's order of tables does."""
    by_name = {s.name: s for s in specs}
    for spec in specs:
        for parent in spec.parents:
            if parent in by_name and by_name[parent].priority > spec.priority:
                raise ConfigError(
                    f"tables: {spec.name!r} (P{spec.priority}) references {parent!r} (P{by_name[parent].priority}),"
                    " which would move after it"
                )
    ordered: list[TableSpec] = []
    for priority in sorted({s.priority for s in specs}):
        pending = [s for s in specs if s.priority == priority]
        done = {s.name for s in ordered}
        while pending:
            ready = next((s for s in pending if all(p in done or p not in by_name for p in s.parents)), None)
            if ready is None:  # a cycle: take the first of it
                ready = pending[0]
            ordered.append(ready)
            done.add(ready.name)
            pending.remove(ready)
    return ordered

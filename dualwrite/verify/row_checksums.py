"""Key ranges, range checksums and row fetches that mean the same thing on SQLite and Postgres.

Both sides stream `(pk, row)` for a key range in primary-key order through the same SQLAlchemy Table
(so column types decode to the same Python values) and hash the normalized row on the client
(shadow.normalize.row_hash): no SQL aggregate whose result differs between engines (SQLite's integer
SUM overflows, its hash functions do not exist on Postgres). Text keys are compared and ordered with
COLLATE "C" on Postgres, which is SQLite's BINARY order (UTF-8 bytes = code points), so a range names
the same set of keys on both sides and Python's tuple order agrees with both.

A range is (lo, hi): lo inclusive, hi exclusive, None = unbounded; keys are tuples in pk column order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, String, Table, TypeDecorator, and_, or_, select, tuple_

from dualwrite.apply.rule import pk_columns
from dualwrite.normalize import DEFAULT, Normalizer, values_hash

Key = tuple[Any, ...]
MASK64 = (1 << 64) - 1
KEYS_PER_QUERY = 300


@dataclass
class Summary:
    count: int = 0
    hash: int = 0

    def add(self, h: int) -> None:
        self.count += 1
        self.hash = (self.hash + h) & MASK64


class Side:
    """One backend's view of a table: range scans, checksums and key fetches, counting its queries."""

    def __init__(self, name: str, engine: Engine, table: Table, normalizer: Normalizer = DEFAULT) -> None:
        self.name, self.engine, self.table, self.normalizer = name, engine, table, normalizer
        self.pk = pk_columns(table)
        self.cols = [c.name for c in table.columns]
        self.pk_idx = [self.cols.index(c) for c in self.pk]
        self.pg = engine.dialect.name == "postgresql"
        self.queries = 0

    def col(self, name: str) -> ColumnElement[Any]:
        c = self.table.c[name]
        t = c.type.impl_instance if isinstance(c.type, TypeDecorator) else c.type  # e.g. a reflected SQLiteCast
        if self.pg and isinstance(t, String):
            return c.collate("C")
        return c

    def key_expr(self) -> ColumnElement[Any]:
        cols = [self.col(c) for c in self.pk]
        return cols[0] if len(cols) == 1 else tuple_(*cols)

    def _bound(self, value: Key) -> Any:
        return value[0] if len(self.pk) == 1 else tuple_(*value)

    def where(self, lo: Key | None, hi: Key | None) -> list[ColumnElement[bool]]:
        expr, out = self.key_expr(), []
        if lo is not None:
            out.append(expr >= self._bound(lo))
        if hi is not None:
            out.append(expr < self._bound(hi))
        return out

    def order(self) -> list[ColumnElement[Any]]:
        return [self.col(c) for c in self.pk]

    def key_of(self, row: Any) -> Key:
        return tuple(row[c] for c in self.pk)

    def tuple_key(self, row: Sequence[Any]) -> Key:
        return tuple(row[i] for i in self.pk_idx)

    def scan(self, conn: Connection, lo: Key | None, hi: Key | None) -> Iterator[Sequence[Any]]:
        """Rows of the range in key order as tuples in the Table's column order (one query, streamed)."""
        self.queries += 1
        stmt = select(self.table).where(*self.where(lo, hi)).order_by(*self.order())
        yield from conn.execution_options(stream_results=True, yield_per=5000).execute(stmt)

    def summary(self, lo: Key | None, hi: Key | None) -> Summary:
        s = Summary()
        with self.engine.connect() as conn:
            for row in self.scan(conn, lo, hi):
                s.add(self.hash(row))
            conn.rollback()
        return s

    def hash(self, row: Sequence[Any]) -> int:
        return values_hash(row, self.normalizer)

    def rows(self, lo: Key | None, hi: Key | None) -> dict[Key, dict[str, Any]]:
        with self.engine.connect() as conn:
            out = {self.tuple_key(r): dict(zip(self.cols, r, strict=True)) for r in self.scan(conn, lo, hi)}
            conn.rollback()
        return out

    def key_at(self, lo: Key | None, hi: Key | None, offset: int) -> Key | None:
        """The key at `offset` within the range (an existing key: the bisection's split point)."""
        self.queries += 1
        stmt = select(*(self.table.c[c] for c in self.pk)).where(*self.where(lo, hi))
        stmt = stmt.order_by(*self.order()).limit(1).offset(offset)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
            conn.rollback()
        return None if row is None else tuple(row)

    def fetch(self, conn: Connection, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
        """Rows by key (several queries of at most KEYS_PER_QUERY keys)."""
        out: dict[Key, dict[str, Any]] = {}
        for i in range(0, len(keys), KEYS_PER_QUERY):
            part = keys[i : i + KEYS_PER_QUERY]
            if len(self.pk) == 1:
                cond = self.table.c[self.pk[0]].in_([k[0] for k in part])
            else:
                cond = or_(*(and_(*(self.table.c[c] == v for c, v in zip(self.pk, k, strict=True))) for k in part))
            self.queries += 1
            for row in conn.execute(select(self.table).where(cond)).mappings():
                out[self.key_of(row)] = dict(row)
        return out

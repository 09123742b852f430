"""Chunk checksums computed inside each database: verify's first pass without shipping rows to Python.

For every chunk (a key range) each side runs ONE query that returns the row count and, per column, the
column's values of the chunk in key order joined into one string and hashed (Postgres: sha256 of a
string_agg; SQLite: group_concat, hashed here with hashlib: SQLite has no hash function of its own;
sha256 because it is the fastest one both have, with SHA instructions).
The per-type renderings, and why they cannot hide a difference, are in verify.sql_render.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table

from dualwrite.apply.rule import pk_columns
from dualwrite.verify.sql_render import PG_SETTINGS, TEXT_KINDS, Col, postgres_render, quote_name, sqlite_render

Key = tuple[Any, ...]
UNKNOWN = -1  # the hash of a chunk whose SQLite string cannot be trusted: never equals a real hash


Span = tuple[Key | None, Key | None]  # a key range [lo, hi); None: open


@dataclass(frozen=True)
class KeySet:
    """Some keys, summed as one chunk (an incremental verify's touched keys)."""

    keys: tuple[Key, ...]


@dataclass
class ChunkSum:
    count: int
    nulls: tuple[int, ...]
    digests: tuple[str, ...]
    trusted: bool = True

    def key(self) -> int:
        """One integer for shadow.checksum.Summary.hash; UNKNOWN for an untrusted chunk."""
        if not self.trusted:
            return UNKNOWN
        text = f"{self.nulls}|{'|'.join(self.digests)}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class ChunkQuery:
    """The per-chunk checksum query of one side, as raw SQL over the DBAPI (no per-chunk compiling)."""

    def __init__(self, table: Table, cols: list[Col], dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self.cols = cols
        self.pk = pk_columns(table)
        pk_types = {c.name: c.kind for c in cols}
        keys = [
            quote_name(k) + (' COLLATE "C"' if self.pg and pk_types.get(k) in TEXT_KINDS else "") for k in self.pk
        ]
        self.key = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
        # equality needs no collation, and a COLLATE "C" unlike the index's would keep Postgres off it
        plain = [quote_name(k) for k in self.pk]
        self.plain_key = plain[0] if len(plain) == 1 else f"({', '.join(plain)})"
        self.order = ", ".join(keys)
        self.mark = "%s" if self.pg else "?"
        self.nullable = [i for i, c in enumerate(cols) if c.nullable]
        self.name = name = quote_name(table.name)
        if self.pg:
            inner = ", ".join(f"{postgres_render(c)} AS c{i}" for i, c in enumerate(cols))
            aggs = [f"count(c{i})" for i in self.nullable]
            aggs += [
                f"sha256(convert_to(string_agg(coalesce(c{i}, E'\\x03'), E'\\x01'), 'UTF8'))" for i in range(len(cols))
            ]
            rows = f"SELECT {inner} FROM {name} {{where}} ORDER BY {self.order}"
            self.sql = f"SELECT count(*), {', '.join(aggs)} FROM ({rows}) s"
        else:
            renders = [sqlite_render(c) for c in cols]
            guard = " OR ".join(f"({g})" for _, g in renders)
            aggs = [f"max({guard})"] + [f"count({quote_name(cols[i].name)})" for i in self.nullable]
            aggs += [f"CAST(group_concat(ifnull({r}, char(3)), char(1)) AS BLOB)" for r, _ in renders]
            rows = f"SELECT * FROM {name} {{where}} ORDER BY {self.order}"
            self.ordered_sql = f"SELECT count(*), {', '.join(aggs)} FROM ({rows})"
            # a range scan of one key (rowid or its index) is in key order already: no sort
            one = f"SELECT count(*), {', '.join(aggs)} FROM {name} {{where}}"
            self.sql = one if len(self.pk) == 1 else self.ordered_sql
        if self.pg:
            self.ordered_sql = self.sql

    def statement(self, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]]:
        where, params = self.where(lo, hi)
        return self.sql.format(where=where), params

    def select(self, part: Span | KeySet) -> tuple[str, list[Any]]:
        """The checksum query of a key range or of a set of keys (ordered by key: an IN list is not)."""
        if not isinstance(part, KeySet):
            return self.statement(*part)
        keys = part.keys
        if len(self.pk) == 1:
            where = f"WHERE {self.plain_key} IN ({', '.join(self.mark for _ in keys)})"
        else:
            row = f"({', '.join(self.mark for _ in self.pk)})"
            rows = ", ".join(row for _ in keys)
            where = f"WHERE {self.plain_key} IN ({rows if self.pg else f'VALUES {rows}'})"
        return self.ordered_sql.format(where=where), [v for k in keys for v in k]

    def split_statement(self, lo: Key | None, hi: Key | None, step: int) -> tuple[str, list[Any]]:
        """Every step-th existing key of the range (after its first): split points for a bisection."""
        where, params = self.where(lo, hi)
        keys = ", ".join(quote_name(k) for k in self.pk)
        inner = f"SELECT {keys}, row_number() OVER (ORDER BY {self.order}) AS rn FROM {self.name} {where}"
        mod = "%%" if self.pg else "%"  # psycopg2 reads a lone % as a placeholder
        return f"SELECT {keys} FROM ({inner}) s WHERE rn {mod} {int(step)} = 1 AND rn > 1 ORDER BY {self.order}", params

    def where(self, lo: Key | None, hi: Key | None) -> tuple[str, list[Any]]:
        conds, params = [], []
        for op, bound in ((">=", lo), ("<", hi)):
            if bound is None:
                continue
            marks = ", ".join(self.mark for _ in bound)
            conds.append(f"{self.key} {op} {marks if len(bound) == 1 else f'({marks})'}")
            params.extend(bound)
        return (f"WHERE {' AND '.join(conds)}" if conds else ""), params

    def parse(self, row: Sequence[Any]) -> ChunkSum:
        n = int(row[0])
        if self.pg:
            nn = len(self.nullable)
            nonnull = dict(zip(self.nullable, row[1 : 1 + nn], strict=True))
            nulls = tuple(n - int(nonnull[i]) for i in self.nullable)
            return ChunkSum(n, nulls, tuple(bytes(d).hex() if d is not None else "" for d in row[1 + nn :]))
        guard, nn = row[1], len(self.nullable)
        nonnull = dict(zip(self.nullable, row[2 : 2 + nn], strict=True))
        blobs = row[2 + nn :]
        trusted = not guard
        nulls, digests = [], []
        for i, blob in enumerate(blobs):
            data = bytes(blob) if blob is not None else b""
            want_nulls = n - int(nonnull.get(i, n))
            # Separators and NULL marks only where this side put them: the string parses one way.
            if n and (data.count(b"\x01") != n - 1 or data.count(b"\x03") != want_nulls):
                trusted = False
            if i in nonnull:
                nulls.append(want_nulls)
            digests.append(hashlib.sha256(data).hexdigest() if n else "")
        return ChunkSum(n, tuple(nulls), tuple(digests), trusted)


def split_keys(engine: Engine, query: ChunkQuery, lo: Key | None, hi: Key | None, step: int) -> list[Key]:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(*query.split_statement(lo, hi, step))
        keys = [tuple(r) for r in cur.fetchall()]
        raw.rollback()
        return keys
    finally:
        raw.close()


def chunk_sums(
    engine: Engine,
    query: ChunkQuery,
    ranges: Sequence[Span | KeySet],
    on_range: Callable[[], None] | None = None,
    pg_settings: Sequence[str] = (),
) -> list[ChunkSum]:
    """Every range's (or key set's) ChunkSum in one read transaction (one snapshot, as a single scan would
    see); `on_range()` after each query (verify's progress); `pg_settings`: more SET LOCALs on Postgres."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if query.pg:
            for stmt in (*PG_SETTINGS, *pg_settings):
                cur.execute(stmt)
        else:
            cur.execute("BEGIN")
        if query.pg:
            out = []
            for part in ranges:
                cur.execute(*query.select(part))
                out.append(query.parse(cur.fetchone()))
                if on_range is not None:
                    on_range()
        else:  # hash chunk i here (hashlib drops the GIL) while SQLite aggregates chunk i+1
            with ThreadPoolExecutor(1, thread_name_prefix="verify-hash") as pool:
                pending = []
                for part in ranges:
                    cur.execute(*query.select(part))
                    pending.append(pool.submit(query.parse, cur.fetchone()))
                    if on_range is not None:
                        on_range()
                out = [f.result() for f in pending]
        cur.close()
        raw.rollback()
        return out
    finally:
        raw.close()


def ranges(
    sqlite: Engine, table: Table, cols: list[Col], segment_rows: int
) -> list[tuple[Key | None, Key | None]]:
    """Key ranges of about `segment_rows` SQLite rows; the first and last are open (Postgres rows beyond
    SQLite's keys fall into them). Dense integer keys are cut by value (min, max, count: index look-ups);
    other keys at every segment_rows-th key (one window query over SQLite's key index)."""
    pk = pk_columns(table)
    name = quote_name(table.name)
    raw = sqlite.raw_connection()
    try:
        cur = raw.cursor()
        bounds: list[Key] | None = None
        if int_key(table, cols):
            k = quote_name(pk[0])
            cur.execute(f"SELECT min({k}), max({k}), count(*) FROM {name}")
            lo, hi, n = cur.fetchone()
            if not n:
                return [(None, None)]
            span = hi - lo + 1
            if span <= 2 * n:  # sparse keys would make ranges of very different sizes
                width = max(1, -(-segment_rows * span // n))
                bounds = [(b,) for b in range(lo + width, hi + 1, width)]
        if bounds is None:
            keys = ", ".join(quote_name(k) for k in pk)
            cur.execute(
                f"SELECT {keys} FROM (SELECT {keys}, row_number() OVER (ORDER BY {keys}) AS rn FROM {name}) "
                f"WHERE rn % ? = 1 AND rn > 1 ORDER BY {keys}",
                (max(1, segment_rows),),
            )
            bounds = [tuple(r) for r in cur.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    edges: list[Key | None] = [None, *bounds, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def int_key(table: Table, cols: list[Col]) -> bool:
    pk = pk_columns(table)
    return len(pk) == 1 and next(c.kind for c in cols if c.name == pk[0]) == "int"


def supported_keys(table: Table, cols: list[Col]) -> bool:
    """Integer and text keys only: their raw values bind the same on both DBAPIs (no type processing)."""
    kinds = {c.name: c.kind for c in cols}
    return all(kinds[k] == "int" or kinds[k] in TEXT_KINDS for k in pk_columns(table))

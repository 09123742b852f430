"""Synthetic rows for any table (demo seed, benchmarks): deterministic, FK- and unique-consistent.

Row i of a table gets values derived from i, so values in unique constraints never collide; a foreign
key copies every referenced column from a parent row already generated (tenant-scoped composite keys
stay consistent); two foreign keys to the same table pick different parents (no self-links).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    insert,
)

BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
TENANTS = 5
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def _kind(column: Column[Any]) -> type:
    t = column.type
    if isinstance(t, TypeDecorator):
        t = t.impl if not isinstance(t.impl, type) else t.impl()
        name = type(column.type).__name__.lower()
        if "datetime" in name or "time" in name:
            return DateTime
    for kind in (Boolean, Integer, Numeric, Float, DateTime, Date, JSON, LargeBinary, Text, String):
        if isinstance(t, kind):
            return Float if kind is Numeric and getattr(t, "asdecimal", True) is False else kind
    return String


def _check_choices(table: Table) -> dict[str, list[str]]:
    """`col IN ('a', 'b')` CHECK constraints: the values a generated row may take."""
    out: dict[str, list[str]] = {}
    for cons in table.constraints:
        if isinstance(cons, CheckConstraint):
            for col, items in re.findall(r"(\w+)\s+IN\s*\(([^)]*)\)", str(cons.sqltext), flags=re.I):
                out[col] = re.findall(r"'((?:[^']|'')*)'", items)
    return out


def _unique_columns(table: Table) -> set[str]:
    cols = {c.name for cons in table.constraints if isinstance(cons, UniqueConstraint) for c in cons.columns}
    return cols | {c.name for ix in table.indexes if ix.unique for c in ix.columns}


def _value(column: Column[Any], i: int, rng: random.Random, unique: bool = False) -> Any:
    name, kind = column.name, _kind(column)
    if name in ("tenant_id", "tenant"):
        return f"tenant-{i % TENANTS}"
    if kind is Integer and not column.primary_key and not unique:
        return 1 + i % 1000  # positive and small: fits quantity/order CHECKs and 32-bit columns
    if kind is Boolean:
        return i % 2 == 0
    if kind is Integer:
        return i
    if kind is Numeric:
        scale = getattr(column.type, "scale", None) or 2
        return (Decimal(rng.randint(100, 99_999)) / 100).quantize(Decimal(1).scaleb(-scale))
    if kind is Float:
        return round(rng.random(), 6)
    if kind is DateTime:
        return BASE_TIME + timedelta(seconds=(i * 7) % 400_000_000)  # stays within ~12 years
    if kind is Date:
        return (BASE_TIME + timedelta(days=i % 3_000_000)).date()  # unique per row up to year ~8200
    if kind is JSON:
        return {"n": i, "tags": rng.sample(WORDS, 2), "nested": {"ok": i % 3 == 0}}
    if kind is LargeBinary:
        return i.to_bytes(8, "big") + bytes(rng.getrandbits(8) for _ in range(8))
    length = getattr(column.type, "length", None)
    if kind is Text or length is None or length >= 120:
        text = f"{name} {i} " + " ".join(rng.choices(WORDS, k=30))
        return text[: length or len(text)]
    return f"{name[:8]}-{i}"[:length]


def generate(
    table: Table, count: int, *, start: int = 1, parents: dict[str, list[dict[str, Any]]] | None = None, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """Yield `count` rows for `table`, numbered from `start`; integer primary keys equal the row number."""
    rng = random.Random(seed + start)
    parents = parents or {}
    fks = [fk for fk in table.foreign_key_constraints if fk.referred_table.name in parents]
    choices = _check_choices(table)
    unique = _unique_columns(table)
    for i in range(start, start + count):
        row = {c.name: _value(c, i, rng, c.name in unique) for c in table.columns}
        for col, options in choices.items():
            if col in row and options:
                row[col] = options[i % len(options)]
        # Several tries with other first choices: a composite key (agent of the same debate) may find
        # no fitting parent in a sampled pool; a row whose foreign keys cannot all be met is skipped.
        for attempt in range(20):
            if _assign_parents(row, fks, parents, i + attempt * 31337):
                break
        else:
            continue
        yield row


def _assign_parents(row: dict[str, Any], fks: list[Any], parents: dict[str, list[dict[str, Any]]], salt: int) -> bool:
    used: dict[str, set[int]] = {}
    assigned: set[str] = set()
    for fk in fks:
        pool = parents[fk.referred_table.name]
        if not pool:
            continue
        taken = used.setdefault(fk.referred_table.name, set())
        pairs = list(zip(fk.column_keys, [e.column.name for e in fk.elements], strict=True))
        # Columns an earlier foreign key already set (the tenant of a tenant-scoped key) must match.
        fixed = [(local, remote) for local, remote in pairs if local in assigned]
        idx = (salt * 7919 + len(taken) * 104729) % len(pool)
        for _ in range(len(pool)):
            if idx not in taken and all(pool[idx][r] == row[loc] for loc, r in fixed):
                break
            idx = (idx + 1) % len(pool)
        else:
            return False
        taken.add(idx)
        for local, remote in pairs:
            row[local] = pool[idx][remote]
            assigned.add(local)
    return True


def seed(
    engine: Engine, tables: Sequence[Table], counts: dict[str, int], *, batch: int = 5000, progress: Any = None
) -> dict[str, int]:
    """Insert generated rows straight into the database (pre-existing history: no events captured).
    Tables must come parents first. Returns rows written per table."""
    keys: dict[str, list[dict[str, Any]]] = {}
    written: dict[str, int] = {}
    for table in tables:
        n = counts.get(table.name, 0)
        referenced = {
            e.column.name
            for t in tables
            for fk in t.foreign_key_constraints
            if fk.referred_table is table
            for e in fk.elements
        }
        keep = [c for c in table.columns if c.name in referenced or c.primary_key or c.name == "tenant_id"]
        pool: list[dict[str, Any]] = []
        rows = generate(table, n, parents=keys)
        done = 0
        while done < n:
            part = list(islice(rows, min(batch, n - done)))
            if not part:
                break
            with engine.begin() as conn:
                conn.execute(insert(table), part)
            pool.extend({c.name: r[c.name] for c in keep} for r in part)
            done += len(part)
            if progress:
                progress(table.name, len(part))
        keys[table.name] = pool
        written[table.name] = done
    return written


def split_counts(tables: Sequence[Table], total: int) -> dict[str, int]:
    """Spread `total` rows over the tables, parents getting fewer rows than their children."""
    weights = {
        t.name: (1 if any(fk.referred_table is t for o in tables for fk in o.foreign_key_constraints) else 3)
        for t in tables
    }
    scale = total / sum(weights.values())
    return {name: max(1, int(w * scale)) for name, w in weights.items()}

"""Verification after a migration: per table, counts and an order-independent hash of every row on both
sides, computed on the client in bounded memory (both sides streamed in primary-key order).

Source rows go through the same casts as the load (dualwrite.casts), rows rejected (by a cast, or by Postgres
and listed in the reject file) are left out, and every value is put in one normal form (types.normal)
before hashing, so the engines' own sums/hashes never have to agree. The row hashes are summed mod 2**64
(as data-diff does), so the result does not depend on the engines' collations.

The two sides are independent sums, so `verify_tables` computes them at the same time: every table's
SQLite side in one spawned process (it re-plans the file itself: a plan holds closures, which do not
pickle) while this process reads the Postgres sides; each side is Python-bound, so on two cores this
roughly halves verification's wall time. Small files stay in this process (a spawn costs ~1 s).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from dualwrite.convert import Dirty
from dualwrite.events import key_text
from dualwrite.migrate.schema import TablePlan, reflect, source_engine, sq

MASK = 2**64 - 1
BATCH = 5000
PARALLEL_ROWS = 50_000  # SQLite rows from which the source sides are worth a process of their own


@dataclass
class TableCheck:
    table: str
    read: int = 0  # rows in SQLite
    written: int = 0  # rows in Postgres
    rejected: int = 0  # distinct rejected keys
    source_hash: int = 0
    target_hash: int = 0
    matching_rows: int = 0  # source rows expected on Postgres

    @property
    def verified(self) -> bool:
        return (
            self.read == self.written + self.rejected
            and self.matching_rows == self.written
            and self.source_hash == self.target_hash
        )

    def reason(self) -> str | None:
        if self.verified:
            return None
        if self.read != self.written + self.rejected:
            return f"read {self.read} != written {self.written} + rejected {self.rejected}"
        if self.matching_rows != self.written:
            return f"{self.matching_rows} good source rows but {self.written} on Postgres"
        return "row hashes differ"


def row_hash(norms: list[Any], values: Any) -> int:
    """64-bit hash of one row's normal form (repr of str/int/bool/None/float is deterministic)."""
    data = repr(tuple(None if v is None else f(v) for f, v in zip(norms, values, strict=True)))
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "backslashreplace"), digest_size=8).digest(), "big")


def safe_key(values: list[Any]) -> str:
    """The apply rule's key text, or an ASCII-escaped form when a value is not valid UTF-8."""
    text = key_text(values)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps([repr(v) for v in values], ensure_ascii=True)


def verify_table(source: Engine, target: Engine, plan: TablePlan, rejected_keys: set[str]) -> TableCheck:
    res = TableCheck(plan.name, rejected=len(rejected_keys))
    res.read, res.matching_rows, res.source_hash = source_side(source, plan, rejected_keys)
    res.written, res.target_hash = target_side(target, plan)
    return res


def verify_tables(
    source: Engine,
    target: Engine,
    plans: list[TablePlan],
    rejected: dict[str, set[str]],
    replan: dict[str, Any],
) -> list[TableCheck]:
    """verify_table for every plan, the SQLite sides in a child process while this one reads Postgres.

    replan: reflect()'s arguments (path, tables, casts, renames), with which the child plans the same tables."""
    if _source_rows(source, plans) < PARALLEL_ROWS:
        return [verify_table(source, target, p, rejected.get(p.name, set())) for p in plans]
    ctx = multiprocessing.get_context("spawn")  # not fork: this process holds Postgres connections
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        names = [p.name for p in plans]
        pending = pool.submit(_source_sides, replan, names, {n: rejected.get(n, set()) for n in names})
        out = []
        for p in plans:
            res = TableCheck(p.name, rejected=len(rejected.get(p.name, set())))
            res.written, res.target_hash = target_side(target, p)
            out.append(res)
        for res, (read, matching, digest) in zip(out, pending.result(), strict=True):
            res.read, res.matching_rows, res.source_hash = read, matching, digest
    return out


def _source_rows(source: Engine, plans: list[TablePlan]) -> int:
    with source.connect() as conn:
        raw = conn.connection.driver_connection
        return sum(raw.execute(f"SELECT count(*) FROM {sq(p.name)}").fetchone()[0] for p in plans)


def _source_sides(replan: dict[str, Any], names: list[str], rejected: dict[str, set[str]]) -> list[tuple]:
    """The child's work: plan the file as the parent did and hash each table's SQLite side."""
    path = replan["path"]
    plan = reflect(path, tables=replan.get("tables"), casts=replan.get("casts"), renames=replan.get("renames"))
    by_name = {p.name: p for p in plan.tables}
    engine = source_engine(path, plan.tables)
    try:
        return [source_side(engine, by_name[n], rejected[n]) for n in names]
    finally:
        engine.dispose()


def source_side(source: Engine, plan: TablePlan, rejected_keys: set[str]) -> tuple[int, int, int]:
    """(rows read, rows expected on Postgres, their hash sum) of one table's SQLite side."""
    read = matching = digest = 0
    norms = [normalizer(c.cast.kind) for c in plan.columns]
    casts = [c.cast.convert for c in plan.columns]
    names = [c.name for c in plan.columns]
    pk_idx = [names.index(c) for c in plan.pk]
    order = ", ".join(sq(c) for c in plan.pk)
    with source.connect() as sconn:
        raw = sconn.connection.driver_connection
        cur = raw.execute(f"SELECT {', '.join(sq(n) for n in names)} FROM {sq(plan.name)} ORDER BY {order}")
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                read += 1
                try:
                    values = [None if v is None else f(v) for f, v in zip(casts, row, strict=True)]
                except Dirty:
                    continue
                if rejected_keys and safe_key([values[i] for i in pk_idx]) in rejected_keys:
                    continue
                matching += 1
                digest = (digest + row_hash(norms, values)) & MASK
        cur.close()
    return read, matching, digest


def target_side(target: Engine, plan: TablePlan) -> tuple[int, int]:
    """(rows on Postgres, their hash sum), read through a server-side cursor of the raw driver (no Row
    objects; psycopg2 decodes jsonb itself, so a JSON string arrives as a Python str)."""
    written = digest = 0
    target_norms = [normalizer(c.cast.kind, decoded=True) for c in plan.columns]
    names = [c.name for c in plan.columns]
    prep = target.dialect.identifier_preparer
    sql = (
        f"SELECT {', '.join(prep.quote(n) for n in names)} FROM {prep.quote(plan.name)} "
        f"ORDER BY {', '.join(prep.quote(c) for c in plan.pk)}"
    )
    raw = target.raw_connection()
    try:
        cur = raw.cursor(name="dw_migrate_verify")
        cur.itersize = BATCH
        cur.execute(sql)
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                written += 1
                digest = (digest + row_hash(target_norms, row)) & MASK
        cur.close()
        raw.rollback()
    finally:
        raw.close()
    return written, digest


# -- the normal form both sides must agree on ---------------------------------------------------
def _same(value: Any) -> Any:
    return value


def _ts(v: Any) -> str:
    return v.astimezone(UTC).isoformat()


def _iso(v: Any) -> str:
    return v.isoformat()


def _float(v: Any) -> str:
    return repr(float(v))


def _hex(v: Any) -> str:
    return bytes(v).hex()


# normal() of the kinds whose normal form needs no branch, as direct calls (the hot loops call one per value)
_DIRECT: dict[str, Callable[[Any], Any]] = {
    "int": _same,
    "text": _same,
    "ts": _ts,
    "date": _iso,
    "time": _iso,
    "float": _float,
    "bytes": _hex,
    "uuid": str,
    "bool": bool,
}


def normalizer(kind: str, decoded: bool = False) -> Callable[[Any], Any]:
    """normal() for one kind, without the dispatch (None must be handled by the caller)."""
    if kind in _DIRECT:
        return _DIRECT[kind]
    return lambda v: normal(kind, v, decoded)


def normal(kind: str, value: Any, decoded: bool = False) -> Any:
    """A value as both sides must agree on it (the converted source value, or the one Postgres returns).

    decoded: a json value is already the parsed document (as Postgres' driver returns jsonb), not its text."""
    if value is None:
        return None
    if kind == "ts":
        return value.astimezone(UTC).isoformat()
    if kind in ("date", "time"):
        return value.isoformat()
    if kind == "dec":
        d = Decimal(value)
        return "0" if not d else str(d.normalize())
    if kind == "float":
        return repr(float(value))
    if kind == "bytes":
        return bytes(value).hex()
    if kind == "json":
        if not decoded and isinstance(value, str | bytes):
            value = json.loads(value)
        if value is None:  # the text 'null' (SQLAlchemy's JSON None) is jsonb null, which the driver reads as None
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if kind == "uuid":
        return str(value)
    if kind == "bool":
        return bool(value)
    return value

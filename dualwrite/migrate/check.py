"""Verification after a migration: per table, counts and an order-independent hash of every row on both
sides, computed on the client in bounded memory (both sides streamed in primary-key order).

Source rows go through the same casts as the load (dualwrite.casts), rows rejected (by a cast, or by Postgres
and listed in the reject file) are left out, and every value is put in one normal form (types.normal)
before hashing, so the engines' own sums/hashes never have to agree. The row hashes are summed mod 2**64
(as data-diff does), so the result does not depend on the engines' collations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from dualwrite.convert import Dirty
from dualwrite.events import key_text
from dualwrite.migrate.schema import TablePlan, sq

MASK = 2**64 - 1
BATCH = 5000


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
    norms = [normalizer(c.cast.kind) for c in plan.columns]
    # Postgres' driver hands jsonb back decoded (a JSON string is a Python str): not parsed a second time.
    target_norms = [normalizer(c.cast.kind, decoded=True) for c in plan.columns]
    casts = [c.cast.convert for c in plan.columns]
    names = [c.name for c in plan.columns]
    pk_idx = [names.index(c) for c in plan.pk]
    order = ", ".join(sq(c) for c in plan.pk)
    with source.connect() as sconn:
        raw = sconn.connection.driver_connection
        cur = raw.execute(f"SELECT {', '.join(sq(n) for n in names)} FROM {sq(plan.name)} ORDER BY {order}")
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                res.read += 1
                try:
                    values = [None if v is None else f(v) for f, v in zip(casts, row, strict=True)]
                except Dirty:
                    continue
                if rejected_keys and safe_key([values[i] for i in pk_idx]) in rejected_keys:
                    continue
                res.matching_rows += 1
                res.source_hash = (res.source_hash + row_hash(norms, values)) & MASK
        cur.close()
    prep = target.dialect.identifier_preparer
    sql = (
        f"SELECT {', '.join(prep.quote(n) for n in names)} FROM {prep.quote(plan.name)} "
        f"ORDER BY {', '.join(prep.quote(c) for c in plan.pk)}"
    )
    with target.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH).exec_driver_sql(sql)
        for part in result.partitions(BATCH):
            for row in part:
                res.written += 1
                res.target_hash = (res.target_hash + row_hash(target_norms, row)) & MASK
        conn.rollback()
    return res


# -- the normal form both sides must agree on ---------------------------------------------------
def _same(value: Any) -> Any:
    return value


def normalizer(kind: str, decoded: bool = False) -> Callable[[Any], Any]:
    """normal() for one kind, without the dispatch (None must be handled by the caller)."""
    if kind in ("int", "text"):
        return _same
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

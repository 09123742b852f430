"""Verification after a migration: per table, counts and an order-independent hash of every row on both
sides. Tables whose key SQL can range are summed in the databases (sums.py: per key range, each side sums the
columns dualwrite.verify.sql_render renders identically); what SQL cannot render, and every range whose
sums differ, is hashed here on the client in bounded memory (both sides streamed in primary-key order).

Client side: source rows go through the same casts as the load (dualwrite.casts), rows rejected (by a cast,
or by Postgres and listed in the reject file) are left out, and every value is put in one normal form
(types.normal) before hashing, so the engines' own sums/hashes never have to agree. The row hashes are
summed mod 2**64 (as data-diff does), so the result does not depend on the engines' collations.

The two sides are independent sums, so they are computed at the same time: the SQLite sums in a thread
started before the load (sums.SourceSums), and the SQLite side of a table hashed wholly on the client in one
spawned process (it re-plans the file itself: a plan holds closures, which do not pickle) while this
process reads the Postgres sides. Small files stay in this process (a spawn costs ~1 s).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import Engine

from dualwrite.convert import Dirty
from dualwrite.events import key_text
from dualwrite.migrate import sums
from dualwrite.migrate.schema import TablePlan, reflect, source_engine, sq
from dualwrite.verify import sql_checksums as sqlsum

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
    source: Engine, target: Engine, plans: list[TablePlan], rejected: dict[str, set[str]], sides: SourceSides
) -> list[TableCheck]:
    """verify_table for every plan; the SQLite sides come from `sides` (started before the load) when it
    has a child, while this process reads the Postgres sides."""
    done: dict[str, TableCheck] = {}
    for p in (p for p in plans if sums.in_sql(p)):  # summed in the databases (sums.py)
        keys, spans = rejected.get(p.name, set()), sides.sums.spans(p.name)
        if spans is None:  # keys SQL cannot range: the client path
            done[p.name] = verify_table(source, target, p, keys)
        else:
            done[p.name] = verify_ranges(source, target, p, keys, spans, partial(sides.sums.get, p.name))
    rest = [p for p in plans if not sums.in_sql(p)]
    if sides.proc is None:
        done |= {p.name: verify_table(source, target, p, rejected.get(p.name, set())) for p in rest}
        return [done[p.name] for p in plans]
    out = []
    for p in rest:
        res = TableCheck(p.name, rejected=len(rejected.get(p.name, set())))
        res.written, res.target_hash = target_side(target, p)
        out.append(res)
    for p, res, (read, matching, digest, dirty) in zip(rest, out, sides.collect(), strict=True):
        keys = rejected.get(p.name, set())
        if keys - dirty:  # rows Postgres refused (not a cast): the child counted them, so hash again without
            read, matching, digest = source_side(source, p, keys)
        res.read, res.matching_rows, res.source_hash = read, matching, digest
        done[p.name] = res
    return [done[p.name] for p in plans]


def verify_ranges(
    source: Engine,
    target: Engine,
    plan: TablePlan,
    rejected_keys: set[str],
    spans: list[sqlsum.Span],
    mine: Callable[[], list[sqlsum.ChunkSum]],
) -> TableCheck:
    """TableCheck of one table summed in the databases (sums.py): Postgres' sums over `spans` (while
    SQLite's may still be computed), then SQLite's (`mine()`), the client-side columns range by range, and
    every range whose sums differ hashed again on the client."""
    cols, rest = sums.split(plan)  # type: ignore[misc]
    res = TableCheck(plan.name, rejected=len(rejected_keys))
    pg_sums = sums.target_sums(target, plan, spans)
    sqlite_sums = mine()
    queries = (sqlsum.ChunkQuery(plan.ddl, cols, "sqlite"), sqlsum.ChunkQuery(plan.ddl, cols, "postgresql"))  # type: ignore[arg-type]
    names = [c.name for c in plan.columns]
    client = [names.index(c) for c in dict.fromkeys([*plan.pk, *rest])]
    for span, s, t in zip(spans, sqlite_sums, pg_sums, strict=True):
        where = [q.where(*span) for q in queries]
        if s.count == t.count and s.key() == t.key():
            res.read += s.count
            res.written += t.count
            res.matching_rows += s.count
            res.source_hash = (res.source_hash + s.key()) & MASK
            res.target_hash = (res.target_hash + t.key()) & MASK
            if rest:  # the columns SQL cannot render, with the key: client-side, this range only
                _, _, sh = source_side(source, plan, set(), where=where[0], only=client)
                _, th = target_side(target, plan, where=where[1], only=client)
                res.source_hash, res.target_hash = (res.source_hash + sh) & MASK, (res.target_hash + th) & MASK
            continue
        read, matching, sh = source_side(source, plan, rejected_keys, where=where[0])
        written, th = target_side(target, plan, where=where[1])
        res.read, res.matching_rows, res.written = res.read + read, res.matching_rows + matching, res.written + written
        res.source_hash, res.target_hash = (res.source_hash + sh) & MASK, (res.target_hash + th) & MASK
    return res


class SourceSides:
    """Every table's SQLite side hashed in a spawned process, started before the load so that it runs beside
    it (the file does not change during a migration). The child leaves out the rows a cast rejects and
    returns their keys; a rejected key outside those (Postgres refused the row) makes verify_tables hash
    that table here again, leaving the reject file's keys out. Small files get no child (a spawn costs ~1 s)."""

    def __init__(self, source: Engine, plans: list[TablePlan], replan: dict[str, Any]) -> None:
        self.proc: Any = None
        self.sums = sums.SourceSums(source, plans)
        plans = [p for p in plans if not sums.in_sql(p)]  # the others are summed in the databases
        if not plans or _source_rows(source, plans) < PARALLEL_ROWS:
            return
        ctx = multiprocessing.get_context("spawn")  # not fork: this process holds Postgres connections
        self.recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child, args=(send, replan, [p.name for p in plans]), daemon=True)
        self.proc.start()
        send.close()

    def collect(self) -> list[tuple[int, int, int, set[str]]]:
        try:
            kind, value = self.recv.recv()
        except EOFError:
            raise RuntimeError("migrate verification: the SQLite side's process died") from None
        self.proc.join()
        if kind != "ok":
            raise RuntimeError(f"migrate verification, SQLite side: {value}")
        return value

    def stop(self) -> None:
        """End the child if it still runs (a stopped or failed migration verifies nothing)."""
        self.sums.stop()
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def _source_rows(source: Engine, plans: list[TablePlan]) -> int:
    with source.connect() as conn:
        raw = conn.connection.driver_connection
        return sum(raw.execute(f"SELECT count(*) FROM {sq(p.name)}").fetchone()[0] for p in plans)


def _child(send: Any, replan: dict[str, Any], names: list[str]) -> None:
    """The child's work: plan the file as the parent did and hash each table's SQLite side."""
    try:
        path = replan["path"]
        plan = reflect(path, tables=replan.get("tables"), casts=replan.get("casts"), renames=replan.get("renames"))
        by_name = {p.name: p for p in plan.tables}
        engine = source_engine(path, plan.tables)
        try:
            out = []
            for n in names:
                dirty: set[str] = set()
                out.append((*source_side(engine, by_name[n], set(), dirty), dirty))
        finally:
            engine.dispose()
        send.send(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


Where = tuple[str, list[Any]]  # a WHERE clause (sql_checksums.ChunkQuery.where) and its parameters


def source_side(
    source: Engine,
    plan: TablePlan,
    rejected_keys: set[str],
    dirty: set[str] | None = None,
    where: Where = ("", []),
    only: list[int] | None = None,
) -> tuple[int, int, int]:
    """(rows read, rows expected on Postgres, their hash sum) of one table's SQLite side; `dirty` gets the
    keys (as the load writes them) of the rows a cast rejects. `where`: these rows only; `only`: these
    columns only (positions in plan.columns, the key first: sums.py hashes the rest in SQL)."""
    read = matching = digest = 0
    cols = plan.columns if only is None else [plan.columns[i] for i in only]
    norms = [normalizer(c.cast.kind) for c in cols]
    casts = [c.cast.convert for c in cols]
    names = [c.name for c in cols]
    pk_idx = [names.index(c) for c in plan.pk]
    order = ", ".join(sq(c) for c in plan.pk)
    with source.connect() as sconn:
        raw = sconn.connection.driver_connection
        sql = f"SELECT {', '.join(sq(n) for n in names)} FROM {sq(plan.name)} {where[0]} ORDER BY {order}"
        cur = raw.execute(sql, where[1])
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                read += 1
                try:
                    values = [None if v is None else f(v) for f, v in zip(casts, row, strict=True)]
                except Dirty:
                    if dirty is not None:
                        dirty.add(safe_key([row[i] for i in pk_idx]))
                    continue
                if rejected_keys and safe_key([values[i] for i in pk_idx]) in rejected_keys:
                    continue
                matching += 1
                digest = (digest + row_hash(norms, values)) & MASK
        cur.close()
    return read, matching, digest


def target_side(
    target: Engine, plan: TablePlan, where: Where = ("", []), only: list[int] | None = None
) -> tuple[int, int]:
    """(rows on Postgres, their hash sum), read through a server-side cursor of the raw driver (no Row
    objects; psycopg2 decodes jsonb itself, so a JSON string arrives as a Python str). `where`, `only`:
    as source_side's."""
    written = digest = 0
    cols = plan.columns if only is None else [plan.columns[i] for i in only]
    target_norms = [normalizer(c.cast.kind, decoded=True) for c in cols]
    names = [c.name for c in cols]
    prep = target.dialect.identifier_preparer
    sql = (
        f"SELECT {', '.join(prep.quote(n) for n in names)} FROM {prep.quote(plan.name)} {where[0]} "
        f"ORDER BY {', '.join(prep.quote(c) for c in plan.pk)}"
    )
    raw = target.raw_connection()
    try:
        cur = raw.cursor(name="dw_migrate_verify")
        cur.itersize = BATCH
        cur.execute(sql, where[1])
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

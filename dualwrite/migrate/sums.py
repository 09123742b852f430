"""Migrate's verification in the databases: per key range, SQLite and Postgres each sum the columns
dualwrite.verify.sql_render renders identically (both sides at once, one thread each: the databases do
the work), and only what they cannot render goes through check.py's client-side normal form.

A column is summed in SQL when its cast's kind has a rendering in which equal text means the cast SQLite value
equals the Postgres one (SQL_KINDS); the other columns (JSON, numeric, time) are hashed on the client with the
key, range by range. check.verify_ranges hashes a range whose sums differ (a changed value, a rejected row, a
value stored in a form the rendering does not expect) again on the client, all columns, the reject file's keys
left out: that decides, exactly as the whole-table path would. So per table: read == written + rejected and
equal hashes, where a range the databases agree on adds the same number to both hashes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import Engine

from dualwrite.migrate.schema import TablePlan
from dualwrite.verify import sql_checksums as sqlsum
from dualwrite.verify.sql_render import Col

# A table just loaded has no statistics: Postgres then guesses few rows per range and sorts them (on disk,
# past work_mem) after a bitmap scan, where the key index's scan is in order already (~20 % of its sums).
FRESH_TABLE = ("SET LOCAL enable_sort = off",)
SEGMENT_ROWS = 50_000  # rows per range: one aggregate query per side; a differing range is re-hashed
# cast kind -> sql_render kind: equal rendering means equal values (text of another form only differs)
SQL_KINDS = {
    "int": "int",
    "bool": "bool",
    "float": "float_exact",
    "text": "text_exact",
    "uuid": "text_exact",
    "ts": "datetime",  # as SQLAlchemy stores it; Postgres renders the UTC time (PG_SETTINGS) that way
    "date": "date",
    "bytes": "bytes",
}


def split(plan: TablePlan) -> tuple[list[Col], list[str]] | None:
    """(columns summed in SQL, columns hashed on the client), or None when the key cannot be ranged in SQL."""
    cols, rest = [], []
    for c in plan.columns:
        kind = SQL_KINDS.get(c.cast.kind)
        if kind is None:
            rest.append(c.name)
        else:
            cols.append(Col(c.name, kind, not c.notnull and c.name not in plan.pk))
    kinds = {c.name: c.kind for c in cols}
    if any(kinds.get(k) not in ("int", "text_exact") for k in plan.pk):
        return None
    return cols, rest


def in_sql(plan: TablePlan) -> bool:
    return plan.ddl is not None and split(plan) is not None


class Stopped(Exception):
    """The migration stopped or failed before verifying: the SQLite sums are not needed any more."""


class SourceSums:
    """Every SQL-summed table's key ranges (at once) and SQLite side, computed in a thread started before
    the load, so that it runs beside it (the file does not change during a migration; sqlite3 lets go of
    the GIL while it aggregates, hashlib while it hashes)."""

    def __init__(self, source: Engine, plans: list[TablePlan]) -> None:
        self.stopped = False
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="migrate-verify-sqlite")
        self.ranges: dict[str, list[sqlsum.Span]] = {}
        self.futures: dict[str, Future[list[sqlsum.ChunkSum]]] = {}
        for p in plans:
            if not in_sql(p):
                continue
            cols, _ = split(p)  # type: ignore[misc]
            spans = sqlsum.ranges(source, p.ddl, cols, SEGMENT_ROWS)  # type: ignore[arg-type]
            if _bindable(p, cols, spans):  # now: Postgres' side needs them before SQLite's is done
                self.ranges[p.name] = spans
                query = sqlsum.ChunkQuery(p.ddl, cols, "sqlite")  # type: ignore[arg-type]
                self.futures[p.name] = self.pool.submit(sqlsum.chunk_sums, source, query, spans, self._check)

    def _check(self) -> None:
        if self.stopped:
            raise Stopped

    def spans(self, name: str) -> list[sqlsum.Span] | None:
        """The table's key ranges, or None: its keys cannot bound ranges on Postgres (check.py hashes it)."""
        return self.ranges.get(name)

    def get(self, name: str) -> list[sqlsum.ChunkSum]:
        return self.futures[name].result()

    def stop(self) -> None:
        self.stopped = True
        self.pool.shutdown(wait=True, cancel_futures=True)


def _bindable(plan: TablePlan, cols: list[Col], spans: list[sqlsum.Span]) -> bool:
    """Whether every range bound binds as its key column's Postgres type: SQLite lets an untyped or INT key
    hold text (or a number in a column cast to text), which Postgres would refuse to compare."""
    kinds = {c.name: c.kind for c in cols}
    want = [int if kinds[k] == "int" else str for k in plan.pk]
    bounds = [b for span in spans for b in span if b is not None]
    return all(type(v) is t for b in bounds for v, t in zip(b, want, strict=True))


def target_sums(target: Engine, plan: TablePlan, spans: list[sqlsum.Span]) -> list[sqlsum.ChunkSum]:
    """The Postgres side over two connections at once (after the load both cores are free)."""
    cols, _ = split(plan)  # type: ignore[misc]
    query = sqlsum.ChunkQuery(plan.ddl, cols, "postgresql")  # type: ignore[arg-type]
    halves = [spans[0::2], spans[1::2]]
    with ThreadPoolExecutor(2, thread_name_prefix="migrate-verify-pg") as pool:
        even, odd = pool.map(
            lambda part: sqlsum.chunk_sums(target, query, part, pg_settings=FRESH_TABLE) if part else [], halves
        )
    out = [None] * len(spans)
    out[0::2], out[1::2] = even, odd
    return out  # type: ignore[return-value]

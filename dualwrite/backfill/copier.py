"""Chunked copy of tables from SQLite to Postgres through the apply rule, with checkpoints and rejects.

Each chunk (read with version S, see cursor.py) is applied in one Postgres transaction that also writes
the table's checkpoint. Fast path (fastpath.py): keys Postgres has no version row for are COPYed straight
into `_dw_versions` (with S) and the table; keys a live write reached first go through the merge
(merge.py: COPY into a TEMP staging table, claim versions and upsert the winners in one statement).
`fast=False` uses `apply.apply_snapshot_rows` instead (same rule).

A chunk Postgres refuses is bisected inside savepoints: each single bad row goes to the reject file, the
rest loads. Deadlocks / serialization failures (a live event on the same keys) retry the whole chunk.
Memory: one chunk (its rows as tuples) at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg2
from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import DBAPIError

from dualwrite import metrics
from dualwrite.apply.ranges import ranged_key
from dualwrite.apply.rule import ApplyResult, apply_snapshot_rows
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill import lanes
from dualwrite.backfill.copy_format import copy_text
from dualwrite.backfill.cursor import Chunk, count_rows, decode_key, read_chunk
from dualwrite.backfill.leases import LeaseBook
from dualwrite.backfill.load import STAGING, copy_apply, key_positions, load_chunk
from dualwrite.backfill.rejects import RefusedValue, RejectWriter
from dualwrite.backfill.spans import Span, load_span
from dualwrite.backfill.steps import ChunkSteps, TableReport
from dualwrite.backfill.throttle import TokenBucket
from dualwrite.bookkeeping import move_sequences_past_keys
from dualwrite.errors import first_line, sqlstate
from dualwrite.events import key_text
from dualwrite.retry import is_transient, transient_db
from dualwrite.stream.gc_batches import batch_gc

__all__ = ["STAGING", "Copier", "TableReport", "copy_apply", "copy_text", "sync_sequence"]

if TYPE_CHECKING:
    from dualwrite.engines import Backends

log = logging.getLogger("dualwrite.backfill.copier")
Bad = tuple[int, BaseException]  # (position in the chunk, why Postgres refused that row)
# ValueError/TypeError: a driver refusing a value client-side (psycopg2: NUL in a string literal).
DB_ERRORS = (DBAPIError, psycopg.Error, psycopg2.Error, ValueError, TypeError)


def is_fatal(exc: BaseException) -> bool:
    """Errors no row can cause (a missing table or column, a syntax error, no privilege): stop the copy
    rather than reject every row of the table one by one."""
    state = sqlstate(exc) or ""
    return state[:2] in ("42", "0A", "3D", "3F", "28")


@dataclass
class Copier:
    """Copies tables chunk by chunk. Subclasses may override the public hooks: `read_chunk` (how a chunk is
    read from SQLite), `prepare_chunk` (transform or set aside rows before loading; migrate casts values
    there) and `load_rows` (how rows reach Postgres inside the chunk's transaction)."""

    sqlite_read: Engine
    postgres: Engine  # an apply engine (session_replication_role=replica: FK triggers off)
    chunk_size: int = 5000
    fast: bool = True
    rejects: RejectWriter = field(default_factory=lambda: RejectWriter(None))
    throttle: TokenBucket = field(default_factory=lambda: TokenBucket(None))
    should_stop: Callable[[], bool] = lambda: False
    max_retries: int = 5
    fallbacks: int = 0  # chunks whose fast COPY met a live write and were merged instead
    leases: LeaseBook | None = None  # several workers share each table's chunks (leases.py)
    lanes: int = 2  # chunk transactions in flight at once, committed in order (lanes.py)
    ranges: bool = True  # range versions for tables with one integer key (spans.py); they take one lane
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        ckpt.ensure(self.postgres)

    @classmethod
    def for_backends(cls, backends: Backends, **kw: Any) -> Copier:
        """A Copier reading SQLite through `backends` and writing with its Postgres apply engine."""
        return cls(backends.sqlite_read, backends.postgres_apply, **kw)

    # -- public hooks ----------------------------------------------------------------------------
    def prepare_chunk(self, table: Table, chunk: Chunk) -> tuple[Chunk, int]:
        """Rows to load and how many were set aside (already recorded as rejects by the hook): here, the
        rows with a stored value their column's type could not read (cursor.fetch). An override calls it."""
        if not chunk.undecodable:
            return chunk, 0
        pos = key_positions(table, chunk.columns)
        names = [table.c[c].name for c in chunk.columns]
        for i, (column, value, reason) in chunk.undecodable.items():
            row = chunk.values[i]
            refused = RefusedValue(table.c[column].name, value, reason)
            self.rejects.reject(
                table.name, key_text([row[p] for p in pos]), dict(zip(names, row, strict=True)), refused
            )
        good = [v for i, v in enumerate(chunk.values) if i not in chunk.undecodable]
        return Chunk(chunk.columns, good, chunk.version, chunk.last_key, chunk.span), len(chunk.undecodable)

    def load_rows(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        values: Sequence[Sequence[Any]],
        version: int,
        span: Span | None = None,
    ) -> ApplyResult:
        """Apply rows (tuples in `columns` order) with `version` inside the chunk's transaction. `span`:
        the key range the rows are all of at `version` (a ranged table then records one range version
        for it, spans.py, instead of a version row per key)."""
        if span is not None and self._ranged(table):
            ranged = load_span(conn, table, columns, values, version, span)
            if ranged is not None:
                return ranged
        if not self.fast:
            names = [table.c[c].name for c in columns]
            return apply_snapshot_rows(conn, table, [dict(zip(names, v, strict=True)) for v in values], version)
        result, fell_back = load_chunk(conn, table, columns, values, version)
        if fell_back:
            with self._lock:  # lanes run this concurrently
                self.fallbacks += 1
        return result

    def _ranged(self, table: Table) -> bool:
        return self.fast and self.ranges and ranged_key(table) is not None

    # -- tables ----------------------------------------------------------------------------------
    def copy_tables(self, tables: Sequence[Table], *, max_chunks: int | None = None) -> list[TableReport]:
        """Copy tables in the given order (parents first). Stops early if should_stop() or max_chunks."""
        reports = []
        budget = max_chunks
        for table in tables:
            if self.should_stop() or (budget is not None and budget <= 0):
                break
            rep = self.copy_table(table, max_chunks=budget)
            reports.append(rep)
            if budget is not None:
                budget -= rep.chunks
        return reports

    def steps(self) -> ChunkSteps:
        """This copier's steps, for the copy loops (lanes.py, leases.py)."""
        return ChunkSteps(
            source=self.sqlite_read,
            target=self.postgres,
            chunk_size=lambda: self.chunk_size,
            should_stop=lambda: self.should_stop(),
            prepare=self.prepare_chunk,
            apply=self.apply_chunk,
            pace=lambda rows: self.throttle.take(rows, self.should_stop),
        )

    def copy_table(self, table: Table, *, max_chunks: int | None = None) -> TableReport:
        # a chunk is many acyclic tuples freed by reference counting: at the default first threshold the
        # collector ran ~2700 times per 1M rows over the live chunks (0.3-0.7 s, a tenth of the process' CPU);
        # above two chunks' worth (stream/gc_batches.py) it runs as garbage grows
        with batch_gc(self.chunk_size):
            if self.leases is not None:  # shared with other workers: ranges come from leases.py
                return self.leases.copy_table(self.steps(), table, max_chunks=max_chunks)
            return self._copy_own(table, max_chunks)

    def _copy_own(self, table: Table, max_chunks: int | None) -> TableReport:
        """copy_table without leases: this process reads every chunk of the table after its checkpoint."""
        rep = TableReport(table.name)
        with self.postgres.connect() as conn:
            cp = ckpt.load(conn, table.name)
            conn.rollback()
        rep.rows_copied, rep.rows_rejected, rep.status = cp.rows_copied, cp.rows_rejected, cp.status
        metrics.follow_total(metrics.BACKFILL_ROWS, table.name, cp.rows_copied)  # a resumed copy starts there
        if cp.status == "done":
            return rep
        metrics.BACKFILL_EXPECTED.labels(table.name).set(count_rows(self.sqlite_read, table))
        after = decode_key(cp.last_key)
        started = time.perf_counter()
        fallbacks = self.fallbacks
        chunks = self.read_ahead(table, after)

        def committed(chunk: Chunk, outcome: lanes.Outcome) -> None:
            result, bad, set_aside, seconds = outcome
            rep.chunks += 1
            rep.rows_applied += result.applied
            rep.rows_stale += result.stale
            rep.rows_rejected += bad + set_aside
            rep.rows_copied = cp.rows_copied
            metrics.BACKFILL_ROWS.labels(table.name).inc(len(chunk.values) - bad - set_aside)
            metrics.BACKFILL_CHUNK.labels(table.name).observe(seconds)

        # a ranged table's chunks take its range lock for their whole transaction (spans.py): one at a time
        width = 1 if self._ranged(table) else max(1, self.lanes)
        try:
            lanes.run(self.steps(), table, cp, chunks, width, max_chunks, committed)
        finally:
            chunks.close()  # waits for a read still in flight
        if cp.status == "done":
            sync_sequence(self.postgres, table)
        rep.status = cp.status
        rep.seconds = time.perf_counter() - started
        rep.fallbacks = self.fallbacks - fallbacks
        log.info(
            "backfill %s: %s, %d rows copied, %d rejected, %d chunks",
            table.name,
            rep.status,
            rep.rows_copied,
            rep.rows_rejected,
            rep.chunks,
        )
        return rep

    def read_ahead(self, table: Table, after: tuple[Any, ...] | None) -> Iterator[Chunk]:
        """Chunks in key order, each read in a background thread while the previous one is applied (SQLite
        and Postgres work overlap); at most two chunks are in memory. Reading one chunk too many when the
        copy stops is harmless: it is simply not applied."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"backfill-read-{table.name}") as pool:
            pending = pool.submit(self.read_chunk, table, after)
            while True:
                chunk = pending.result()
                last = len(chunk.values) < self.chunk_size
                if not last:
                    pending = pool.submit(self.read_chunk, table, chunk.last_key)
                yield chunk
                if last:
                    return

    def read_chunk(self, table: Table, after: tuple[Any, ...] | None) -> Chunk:
        """The next chunk after `after` (a hook: migrate reads through a strict and a lenient engine)."""
        return read_chunk(self.sqlite_read, table, after, self.chunk_size)

    # -- one chunk -------------------------------------------------------------------------------
    def apply_chunk(
        self,
        table: Table,
        chunk: Chunk,
        cp: ckpt.Checkpoint,
        set_aside: int,
        save: Callable[[Connection, ckpt.Checkpoint], None] = ckpt.save,
        before_save: Callable[[], None] | None = None,
    ) -> tuple[ApplyResult, int]:
        """Apply the chunk with its version and `save` the checkpoint in one transaction; bisect on refusal.
        `set_aside` rows were already rejected by prepare_chunk: they count in the same checkpoint.
        (leases.py passes its own `save`, which also completes the chunk's lease; lanes.py a
        `before_save` that waits, rows loaded, for the previous chunk to commit.)"""
        columns, values, version = chunk.columns, chunk.values, chunk.version

        def attempt(bisect: bool) -> tuple[ApplyResult, int]:
            bad: list[Bad] = []
            with self.postgres.begin() as conn:
                if bisect:
                    result = self._bisect(conn, table, columns, values, version, 0, len(values), bad)
                elif chunk.span is not None and self._ranged(table):  # its span, even empty (spans.py)
                    result = self.load_rows(conn, table, columns, values, version, span=chunk.span)
                else:
                    result = self.load_rows(conn, table, columns, values, version) if values else ApplyResult()
                if before_save is not None:
                    before_save()
                self._reject(table, columns, values, bad)
                saved = ckpt.Checkpoint(**cp.__dict__)
                saved.rows_copied += len(values) - len(bad)
                saved.rows_rejected += len(bad) + set_aside
                save(conn, saved)
            cp.__dict__.update(saved.__dict__)
            return result, len(bad)

        # a deadlock or serialization failure with a live event on the same keys: the whole chunk again
        retrying = transient_db(self.max_retries, f"backfill {table.name}: chunk", log)
        try:
            return retrying(attempt, False)
        except DB_ERRORS as exc:
            if is_transient(exc) or is_fatal(exc):
                raise
            log.warning("backfill %s: chunk refused, bisecting: %s", table.name, first_line(exc, 300))
        return retrying(attempt, True)

    def _reject(self, table: Table, columns: Sequence[str], values: Sequence[Sequence[Any]], bad: list[Bad]) -> None:
        if not bad:
            return
        names = [table.c[c].name for c in columns]
        pos = key_positions(table, columns)
        for i, exc in bad:
            row = dict(zip(names, values[i], strict=True))
            self.rejects.reject(table.name, key_text([values[i][p] for p in pos]), row, exc)

    def _bisect(
        self, conn: Connection, table: Table, columns: Sequence[str], values: Sequence[Sequence[Any]], version: int,
        lo: int, hi: int, bad: list[Bad],
    ) -> ApplyResult:  # fmt: skip
        """Load values[lo:hi] in a savepoint; on refusal split it until single rows are isolated."""
        if lo >= hi:
            return ApplyResult()
        sp = conn.begin_nested()
        try:
            result = self.load_rows(conn, table, columns, values[lo:hi], version)
            sp.commit()
            return result
        except DB_ERRORS as exc:
            sp.rollback()
            if is_transient(exc) or is_fatal(exc):
                raise
            if hi - lo == 1:
                bad.append((lo, exc))
                return ApplyResult()
        mid = (lo + hi) // 2
        result = self._bisect(conn, table, columns, values, version, lo, mid, bad)
        result += self._bisect(conn, table, columns, values, version, mid, hi, bad)
        return result


def sync_sequence(engine: Engine, table: Table) -> None:
    """Once a table is copied: move its id sequence past the copied ids (bookkeeping.move_sequences_past_keys)."""
    with engine.begin() as conn:
        move_sequences_past_keys(conn, [table])

"""Chunked copy of tables from SQLite to Postgres through the apply rule, with checkpoints and rejects.

Each chunk (read with version S, see cursor.py) is applied in one Postgres transaction that also writes
the table's checkpoint. Fast path: COPY of the chunk into a TEMP staging table, then one statement that
claims the versions (`_dw_versions`, exactly as `apply.claim_versions`: only keys whose version is older
than S win) and upserts the winners. `fast=False` uses `apply.apply_snapshot_rows` instead (same rule).

A chunk Postgres refuses is bisected inside savepoints: each single bad row goes to the reject file, the
rest loads. Deadlocks / serialization failures (a live event on the same keys) retry the whole chunk.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from io import StringIO
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.exc import DBAPIError

from backfill import checkpoint as ckpt
from backfill.cursor import count_rows, decode_key, encode_key, read_chunk
from backfill.rejects import RejectWriter
from backfill.throttle import TokenBucket
from dualwrite import metrics
from dualwrite.apply import ApplyResult, apply_snapshot_rows, pk_columns
from dualwrite.events import key_text

log = logging.getLogger("backfill.copier")
TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014"}
STAGING = "_dw_backfill_stg"
# ValueError/TypeError: a driver refusing a value client-side (psycopg2: NUL in a string literal).
DB_ERRORS = (DBAPIError, psycopg.Error, psycopg2.Error, ValueError, TypeError)


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_transient(exc: BaseException) -> bool:
    state = _sqlstate(exc)
    if state in TRANSIENT_SQLSTATES or (state or "").startswith("08"):
        return True
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg.OperationalError | psycopg2.OperationalError) and state is None


def is_fatal(exc: BaseException) -> bool:
    """Errors no row can cause (a missing table or column, a syntax error, no privilege): stop the copy
    rather than reject every row of the table one by one."""
    state = _sqlstate(exc) or ""
    return state[:2] in ("42", "0A", "3D", "3F", "28")


@dataclass
class TableReport:
    table: str
    rows_copied: int = 0
    rows_applied: int = 0
    rows_stale: int = 0
    rows_rejected: int = 0
    chunks: int = 0
    seconds: float = 0.0
    status: str = "pending"

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["rows_per_second"] = round(self.rows_copied / self.seconds, 1) if self.seconds else None
        return d


@dataclass
class Copier:
    sqlite_read: Engine
    postgres: Engine  # an apply engine (session_replication_role=replica: FK triggers off)
    chunk_size: int = 5000
    fast: bool = True
    rejects: RejectWriter = field(default_factory=lambda: RejectWriter(None))
    throttle: TokenBucket = field(default_factory=lambda: TokenBucket(None))
    should_stop: Callable[[], bool] = lambda: False
    max_retries: int = 5

    def __post_init__(self) -> None:
        ckpt.ensure(self.postgres)

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

    def copy_table(self, table: Table, *, max_chunks: int | None = None) -> TableReport:
        rep = TableReport(table.name)
        with self.postgres.connect() as conn:
            cp = ckpt.load(conn, table.name)
            conn.rollback()
        rep.rows_copied, rep.rows_rejected, rep.status = cp.rows_copied, cp.rows_rejected, cp.status
        if cp.status == "done":
            return rep
        metrics.BACKFILL_EXPECTED.labels(table.name).set(count_rows(self.sqlite_read, table))
        after = decode_key(cp.last_key)
        started = time.perf_counter()
        while not self.should_stop() and (max_chunks is None or rep.chunks < max_chunks):
            chunk = read_chunk(self.sqlite_read, table, after, self.chunk_size)
            t0 = time.perf_counter()
            cp.status = "done" if len(chunk.rows) < self.chunk_size else "copying"
            if chunk.rows:
                cp.last_key = encode_key(chunk.last_key or ())
            result, bad = self._apply_chunk(table, chunk.rows, chunk.version, cp)
            rep.chunks += 1
            rep.rows_applied += result.applied
            rep.rows_stale += result.stale
            rep.rows_rejected += bad
            rep.rows_copied = cp.rows_copied
            metrics.BACKFILL_ROWS.labels(table.name).inc(len(chunk.rows) - bad)
            metrics.BACKFILL_CHUNK.labels(table.name).observe(time.perf_counter() - t0)
            after = chunk.last_key
            if cp.status == "done":
                break
            self.throttle.take(len(chunk.rows), self.should_stop)
        if cp.status == "done":
            sync_sequence(self.postgres, table)
        rep.status = cp.status
        rep.seconds = time.perf_counter() - started
        log.info(
            "backfill %s: %s, %d rows copied, %d rejected, %d chunks",
            table.name,
            rep.status,
            rep.rows_copied,
            rep.rows_rejected,
            rep.chunks,
        )
        return rep

    # -- one chunk -------------------------------------------------------------------------------
    def _apply_chunk(
        self, table: Table, rows: list[dict[str, Any]], version: int, cp: ckpt.Checkpoint
    ) -> tuple[ApplyResult, int]:
        """Apply rows with `version` and save the checkpoint in one transaction; bisect on refusal."""
        bisect = False
        for attempt in range(self.max_retries + 1):
            bad: list[tuple[dict[str, Any], BaseException]] = []
            try:
                with self.postgres.begin() as conn:
                    if bisect:
                        result = self._bisect(conn, table, rows, version, bad)
                    else:
                        result = self._load(conn, table, rows, version) if rows else ApplyResult()
                    pk = pk_columns(table)
                    for row, exc in bad:
                        self.rejects.reject(table.name, key_text([row[c] for c in pk]), row, exc)
                    saved = ckpt.Checkpoint(**cp.__dict__)
                    saved.rows_copied += len(rows) - len(bad)
                    saved.rows_rejected += len(bad)
                    ckpt.save(conn, saved)
                cp.__dict__.update(saved.__dict__)
                return result, len(bad)
            except DB_ERRORS as exc:
                if is_transient(exc) and attempt < self.max_retries:
                    log.warning("backfill %s: transient error, retrying chunk: %s", table.name, _line(exc))
                    time.sleep(min(2.0, 0.05 * 2**attempt))
                    continue
                if bisect or is_transient(exc) or is_fatal(exc):
                    raise
                log.warning("backfill %s: chunk refused, bisecting: %s", table.name, _line(exc))
                bisect = True
        raise RuntimeError("unreachable")

    def _bisect(
        self,
        conn: Connection,
        table: Table,
        rows: list[dict[str, Any]],
        version: int,
        bad: list[tuple[dict[str, Any], BaseException]],
    ) -> ApplyResult:
        if not rows:
            return ApplyResult()
        sp = conn.begin_nested()
        try:
            result = self._load(conn, table, rows, version)
            sp.commit()
            return result
        except DB_ERRORS as exc:
            sp.rollback()
            if is_transient(exc) or is_fatal(exc):
                raise
            if len(rows) == 1:
                bad.append((rows[0], exc))
                return ApplyResult()
        mid = len(rows) // 2
        result = self._bisect(conn, table, rows[:mid], version, bad)
        result += self._bisect(conn, table, rows[mid:], version, bad)
        return result

    def _load(self, conn: Connection, table: Table, rows: list[dict[str, Any]], version: int) -> ApplyResult:
        if not self.fast:
            return apply_snapshot_rows(conn, table, rows, version)
        return copy_apply(conn, table, rows, version)


def sync_sequence(engine: Engine, table: Table) -> None:
    """Move a serial/identity sequence of the primary key past the copied ids (rows arrive with explicit
    ids, which do not advance it), so inserts on Postgres do not collide after the switch. Never lowers it."""
    pk = pk_columns(table)
    if len(pk) != 1:
        return
    prep = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": prep.format_table(table), "c": pk[0]}
        ).scalar()
        if seq is None:
            return
        conn.execute(
            text(
                f"SELECT setval(:s, GREATEST((SELECT max({prep.quote(pk[0])}) FROM {prep.format_table(table)}),"
                " (SELECT last_value FROM " + seq + ")), true)"
            ),
            {"s": seq},
        )


def _line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]


_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_text(value: Any) -> str:
    """One value in COPY's text format (NUL bytes pass through: Postgres refuses them, the row is rejected)."""
    kind = type(value)
    if kind is str:
        return value.translate(_ESCAPES)
    if kind is int:
        return str(value)
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int | Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, psycopg2.extras.Json):
        value = value.dumps(value.adapted)
    elif not isinstance(value, str):
        adapted = getattr(value, "adapted", None)  # psycopg2 wrappers (Binary, ...)
        return copy_text(adapted) if adapted is not None else str(value).translate(_ESCAPES)
    return value.translate(_ESCAPES)


def copy_apply(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], version: int) -> ApplyResult:
    """COPY rows into a TEMP staging table, then claim versions and upsert the winners in one statement.

    Equivalent to `apply_snapshot_rows` (same `_dw_versions` keys via `key_text`, same comparison)."""
    dialect = conn.dialect
    prep = dialect.identifier_preparer
    pk = pk_columns(table)
    cols = [c.name for c in table.columns]
    procs = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns]
    target = prep.format_table(table)
    qcols = ", ".join(prep.quote(c) for c in cols)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{STAGING}")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {STAGING} ON COMMIT DROP AS SELECT {qcols} FROM {target} WITH NO DATA")
    conn.exec_driver_sql(f"ALTER TABLE {STAGING} ADD COLUMN _dw_pk text")
    raw = conn.connection.driver_connection
    copy_sql = f"COPY {STAGING} ({qcols}, _dw_pk) FROM STDIN"

    def staged() -> Iterator[list[Any]]:
        for r in rows:
            values = [r.get(c) for c in cols]
            out = [p(v) if p is not None and v is not None else v for p, v in zip(procs, values, strict=True)]
            out.append(key_text([r[c] for c in pk]))
            yield out

    if isinstance(raw, psycopg.Connection):
        with raw.cursor() as cur, cur.copy(copy_sql) as cp:
            for out in staged():
                cp.write_row(out)
    else:  # psycopg2: COPY text format built here
        buf = StringIO()
        for out in staged():
            buf.write("\t".join(copy_text(v) for v in out))
            buf.write("\n")
        buf.seek(0)
        with raw.cursor() as cur:
            cur.copy_expert(copy_sql, buf)
    update = [c for c in cols if c not in pk]
    conflict = ", ".join(prep.quote(c) for c in pk)
    on_conflict = (
        f"DO UPDATE SET {', '.join(f'{prep.quote(c)} = EXCLUDED.{prep.quote(c)}' for c in update)}"
        if update
        else "DO NOTHING"
    )
    scols = ", ".join(f"s.{prep.quote(c)}" for c in cols)
    sql = f"""
        WITH won AS (
            INSERT INTO _dw_versions (tbl, pk, seq)
            SELECT :tbl, _dw_pk, :seq FROM {STAGING} ORDER BY _dw_pk
            ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq WHERE _dw_versions.seq < EXCLUDED.seq
            RETURNING pk
        )
        INSERT INTO {target} ({qcols})
        SELECT {scols} FROM {STAGING} s JOIN won ON won.pk = s._dw_pk
        ON CONFLICT ({conflict}) {on_conflict}
    """
    res = conn.execute(text(sql), {"tbl": table.name, "seq": version})
    applied = res.rowcount if res.rowcount is not None and res.rowcount >= 0 else 0
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{STAGING}")
    return ApplyResult(applied=applied, stale=len(rows) - applied)

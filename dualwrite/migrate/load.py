"""Run a migration: plan → create tables (no FKs) → copy through the backfill Copier → indexes and unique
constraints → foreign keys → views → identity sequences → verify.

Resumable: the Copier checkpoints every chunk in the same transaction as its rows (`--resume` continues
after the last committed chunk; the post-load steps skip what already exists). Dirty values are cast
on the client (dualwrite.casts) and rejected with the column and reason before the chunk reaches Postgres; a
row Postgres still refuses is isolated by the Copier's bisection. Either way the reject file gets one
JSON line per row: table, key, column, value, reason (readers de-duplicate on (table, key)).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, inspect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateSchema

from dualwrite.apply.rule import ApplyResult
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier, TableReport
from dualwrite.backfill.copy_format import binary_capable, binary_oids, column_types, copy_rows
from dualwrite.backfill.cursor import Chunk, read_chunk
from dualwrite.backfill.rejects import RejectWriter, shown
from dualwrite.convert import Dirty
from dualwrite.engines import postgres_engine
from dualwrite.errors import first_line
from dualwrite.migrate import post_load, undo
from dualwrite.migrate import state as migration_state
from dualwrite.migrate.check import SourceSides, TableCheck, safe_key, verify_tables
from dualwrite.migrate.schema import Plan, TablePlan, reflect, source_engine

log = logging.getLogger("dualwrite.migrate")


class MigrateError(RuntimeError):
    """Refused before loading (collisions, existing tables) or stopped by --on-error stop."""


@dataclass
class Options:
    sqlite: str
    postgres: str
    schema: str = "public"
    tables: list[str] | None = None
    casts: dict[str, str] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    rejects_dir: str | None = "migrate-rejects"
    on_error: str = "reject"  # reject | stop
    resume: bool = False
    chunk_size: int = 25_000
    versioned: bool = False  # claim _dw_versions per row (the apply rule) instead of a plain COPY
    max_chunks: int | None = None  # stop after this many chunks (then --resume)
    max_rejects: int | None = None  # stop the copy once more rows than this were rejected (then --resume)
    should_stop: Callable[[], bool] = lambda: False
    state_schema: str = "_dualwrite"  # where the migration's own tables live (see state.py)
    keep_state: bool = False  # keep them after success (they always stay after a stop, for --resume)


@dataclass
class Outcome:
    plan: Plan
    status: str = "planned"  # planned | stopped | done
    tables: list[dict[str, Any]] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)
    sequences: list[dict[str, Any]] = field(default_factory=list)
    rejects_file: str | None = None
    over_max_rejects: bool = False  # stopped because more rows than --max-rejects were rejected
    state: str = "kept"  # what became of the migration's own tables: dropped | kept (why)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def verified(self) -> bool:
        return self.status == "done" and all(t["verified"] for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "tables": self.tables,
            "indexes": self.indexes,
            "foreign_keys": self.foreign_keys,
            "views": self.views,
            "sequences": self.sequences,
            "rejects_file": self.rejects_file,
            "state": self.state,
            "plan": self.plan.as_dict(),
        }


class MigrateRejects(RejectWriter):
    """Reject lines with the refused column and value; with stop=True the first reject raises instead."""

    def __init__(self, path: Path | None, *, stop: bool = False) -> None:
        super().__init__(path)
        self.stop = stop

    def reject(self, table: str, key: str, row: dict[str, Any], exc: BaseException) -> None:  # Postgres refused
        from dualwrite.backfill.rejects import RefusedValue, refused_column

        if isinstance(exc, RefusedValue):  # a stored value its column's type could not read
            self.write(table, key, exc.column, exc.value, str(exc), row)
            return
        reason = first_line(exc)
        column = refused_column(row, exc) or next(
            (c for c in row if f'column "{c}"' in reason or f"column {c}:" in reason or reason.endswith(f"column {c}")),
            None,
        )
        self.write(table, key, column, row.get(column) if column else None, reason, row)

    def write(self, table: str, key: str, column: str | None, value: Any, reason: str, row: dict[str, Any]) -> None:
        if self.stop:
            raise MigrateError(f"{table} key {key} column {column}: {reason} (value {value!r})")
        record = {
            "table": table,
            "key": key,
            "column": column,
            "value": None if value is None else shown(value),
            "reason": reason,
            "row": {k: repr(v) for k, v in row.items()},
            "at": datetime.now(UTC).isoformat(),
        }
        self.record(table, json.dumps(record, ensure_ascii=True))


def convert_values(
    plan: TablePlan, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> tuple[list[tuple[Any, ...]], list[tuple]]:
    """convert_rows on the chunk's tuples (in `columns` order), column by column: a column whose values are
    already what its cast returns passes through (Cast.column), the others are converted value by value. A
    Dirty value sends the chunk row by row instead, where a dict is built only for a dirty row (the reject
    line shows it)."""
    cast_of = {c.name: c.cast for c in plan.columns}
    casts = [cast_of[c] for c in columns]
    if not rows:
        return [], []
    out = []
    for cast, col in zip(casts, zip(*rows, strict=True), strict=True):
        got = cast.column(col) if cast.column is not None else None
        if got is None:
            f = cast.convert
            try:
                got = [None if v is None else f(v) for v in col]
            except Dirty:
                return _row_by_row(columns, [c.convert for c in casts], rows)
        out.append(got)
    return list(zip(*out, strict=True)), []


def _row_by_row(
    columns: Sequence[str], convs: list[Callable[[Any], Any]], rows: Sequence[Sequence[Any]]
) -> tuple[list[tuple[Any, ...]], list[tuple]]:
    good: list[tuple[Any, ...]] = []
    dirty: list[tuple[dict[str, Any], str, Any, str]] = []
    for row in rows:
        try:
            good.append(tuple([None if v is None else f(v) for f, v in zip(convs, row, strict=True)]))
        except Dirty as exc:
            named = dict(zip(columns, row, strict=True))
            bad = next(c for c, f, v in zip(columns, convs, row, strict=True) if not _casts(f, v))
            dirty.append((named, bad, named[bad], str(exc)))
    return good, dirty


def _casts(conv: Callable[[Any], Any], value: Any) -> bool:
    try:
        _ = None if value is None else conv(value)
        return True
    except Dirty:
        return False


@dataclass
class MigrateCopier(Copier):
    """The backfill Copier (chunks, checkpoints, bisection, rejects) with the casts applied first.

    Unless `versioned`, a chunk is COPYed straight into the table migrate just created: nobody else
    writes it, and a chunk commits with its checkpoint, so a resumed run never copies a row twice. Keys
    then have no `_dw_versions` row, i.e. version 0: any later dual write or backfill wins over them.
    """

    plans: dict[str, TablePlan] = field(default_factory=dict)
    versioned: bool = False
    lenient: Engine | None = None  # reads a chunk again whose text sqlite_read (strict_text) cannot decode

    def read_chunk(self, table: Table, after: tuple[Any, ...] | None) -> Chunk:
        try:
            return super().read_chunk(table, after)
        except (sqlite3.Error, DBAPIError) as exc:
            if self.lenient is None or not is_decode_error(exc):
                raise
        return read_chunk(self.lenient, table, after, self.chunk_size)

    def prepare_chunk(self, table: Table, chunk: Chunk) -> tuple[Chunk, int]:
        plan = self.plans[table.name]
        chunk, unread = super().prepare_chunk(table, chunk)
        good, dirty = convert_values(plan, chunk.columns, chunk.values)
        writer: MigrateRejects = self.rejects  # type: ignore[assignment]
        for row, column, value, reason in dirty:
            writer.write(table.name, safe_key([row[c] for c in plan.pk]), column, value, reason, row)
        # as Chunk.from_dicts built it before: no last_key/span (the Copier keeps the read chunk's own)
        return Chunk(chunk.columns, good, chunk.version, None, None), unread + len(dirty)

    def load_rows(
        self, conn: Connection, table: Table, columns: Sequence[str], values: Sequence[Sequence[Any]], version: int
    ) -> ApplyResult:
        if self.versioned:
            return super().load_rows(conn, table, columns, values, version)
        prep = conn.dialect.identifier_preparer
        sql = f"COPY {prep.format_table(table)} ({', '.join(prep.quote(c) for c in columns)}) FROM STDIN"
        # binary where every value's type is exactly its column's (the casts make it so for the common ones)
        oids = binary_oids(values, column_types(conn, table, columns)) if binary_capable(conn) else None
        copy_rows(conn, sql, values, oids)  # values already cast by dualwrite.casts
        return ApplyResult(applied=len(values))


def is_decode_error(exc: BaseException) -> bool:
    """What a strict_text source engine raises on a stored text that is not valid UTF-8."""
    return "Could not decode to UTF-8" in str(exc)


def rejected_keys(path: Path | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    if path is None or not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out.setdefault(rec["table"], set()).add(rec["key"])
    return out


def run(opts: Options) -> Outcome:
    started = time.perf_counter()
    if not Path(opts.sqlite).is_file():
        raise MigrateError(f"sqlite: file {opts.sqlite!r} does not exist")
    try:
        plan = reflect(opts.sqlite, tables=opts.tables, casts=opts.casts, renames=opts.renames)
    except ValueError as exc:
        raise MigrateError(str(exc)) from None
    out = Outcome(plan)
    if plan.problems:
        raise MigrateError("refusing to load:\n  " + "\n  ".join(plan.problems))
    if opts.dry_run:
        return out
    reject_path = None
    if opts.rejects_dir:  # the folder is made with the first reject: a clean run leaves none behind
        reject_path = Path(opts.rejects_dir) / "rejects.jsonl"
        if not opts.resume and reject_path.exists():
            reject_path.unlink()
        out.rejects_file = str(reject_path)
    # psycopg 3 whatever the URL's driver: its binary COPY is what makes the Copier fast (backfill/load.py)
    pg_url = make_url(opts.postgres).set(drivername="postgresql+psycopg")
    pg = postgres_engine(
        pg_url.render_as_string(hide_password=False), opts.schema, state_schema=opts.state_schema, pool_size=2
    )
    src = source_engine(opts.sqlite, plan.tables)
    fast_src = source_engine(opts.sqlite, plan.tables, strict_text=True)  # the load's reads
    sides: SourceSides | None = None
    try:
        t0 = time.perf_counter()
        _create(pg, plan, opts)
        out.phases["create"] = time.perf_counter() - t0
        # verification's SQLite side starts now, beside the load (it needs nothing from Postgres)
        replan = {"path": opts.sqlite, "tables": opts.tables, "casts": opts.casts, "renames": opts.renames}
        sides = SourceSides(src, plan.tables, replan)
        rejects = MigrateRejects(reject_path, stop=opts.on_error == "stop")

        def over() -> bool:
            return opts.max_rejects is not None and rejects.count > opts.max_rejects

        copier = MigrateCopier(
            fast_src,
            pg,
            chunk_size=opts.chunk_size,
            rejects=rejects,
            should_stop=lambda: opts.should_stop() or over(),
            plans={p.name: p for p in plan.tables},
            versioned=opts.versioned,
            lenient=src,
        )
        # each table's copy runs with the collector's first threshold above two chunks' worth (Copier.copy_table)
        reports = {r.table: r for r in copier.copy_tables([p.copy for p in plan.tables], max_chunks=opts.max_chunks)}
        out.phases["copy"] = time.perf_counter() - t0 - out.phases["create"]
        if len(reports) < len(plan.tables) or any(r.status != "done" for r in reports.values()):
            out.status, out.over_max_rejects = "stopped", over()
            out.tables = [_summary(p, reports.get(p.name), None) for p in plan.tables]
            return out
        with pg.begin() as conn:
            out.indexes = post_load.indexes(conn, plan)
            out.foreign_keys = post_load.foreign_keys(conn, plan)
            out.views = post_load.views(conn, plan)
            made = [v["name"] for v in out.views if v.get("created") and not v.get("existing")]
            undo.mark(conn, opts.schema, made, opts.sqlite, "VIEW")
            out.sequences = post_load.sequences(conn, plan, opts.sqlite)
        t1 = time.perf_counter()
        out.phases["constraints"] = t1 - t0 - out.phases["create"] - out.phases["copy"]
        rej = rejected_keys(reject_path)
        for p, chk in zip(plan.tables, verify_tables(src, pg, plan.tables, rej, sides), strict=True):
            out.tables.append(_summary(p, reports.get(p.name), chk))
        out.phases["verify"] = time.perf_counter() - t1
        out.status = "done"
        if not out.verified:
            out.state = f"kept in schema {opts.state_schema} (not verified)"
        elif opts.keep_state or opts.versioned:
            why = "--keep-state" if opts.keep_state else "--versioned: the live setup's versions"
            migration_state.forget(pg, opts.schema)
            out.state = f"kept in schema {opts.state_schema} ({why})"
        else:
            dropped = migration_state.drop_created(pg, opts.schema)
            out.state = "dropped" + (f": {', '.join(dropped)}" if dropped else " (nothing of its own was left)")
        return out
    finally:
        if sides is not None:
            sides.stop()
        out.seconds = time.perf_counter() - started
        src.dispose()
        fast_src.dispose()
        pg.dispose()


def _summary(p: TablePlan, rep: TableReport | None, chk: TableCheck | None) -> dict[str, Any]:
    seconds = rep.seconds if rep else 0.0
    d: dict[str, Any] = {
        "table": p.name,
        "source": p.source,
        "read": chk.read if chk else None,
        "written": chk.written if chk else (rep.rows_copied if rep else 0),
        "rejected": chk.rejected if chk else (rep.rows_rejected if rep else 0),
        "seconds": round(seconds, 3),
        "rows_per_second": round(chk.read / seconds, 1) if chk and seconds else None,
        "status": rep.status if rep else "pending",
        "verified": chk.verified if chk else False,
    }
    if chk and not chk.verified:
        d["why_not_verified"] = chk.reason()
    return d


def _create(pg: Engine, plan: Plan, opts: Options) -> None:
    if opts.resume and not migration_state.resumable(pg, [p.name for p in plan.tables]):
        raise MigrateError(
            f"--resume: no checkpoints of these tables in schema {opts.state_schema!r} (a migration that "
            "finished drops them unless --keep-state): nothing to resume"
        )
    with pg.begin() as conn:
        schema_created = not undo.schema_exists(conn, opts.schema)
        conn.execute(CreateSchema(opts.schema, if_not_exists=True))
        if schema_created:
            undo.mark_schema(conn, opts.schema, opts.sqlite)
    with pg.begin() as conn:
        existing = set(inspect(conn).get_table_names(schema=opts.schema))
        clash = [p.name for p in plan.tables if p.name in existing]
        if clash and not opts.resume:
            raise MigrateError(
                f"target table(s) already exist in schema {opts.schema!r}: {', '.join(clash)} "
                "(use --resume to continue a migration, or drop them)"
            )
        plan.metadata.create_all(conn, checkfirst=True)
        if not opts.resume:  # what `migrate --undo` may drop (undo.py)
            undo.mark(conn, opts.schema, [p.name for p in plan.tables], opts.sqlite)
    migration_state.create(pg, opts.schema, resume=opts.resume)  # in the state schema, not opts.schema
    if not opts.resume:
        ckpt.reset(pg, [p.name for p in plan.tables])


__all__ = ["ApplyResult", "MigrateError", "Options", "Outcome", "run"]

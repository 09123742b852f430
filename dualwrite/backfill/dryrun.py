"""`backfill run --dry-run`: read and count every row, let Postgres judge each chunk, write nothing.

Each chunk goes through the Copier's own load and bisection (so the same rows a real run would reject are
found, with Postgres' reason) inside a transaction that is always rolled back. While a chunk is being
checked its keys are locked as a real chunk's would be, for that chunk's duration only. No checkpoint,
lease, consumer group or reject record is written (the reject file only with an explicit --rejects).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, text

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Bad, Copier
from dualwrite.backfill.cursor import read_chunk
from dualwrite.backfill.progress import summary_row
from dualwrite.backfill.rejects import RejectWriter, refused_column, shown
from dualwrite.bookkeeping import has_state_table

if TYPE_CHECKING:
    from dualwrite.engines import Backends

SAMPLES = 1000  # rejected rows printed per table (every one in the --rejects file)


class _Inspect(Copier):
    def __post_init__(self) -> None:  # a dry run does not even create the checkpoint table
        pass


class _Collect(RejectWriter):
    """Keeps the first rejects for printing; writes the file only if one was asked for; no metric."""

    def __init__(self, path: str | None) -> None:
        super().__init__(path)
        self.samples: dict[str, list[dict[str, Any]]] = {}

    def reject(self, table: str, key: str, row: dict[str, Any], exc: BaseException) -> None:
        self.count += 1
        column = refused_column(row, exc)
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        value = shown(row.get(column)) if column else None
        record = {"table": table, "key": key, "column": column, "value": value, "reason": reason}
        kept = self.samples.setdefault(table, [])
        if len(kept) < SAMPLES:
            kept.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record | {"row": {k: shown(v) for k, v in row.items()}}, ensure_ascii=False) + "\n")


@dataclass
class DryTable:
    table: str
    rows: int = 0
    chunks: int = 0
    would_write: int = 0
    would_skip: int = 0  # Postgres already holds a newer version of the key
    rejected: int = 0
    seconds: float = 0.0
    checkpoint: str = "none"
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        counts = (self.rows, self.would_write, self.would_skip, self.rejected)
        return summary_row(self.table, *counts, self.seconds, "dry-run")


def dry_run(
    backends: Backends,
    tables: Sequence[Table],
    chunk_size: int,
    fast: bool,
    rejects_path: str | None,
    stop: Callable[[], bool],
    *,
    max_rejects: int | None = None,
) -> list[DryTable]:
    collect = _Collect(rejects_path)
    asked = stop

    def stop() -> bool:  # noqa: F811 - the caller's stop, or more rejects than --max-rejects
        return asked() or (max_rejects is not None and collect.count > max_rejects)

    copier = _Inspect(backends.sqlite_read, backends.postgres_apply, chunk_size=chunk_size, fast=fast, rejects=collect)
    cps = _checkpoints(backends)
    out = []
    for table in tables:
        if stop():
            break
        rep = DryTable(table.name)
        if table.name in cps:
            rep.checkpoint = "{} at {} rows".format(*cps[table.name])
        started = time.perf_counter()
        after = None
        while not stop():
            chunk = read_chunk(backends.sqlite_read, table, after, chunk_size)
            rep.rows += len(chunk.values)
            if chunk.values:
                rep.chunks += 1
                ready, set_aside = copier.prepare_chunk(table, chunk)
                bad: list[Bad] = []
                with backends.postgres_apply.connect() as conn:
                    tx = conn.begin()
                    try:
                        result = copier._bisect(  # noqa: SLF001 - the Copier's own load + bisection
                            conn, table, ready.columns, ready.values, ready.version, 0, len(ready.values), bad
                        )
                        copier._reject(table, ready.columns, ready.values, bad)  # noqa: SLF001
                    finally:
                        tx.rollback()  # the whole point: nothing stays
                rep.would_write += result.applied
                rep.would_skip += result.stale
                rep.rejected += len(bad) + set_aside
            if len(chunk.values) < chunk_size:
                break
            after = chunk.last_key
        rep.seconds = time.perf_counter() - started
        rep.samples = collect.samples.get(table.name, [])
        out.append(rep)
    return out


def describe(reps: list[DryTable], chunk_size: int) -> list[str]:
    lines = []
    for r in reps:
        resume = "" if r.checkpoint == "none" else f"; checkpoint {r.checkpoint} (a run resumes there)"
        lines.append(
            f"would copy {r.table}: {r.rows} rows in {r.chunks} chunk(s) of {chunk_size}; {r.would_write} to write,"
            f" {r.would_skip} already newer on Postgres, {r.rejected} would be rejected{resume}"
        )
        lines.extend(f"  reject {s['key']} column={s['column']} value={s['value']}: {s['reason']}" for s in r.samples)
        if r.rejected > len(r.samples):
            lines.append(f"  ... {r.rejected - len(r.samples)} more (every one in --rejects FILE)")
    return lines


def _checkpoints(backends: Backends) -> dict[str, tuple[str, int]]:
    """(status, rows copied) per table, read without creating or migrating anything."""
    with backends.postgres.connect() as conn:
        try:
            if not has_state_table(conn, ckpt.checkpoints.name):
                return {}
            rows = conn.execute(text(f"SELECT tbl, status, rows_copied FROM {ckpt.checkpoints.name}")).all()
            return {r.tbl: (r.status, int(r.rows_copied)) for r in rows}
        finally:
            conn.rollback()

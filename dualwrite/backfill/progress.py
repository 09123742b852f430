"""What `backfill run` shows while it copies and when it ends.

On a terminal: one rich progress bar per table (rows done by every worker / rows expected, rate, ETA),
with log lines printed above the bars. Otherwise (a pipe, a log file, systemd): a plain log line per
table at most every `every_s` seconds and when the table ends. At the end of the copy: the summary table
(table, rows read, written, skipped because Postgres already held a newer version, rejected, seconds,
rows/s), which also goes into the --report JSON. read = written + skipped + rejected for every table.

`dualwrite backfill status`: per-table progress from the checkpoints, and what each live worker does.
The metrics come from the same checkpoints (`export_shared`): every worker exports every worker's rows, so a
resumed or replaying daemon does not show its own counts as the table's progress; `dualwrite_backfill_paused`
says an operator holds the copy (the stall alert stays quiet then).

Rate is the checkpoint's moving average over the last chunks of every worker (checkpoint.moving_rate),
so it reflects now, not the whole run; ETA = rows left / rate. The total is SQLite's count(*) at the time
of asking (live writes move it). A table whose checkpoint says copying while no worker is alive is shown
as `stopped`: run `dualwrite backfill run` to resume it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import click
import redis
from sqlalchemy import Engine, Table

from dualwrite import metrics
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.cursor import count_rows
from dualwrite.backfill.throttle import Limits, live_workers, read_overrides

log = logging.getLogger("dualwrite.backfill.progress")


class CopyProgress:
    def __init__(self, tty: bool, every_s: float = 5.0) -> None:
        self.tty = tty
        self.every_s = every_s
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._handlers: list[logging.Handler] = []
        self._started: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> CopyProgress:
        if self.tty:
            from rich.logging import RichHandler
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bars = Progress(
                TextColumn("{task.description:30}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]:>12}"),
                TimeRemainingColumn(),
            )
            self._bars.__enter__()
            root = logging.getLogger()  # log lines above the bars, not through them
            self._handlers = [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
            for h in self._handlers:
                root.removeHandler(h)
            root.addHandler(RichHandler(console=self._bars.console, show_path=False))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            root = logging.getLogger()
            for h in [h for h in root.handlers if type(h).__name__ == "RichHandler"]:
                root.removeHandler(h)
            for h in self._handlers:
                root.addHandler(h)
            self._bars.__exit__(None, None, None)
            self._bars = None

    def begin(self, table: str, done: int) -> None:
        """A table starts (done: rows its checkpoint already holds), so the first rate has a baseline."""
        self._started[table] = (time.monotonic(), done)

    def update(self, table: str, done: int, total: int) -> None:
        """LeaseBook's progress callback: rows done by all workers after each chunk of this one."""
        now = time.monotonic()
        t0, d0 = self._started.setdefault(table, (now, done))
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        if self._bars is not None:
            task = self._tasks.get(table)
            if task is None:
                task = self._tasks[table] = self._bars.add_task(table, total=max(total, 1), rate="")
            self._bars.update(task, completed=done, total=max(total, done, 1), rate=f"{rate:,.0f} rows/s")
            return
        if now - self._last.get(table, float("-inf")) >= self.every_s:
            self._last[table] = now
            pct = 100.0 * done / total if total else 100.0
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total > done else "-"
            log.info("backfill %s: %d/%d rows (%.1f%%), %.0f rows/s, ETA %s", table, done, total, pct, rate, eta)


def summary_rows(reports: list[Any]) -> list[dict[str, Any]]:
    """One row per table of this worker's copy (leases.LeasedReport)."""
    out = []
    for r in reports:
        rejected = getattr(r, "rows_rejected_run", r.rows_rejected)
        read = getattr(r, "rows_read", r.rows_applied + r.rows_stale + rejected)
        out.append(summary_row(r.table, read, r.rows_applied, r.rows_stale, rejected, r.seconds, r.status))
    return out


def summary_row(
    table: str, read: int, written: int, skipped: int, rejected: int, seconds: float, status: str
) -> dict[str, Any]:
    """A table's line of the summary (COLUMNS), of a copy or of a dry run."""
    rate = round(read / seconds, 1) if seconds else None
    return dict(zip(COLUMNS, (table, read, written, skipped, rejected, round(seconds, 3), rate, status), strict=True))


COLUMNS = ("table", "read", "written", "skipped", "rejected", "seconds", "rows_per_second", "status")


def print_summary(rows: list[dict[str, Any]], tty: bool, title: str = "backfill summary") -> None:
    if tty:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for c in COLUMNS:
            table.add_column("rows/s" if c == "rows_per_second" else c, justify="left" if c == "table" else "right")
        for r in rows:
            table.add_row(*(_cell(r[c]) for c in COLUMNS))
        Console().print(table)
        return
    head = {c: "rows/s" if c == "rows_per_second" else c for c in COLUMNS}
    cells = [head] + [{c: _cell(r[c]) for c in COLUMNS} for r in rows]
    widths = {c: max(len(line[c]) for line in cells) for c in COLUMNS}
    click.echo(title)
    for line in cells:
        click.echo("  ".join(line[c].ljust(widths[c]) if c == "table" else line[c].rjust(widths[c]) for c in COLUMNS))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


@dataclass
class TableProgress:
    table: str
    done: int
    total: int | None
    rejected: int
    state: str  # pending | copying | stopped | done
    rows_per_second: float | None
    eta_seconds: float | None
    started_at: datetime | None
    updated_at: datetime | None

    @property
    def percent(self) -> float | None:
        if not self.total:
            return 100.0 if self.state == "done" else None
        return min(100.0, 100.0 * self.done / self.total)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"percent": self.percent}


def table_progress(pg: Engine, sqlite: Engine, tables: list[Table], workers_alive: bool) -> list[TableProgress]:
    cps = ckpt.load_all(pg)
    known = {t.name for t in tables}
    out = []
    for name in [t.name for t in tables] + [n for n in cps if n not in known]:
        cp = cps.get(name) or ckpt.Checkpoint(name)
        table = next((t for t in tables if t.name == name), None)
        total = count_rows(sqlite, table) if table is not None else None
        state = cp.status
        if state == "copying" and not workers_alive:
            state = "stopped"
        rate = cp.rate if state == "copying" else None
        eta = None
        if rate and total is not None:
            eta = max(0.0, (total - cp.rows_copied) / rate)
        out.append(
            TableProgress(name, cp.rows_copied, total, cp.rows_rejected, state, rate, eta, cp.started_at, cp.updated_at)
        )
    return out


def export_shared(engine: Engine, tables: list[str], client: redis.Redis | None = None, namespace: str = "") -> None:
    """Export rows copied/rejected per table from the shared checkpoints (a done table's expected rows are
    then what it holds: live writes move SQLite's count), and whether an operator paused the copy."""
    cps = ckpt.load_all(engine)
    for name in tables:
        cp = cps.get(name)
        if cp is None:
            continue
        metrics.follow_total(metrics.BACKFILL_ROWS, name, cp.rows_copied)
        metrics.follow_total(metrics.BACKFILL_REJECTS, name, cp.rows_rejected)
        if cp.status == "done":
            metrics.BACKFILL_EXPECTED.labels(name).set(cp.rows_copied + cp.rows_rejected)
    if client is not None:
        metrics.BACKFILL_PAUSED.set(1 if Limits().with_overrides(read_overrides(client, namespace)).paused else 0)


def worker_lines(
    client: redis.Redis, namespace: str, postgres: Engine | None = None
) -> tuple[list[dict[str, Any]], dict[str, str], str | None]:
    """Live workers (a killed one left out at once when `postgres` is given: see live_workers), the live
    limits, and an error line if Redis cannot be asked."""
    try:
        return live_workers(client, namespace, postgres), read_overrides(client, namespace), None
    except redis.RedisError as exc:
        return [], {}, f"workers: unknown (redis: {exc})"

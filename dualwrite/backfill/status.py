"""`dualwrite backfill status`: per-table progress from the checkpoints, and what each live worker does.

Rate is the checkpoint's moving average over the last chunks of every worker (checkpoint.moving_rate),
so it reflects now, not the whole run; ETA = rows left / rate. The total is SQLite's count(*) at the time
of asking (live writes move it). A table whose checkpoint says copying while no worker is alive is shown
as `stopped`: run `dualwrite backfill run` to resume it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Engine, Table

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.control import live_workers, read_overrides
from dualwrite.backfill.cursor import count_rows


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


def worker_lines(client: redis.Redis, namespace: str) -> tuple[list[dict[str, Any]], dict[str, str], str | None]:
    """Live workers, the live limits, and an error line if Redis cannot be asked."""
    try:
        return live_workers(client, namespace), read_overrides(client, namespace), None
    except redis.RedisError as exc:
        return [], {}, f"workers: unknown (redis: {exc})"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def render(rows: list[TableProgress], workers: list[dict[str, Any]], limits: dict[str, str]) -> list[str]:
    lines = [f"{'table':30} {'done':>10}/{'total':<10} {'%':>6} {'rows/s':>9} {'ETA':>7}  {'state':8} rejected"]
    for r in rows:
        total = "?" if r.total is None else str(r.total)
        pct = "-" if r.percent is None else f"{r.percent:.1f}"
        rate = "-" if r.rows_per_second is None else f"{r.rows_per_second:.0f}"
        lines.append(
            f"{r.table:30} {r.done:>10}/{total:<10} {pct:>6} {rate:>9} {duration(r.eta_seconds):>7}"
            f"  {r.state:8} {r.rejected}"
        )
    if not workers:
        lines.append("workers: none running")
    for w in workers:
        throttle = f"throttled: {w['throttle']} since {w['throttled_since']}" if w.get("throttle") else "not throttled"
        own = " ".join(f"{k}={v}" for k, v in sorted((w.get("limits") or {}).items()))
        lines.append(f"worker {w.get('worker')}: {w.get('activity')}, {throttle}{'; ' + own if own else ''}")
    lines.append("live limits: " + (" ".join(f"{k}={v}" for k, v in sorted(limits.items())) or "none"))
    return lines

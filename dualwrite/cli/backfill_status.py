"""`dualwrite backfill status`: the copy's progress per table from the checkpoints, the live workers and
their throttling, and what to run next (--json: one document)."""

from __future__ import annotations

from typing import Any

import click

from dualwrite.cli import next_steps, render
from dualwrite.cli.options import (
    before_init,
    connection_options,
    fail,
    load_tables,
    tables_options,
    write_report,
)
from dualwrite.cli.params import REPORT_PATH, check_report_path
from dualwrite.settings import Settings, mask_text


@click.command()
@tables_options
@connection_options
@click.option("--report", "report_path", default=None, type=REPORT_PATH, help="write the status as JSON here")
@render.json_option
def status(settings: Settings, reflect: bool, report_path: str | None, as_json: bool) -> None:
    """Per-table rows done/total, rate, ETA and state from the checkpoints; live workers and throttling;
    what to run next."""
    from dualwrite.backfill.progress import table_progress, worker_lines
    from dualwrite.engines import open_redis, pg_engine, sqlite_read_engine

    check_report_path(report_path)
    tables = load_tables(settings, reflect)
    pg = pg_engine(settings, pool_size=1)
    sq = sqlite_read_engine(settings.sqlite_url)
    refusal = before_init(sq, pg, settings, next_steps.tables_flag(reflect))
    if refusal:  # reading the checkpoints would create the backfill's tables: name init instead
        pg.dispose()
        sq.dispose()
        fail(refusal)
    client = open_redis(settings.redis_url)
    try:
        workers, limits, redis_error = worker_lines(client, settings.namespace, pg)
        rows = table_progress(pg, sq, tables.tables(), workers_alive=bool(workers) or redis_error is not None)
    finally:
        pg.dispose()
        sq.dispose()
    doc = {"tables": [r.as_dict() for r in rows], "workers": workers, "live_limits": limits}
    write_report(report_path, doc)
    steps = next_steps.after_backfill_status(rows, workers, next_steps.tables_flag(reflect))
    if as_json:
        render.emit_json(doc | {"workers_error": redis_error, "next_steps": steps})
        return
    _print_status(rows, workers, limits)
    if redis_error:
        click.echo(mask_text(redis_error))
    render.next_steps(steps)


def _print_status(rows: list[Any], workers: list[dict[str, Any]], limits: dict[str, str]) -> None:
    cells = [
        [
            r.table,
            f"{r.done}/{'?' if r.total is None else r.total}",
            "-" if r.percent is None else f"{r.percent:.1f}",
            "-" if r.rows_per_second is None else f"{r.rows_per_second:.0f}",
            render.duration(r.eta_seconds),
            r.state,
            r.rejected,
        ]
        for r in rows
    ]
    render.table(["table", "done/total", "%", "rows/s", "ETA", "state", "rejected"], cells)
    if not workers:
        click.echo("workers: none running")
    for w in workers:
        throttle = f"throttled: {w['throttle']} since {w['throttled_since']}" if w.get("throttle") else "not throttled"
        own = " ".join(f"{k}={v}" for k, v in sorted((w.get("limits") or {}).items()))
        click.echo(f"worker {w.get('worker')}: {w.get('activity')}, {throttle}{'; ' + own if own else ''}")
    click.echo("live limits: " + (" ".join(f"{k}={v}" for k, v in sorted(limits.items())) or "none"))

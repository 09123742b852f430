"""`dualwrite backfill ...`: run (copy then replay), status, reset, deadletters list|redrive."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import OperationalError

from dualwrite.cli.backfill_deadletters import deadletters
from dualwrite.cli.backfill_status import status
from dualwrite.cli.next_steps import tables_flag
from dualwrite.cli.options import (
    confirm_destructive,
    connection_options,
    fail,
    load_tables,
    open_backends,
    retention_options,
    tables_options,
    write_report,
)
from dualwrite.cli.params import (
    MILLIS,
    PORT,
    RATE,
    REPORT_PATH,
    SECONDS,
    Count,
    FiniteFloat,
    check_listen,
    check_report_path,
    csv,
    max_rejects_option,
)
from dualwrite.cli.params import priorities as prio
from dualwrite.cli.signals import StopFlag
from dualwrite.errors import ConfigError, first_line
from dualwrite.settings import Settings, mask_text

if TYPE_CHECKING:
    from dualwrite.engines import Backends
    from dualwrite.tables import Tables

log = logging.getLogger("dualwrite.cli.backfill")


@click.group("backfill")
def backfill() -> None:
    """Copy existing rows to Postgres and replay the change stream."""


def _selected(tables: Tables, names: list[str], priorities: list[str], stores: list[str]) -> Tables:
    """The tables to copy, in `tables`' order: by name, priority and store (the filters combine, AND)."""
    chosen = tables.select(names=names or None, priorities=prio(priorities) or None, stores=stores or None)
    if not chosen:
        raise ConfigError("no table matches the selection (--table/--tables/--priority/--stores)")
    return chosen


@backfill.command()
@tables_options
@connection_options
@retention_options
@click.option("--table", "table_names", multiple=True, help="only this table (repeatable)")
@click.option("--tables", "table_lists", multiple=True, help="only these tables: a,b")
@click.option("--priority", "priorities", multiple=True, help="only these registry priorities: P0,P1")
@click.option("--stores", "store_lists", multiple=True, help="only these registry stores: memory,profiles")
@click.option("--chunk-size", default=5000, show_default=True, type=Count(1, 10_000_000))
@click.option("--max-rows-per-second", type=RATE, default=None, help="rate limit of the copy")
@click.option("--max-pg-latency-ms", type=MILLIS, default=None, help="back off above this probe time")
@click.option("--max-replication-lag-s", type=SECONDS, default=None, help="back off above this lag")
@click.option("--rejects", "rejects_path", default="backfill-rejects.jsonl", show_default=True, type=REPORT_PATH)
@max_rejects_option("stop the copy (after its current chunk, exit 1)")
@click.option("--slow", is_flag=True, help="apply chunks with INSERT instead of COPY")
@click.option("--daemon", is_flag=True, help="keep replaying until SIGTERM/SIGINT (default: stop once caught up)")
@click.option("--no-replay", is_flag=True, help="copy only")
@click.option("--group", default="backfill", show_default=True, help="consumer group")
@click.option("--consumer", default=None, help="worker/consumer name (default host-pid)")
@click.option(
    "--lease-ttl",
    default=300.0,
    show_default=True,
    type=FiniteFloat(0, 86400, min_open=True),
    help="seconds before a stuck worker's range is retaken",
)
@click.option("--metrics-port", type=PORT, default=None, help="serve /metrics, /health")
@click.option(
    "--metrics-host",
    envvar="DUALWRITE_METRICS_HOST",
    default=None,
    help="address /metrics listens on (default 127.0.0.1; 0.0.0.0 in a container) [DUALWRITE_METRICS_HOST]",
)
@click.option(
    "--progress-every",
    "progress_every",
    type=SECONDS,
    default=5.0,
    show_default=True,
    help="seconds between progress lines (copy per table, replay: applied, backlog, lag, ETA)",
)
@click.option("--dry-run", is_flag=True, help="read, count and validate every row against Postgres; write nothing")
@click.option("--report", "report_path", default=None, type=REPORT_PATH, help="write a JSON report here")
@click.pass_context
def run(
    ctx: click.Context,
    settings: Settings,
    reflect: bool,
    table_names: tuple[str, ...],
    table_lists: tuple[str, ...],
    priorities: tuple[str, ...],
    store_lists: tuple[str, ...],
    chunk_size: int,
    max_rows_per_second: float | None,
    max_pg_latency_ms: float | None,
    max_replication_lag_s: float | None,
    rejects_path: str,
    max_rejects: int | None,
    slow: bool,
    daemon: bool,
    no_replay: bool,
    group: str,
    consumer: str | None,
    lease_ttl: float,
    metrics_port: int | None,
    metrics_host: str | None,
    progress_every: float,
    dry_run: bool,
    report_path: str | None,
) -> None:
    """Copy the chosen tables (resuming from checkpoints; workers started on the same database share the
    ranges), then replay the stream into Postgres until caught up (--daemon: until stopped).

    SIGTERM/SIGINT finish the current chunk or batch, keep its checkpoint and exit 0. Live limits:
    `dualwrite backfill set`. Progress bars on a terminal, log lines otherwise; a summary table at the end."""
    from dualwrite.backfill.throttle import Limits
    from dualwrite.backfill.worker import RunOptions
    from dualwrite.backfill.worker import run as run_worker

    check_report_path(report_path)
    if not dry_run:
        check_listen(metrics_host, metrics_port)
    tables = load_tables(settings, reflect)
    selected = _selected(tables, csv(table_names + table_lists), csv(priorities), csv(store_lists))
    tty = sys.stdout.isatty()
    backends = open_backends(settings, bookkeeping=tables_flag(reflect))
    stop = StopFlag(lambda signum: log.info("signal %d: finishing the current batch", signum)).install()
    started = time.time()
    report: dict[str, Any] = {"tables": [], "replay": None, "dry_run": dry_run}
    error: str | None = None
    try:
        if dry_run:
            explicit = ctx.get_parameter_source("rejects_path") is not click.core.ParameterSource.DEFAULT
            rejects = rejects_path if explicit else None
            group_ = None if no_replay else group
            report |= _dry_run(
                backends, selected.tables(), chunk_size, not slow, rejects, stop, tty, group_, max_rejects
            )
        else:
            limits = Limits(max_rows_per_second, None, max_pg_latency_ms, max_replication_lag_s)
            opts = RunOptions(
                chunk_size=chunk_size,
                limits=limits,
                rejects_path=rejects_path,
                fast=not slow,
                replay=not no_replay,
                daemon=daemon,
                group=group,
                consumer=consumer,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                periodic=_gate_export(backends, tables) if metrics_port is not None else (),
                lease_ttl_s=lease_ttl,
                max_rejects=max_rejects,
                tty=tty,
                progress_every_s=progress_every,
            )
            report |= run_worker(backends, tables, opts, stop, copy=selected.tables())
    except Exception as exc:  # noqa: BLE001 - one line and exit 1; the log above has the table and range
        if isinstance(exc, OperationalError | ConfigError):
            raise  # a server that does not answer, an address it cannot listen on: one line, exit 2
        error = first_line(exc)
        log.error("backfill failed: %s", mask_text(error))
    finally:
        report["seconds"] = round(time.time() - started, 3)
        report["stopped_by_signal"] = stop()
        report["error"] = error and mask_text(error)
        write_report(report_path, report)
        backends.close()
        stop.restore()
    if error:
        fail(f"backfill failed: {error}", 1)
    rejected = int(report.get("rejected") or 0)
    where = f": see {rejects_path}" if rejected and not (dry_run and report.get("rejects_file") is None) else ""
    verdict = f"; {rejected} row(s) rejected{where}" if rejected else ""
    if report.get("stopped_by_max_rejects"):
        click.echo(f"backfill: stopped, more than --max-rejects {max_rejects} row(s) rejected{verdict}")
    elif dry_run:
        click.echo(f"backfill: dry run, nothing written{verdict.replace('rejected', 'would be rejected')}")
    else:
        click.echo(("backfill: stopped" if stop() else "backfill: done") + verdict)
    sys.exit(1 if rejected else 0)


GATE_EXPORT_S = 5.0


def _gate_export(backends: Backends, tables: Tables) -> list[tuple[float, Any]]:
    """While a worker serves /metrics it exports the cutover gate (every condition, the next flip's verdict,
    the phase) every GATE_EXPORT_S: the dashboards' gate panels need a process that Prometheus scrapes."""
    from dualwrite.cutover import gate

    def export_gate() -> None:
        gate.export(backends, tables)

    return [(GATE_EXPORT_S, export_gate)]


def _dry_run(
    backends: Backends,
    tables: list[Any],
    chunk_size: int,
    fast: bool,
    rejects: str | None,
    stop: StopFlag,
    tty: bool,
    group: str | None,
    max_rejects: int | None = None,
) -> dict[str, Any]:
    from dualwrite.backfill.dryrun import describe, dry_run
    from dualwrite.backfill.progress import print_summary

    reps = dry_run(backends, tables, chunk_size, fast, rejects, stop, max_rejects=max_rejects)
    for line in describe(reps, chunk_size):
        click.echo(line)
    summary = [r.summary() for r in reps]
    print_summary(summary, tty, title="backfill dry run (nothing written)")
    from dualwrite.redis_keys import stream_key

    backlog = backends.redis.xlen(stream_key(backends.settings.namespace))
    if group:
        click.echo(f"would then replay the stream ({backlog} event(s) in it now) as group {group!r}")
    rejected = sum(r.rejected for r in reps)
    over = max_rejects is not None and rejected > max_rejects
    return {
        "summary": summary,
        "tables": [r.__dict__ for r in reps],
        "stream_events": backlog,
        "rejected": rejected,
        "rejects_file": rejects if rejected else None,
        "stopped_by_max_rejects": over,
    }


backfill.add_command(status)
backfill.add_command(deadletters)


@backfill.command()
@connection_options
@click.option("--yes", is_flag=True, help="do not ask (required when not on a terminal)")
@click.option("--table", "table_names", multiple=True, help="only this table (repeatable)")
@click.option("--tables", "table_lists", multiple=True, help="only these tables: a,b")
@click.option("--keep-rows", is_flag=True, help="only clear the progress; leave the copied rows on Postgres")
def reset(
    settings: Settings, yes: bool, table_names: tuple[str, ...], table_lists: tuple[str, ...], keep_rows: bool
) -> None:
    """Roll a load back: delete the rows the backfill wrote to Postgres and clear its checkpoints.

    A row counts as the backfill's while its version is a copied chunk's: rows a live write changed since
    are kept. The one row per chunk whose live event has exactly the chunk's version cannot be told apart
    and goes too (SQLite holds the same image; the next copy brings it back). Deleting rows is refused
    from phase postgres_reads on (Postgres serves reads) and while a backfill worker runs."""
    from dualwrite.backfill import checkpoint as ckpt
    from dualwrite.backfill.reset import (
        ROWS_LOCKED_PHASES,
        count_candidates,
        delete_backfill_rows,
        tables_with_progress,
    )
    from dualwrite.backfill.throttle import live_workers
    from dualwrite.engines import open_redis, pg_engine

    client = open_redis(settings.redis_url)
    pg = pg_engine(settings, pool_size=1)
    try:
        # a SIGKILLed worker's Postgres session is gone at once: it does not block the reset until its
        # heartbeat expires
        workers = [str(w.get("worker")) for w in live_workers(client, settings.namespace, pg)]
        if workers:
            fail(f"backfill worker(s) running: {', '.join(workers)}; stop them first", 1)
        backends = open_backends(settings)  # the phase of record, not only Redis' copy (it may be empty)
        try:
            phase = backends.phases.current(fresh=True).name
        finally:
            backends.close()
        if not keep_rows and phase in ROWS_LOCKED_PHASES:
            fail(f"phase is {phase}: Postgres serves reads, its rows stay (roll the phase back, or --keep-rows)", 1)
        known = tables_with_progress(pg)
        asked = csv(table_names + table_lists)
        unknown = [t for t in asked if t not in known]
        if unknown:  # a typo, another --state-schema, or nothing copied yet: never a silent no-op
            raise ConfigError(
                f"--tables: no backfill progress for {', '.join(map(repr, unknown))} in state schema "
                f"{settings.state_schema!r} (tables with progress: {', '.join(known) or 'none'})"
            )
        chosen = asked or known
        if not chosen:
            click.echo(f"nothing to reset: no backfill progress in state schema {settings.state_schema!r}")
            return
        rows = 0 if keep_rows else sum(count_candidates(pg, t) for t in chosen)
        what = "clear the backfill progress" + ("" if keep_rows else f" and delete up to {rows} row(s) it wrote")
        confirm_destructive("reset", f"{what} on Postgres ({', '.join(chosen) or 'no table'})", yes)
        deleted = kept = 0
        if not keep_rows:
            apply_pg = pg_engine(settings, pool_size=1, replica=True)
            try:
                for name in chosen:
                    done = delete_backfill_rows(apply_pg, name)
                    deleted, kept = deleted + done.deleted, kept + done.kept
                    click.echo(f"{name}: deleted {done.deleted} row(s)")
            finally:
                apply_pg.dispose()
        n = ckpt.reset(pg, chosen or None)
    finally:
        pg.dispose()
    tail = "" if keep_rows else f"; deleted {deleted} row(s) the backfill wrote ({kept} tombstone(s) kept)"
    click.echo(f"reset {n} checkpoint(s){tail}")


@backfill.command("set")
@connection_options(sqlite="unused")
@click.option("--max-rows-per-second", type=RATE, help="rate limit of the copy (0: none)")
@click.option("--chunk-size", type=Count(0, 10_000_000), help="rows per chunk (0: the worker's own)")
@click.option("--max-pg-latency-ms", type=MILLIS, help="back off above this probe latency")
@click.option("--max-replication-lag-s", type=SECONDS, help="back off above this replica lag")
@click.option("--pause/--resume", "paused", default=None, help="hold every worker's copy / let it go on")
@click.option("--clear", is_flag=True, help="drop every live setting (workers use their own flags again)")
def set_cmd(settings: Settings, clear: bool, **limits: Any) -> None:
    """Change the running workers' limits (they pick them up between chunks, within a second)."""
    from dualwrite.backfill.throttle import clear_limits, set_limits
    from dualwrite.engines import open_redis

    client = open_redis(settings.redis_url)
    if clear:
        clear_limits(client, settings.namespace)
    now = set_limits(client, settings.namespace, **limits)
    click.echo("live limits: " + (" ".join(f"{k}={v}" for k, v in sorted(now.items())) or "none"))

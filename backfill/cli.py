"""`dualwrite backfill ...`: run (copy then replay), status, reset, deadletters list|redrive."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

import click

from dualwrite.cli import connection_options, fail, write_report
from dualwrite.settings import Settings, mask_text

log = logging.getLogger("backfill.cli")


def _metadata(spec: str | None) -> Any:
    """The tables to copy: `module:attribute` naming a MetaData, or the default registry's."""
    if spec:
        import importlib

        module, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), attr or "metadata")
        except (ImportError, AttributeError) as exc:
            fail(f"cannot load metadata {spec!r}: {exc}")
    try:
        from dualwrite.registry import default_registry
    except ImportError as exc:
        fail(f"no table registry available (use --metadata module:attr): {exc}")
    return default_registry().metadata


def _writer(settings: Settings, spec: str | None) -> Any:
    from dualwrite.adapter import DualWriter, TableCatalog

    catalog = TableCatalog()
    for table in _metadata(spec).sorted_tables:
        catalog.add(table)
    return DualWriter(settings, catalog=catalog)


def _tables(spec: str | None, names: tuple[str, ...] = ()) -> list[Any]:
    tables = list(_metadata(spec).sorted_tables)  # parents first
    if names:
        known = {t.name for t in tables}
        missing = [n for n in names if n not in known]
        if missing:
            fail(f"unknown table(s): {', '.join(missing)}")
        tables = [t for t in tables if t.name in names]
    return tables


metadata_option = click.option("--metadata", "metadata_spec", default=None, help="module:attr of a MetaData")


class StopFlag:
    """SIGTERM/SIGINT: finish the current chunk or batch, then exit 0."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            if self.event.is_set():  # a second signal: stop now
                raise SystemExit(130)
            log.info("signal %d: finishing the current batch", signum)
            self.event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def __call__(self) -> bool:
        return self.event.is_set()


@click.group("backfill")
def backfill() -> None:
    """Copy existing rows to Postgres and replay the change stream."""


@backfill.command()
@connection_options
@metadata_option
@click.option("--table", "tables", multiple=True, help="only these tables (default: all, parents first)")
@click.option("--chunk-size", default=5000, show_default=True)
@click.option("--max-rows-per-second", type=float, default=None, help="token-bucket throttle of the copy")
@click.option("--rejects", "rejects_path", default="backfill-rejects.jsonl", show_default=True)
@click.option("--slow", is_flag=True, help="apply chunks with INSERT instead of COPY")
@click.option("--once", is_flag=True, help="stop when the replay has caught up")
@click.option("--no-replay", is_flag=True, help="copy only")
@click.option("--group", default="backfill", show_default=True, help="consumer group")
@click.option("--consumer", default=None, help="consumer name (default host-pid)")
@click.option("--report", "report_path", default=None, help="write a JSON report here")
def run(
    settings: Settings,
    metadata_spec: str | None,
    tables: tuple[str, ...],
    chunk_size: int,
    max_rows_per_second: float | None,
    rejects_path: str,
    slow: bool,
    once: bool,
    no_replay: bool,
    group: str,
    consumer: str | None,
    report_path: str | None,
) -> None:
    """Copy every table (resuming from checkpoints), then replay the stream into Postgres."""
    from backfill.copier import Copier
    from backfill.rejects import RejectWriter
    from backfill.replay import Replayer
    from backfill.throttle import TokenBucket

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = StopFlag()
    stop.install()
    dw = _writer(settings, metadata_spec)
    started = time.time()
    report: dict[str, Any] = {"tables": [], "replay": None}
    try:
        copier = Copier(
            dw.sqlite_read,
            dw.postgres_apply,
            chunk_size=chunk_size,
            fast=not slow,
            rejects=RejectWriter(rejects_path),
            throttle=TokenBucket(max_rows_per_second),
            should_stop=stop,
        )
        # Create the group before copying so events written during the copy are kept for us.
        kw = {"group": group} | ({"consumer": consumer} if consumer else {})
        replayer = Replayer(dw, **kw)
        if not no_replay:
            replayer.ensure_group()
        reps = copier.copy_tables(_tables(metadata_spec, tables))
        report["tables"] = [r.as_dict() for r in reps]
        if not no_replay and not stop():
            log.info("copy finished; replaying stream %s as %s/%s", replayer.key, group, replayer.consumer)
            report["replay"] = replayer.run(once=once, should_stop=stop).as_dict()
    finally:
        report["seconds"] = round(time.time() - started, 3)
        report["stopped_by_signal"] = stop()
        write_report(report_path, report)
        dw.close()
        stop.restore()
    click.echo("backfill: stopped" if stop() else "backfill: done")
    sys.exit(0)


@backfill.command()
@connection_options
@metadata_option
@click.option("--report", "report_path", default=None, help="write the status as JSON here")
def status(settings: Settings, metadata_spec: str | None, report_path: str | None) -> None:
    """Per-table rows done/total, rate, ETA and state from the checkpoints; live workers and throttling."""
    import redis

    from backfill.status import render, table_progress, worker_lines
    from dualwrite.db import postgres_engine, sqlite_read_engine

    pg = postgres_engine(settings.postgres_url, settings.pg_schema, pool_size=1)
    sq = sqlite_read_engine(settings.sqlite_url)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        workers, limits, redis_error = worker_lines(client, settings.namespace)
        rows = table_progress(pg, sq, _tables(metadata_spec), workers_alive=bool(workers) or redis_error is not None)
    finally:
        pg.dispose()
        sq.dispose()
    for line in render(rows, workers, limits):
        click.echo(line)
    if redis_error:
        click.echo(mask_text(redis_error))
    write_report(report_path, {"tables": [r.as_dict() for r in rows], "workers": workers, "live_limits": limits})


@backfill.command()
@connection_options
@click.option("--yes", is_flag=True, help="really clear the checkpoints")
@click.option("--table", "tables", multiple=True)
def reset(settings: Settings, yes: bool, tables: tuple[str, ...]) -> None:
    """Clear checkpoints (the next run copies again; the apply rule makes that harmless)."""
    from backfill import checkpoint as ckpt
    from dualwrite.db import postgres_engine

    if not yes:
        fail("refusing to reset without --yes", 1)
    pg = postgres_engine(settings.postgres_url, settings.pg_schema, pool_size=1)
    n = ckpt.reset(pg, list(tables) or None)
    pg.dispose()
    click.echo(f"reset {n} checkpoint(s)")


@backfill.command("set")
@connection_options
@click.option("--max-rows-per-second", type=click.FloatRange(min=0), help="rate limit of the copy (0: none)")
@click.option("--chunk-size", type=click.IntRange(min=0), help="rows per chunk (0: the worker's own)")
@click.option("--max-pg-latency-ms", type=click.FloatRange(min=0), help="back off above this probe latency")
@click.option("--max-replication-lag-s", type=click.FloatRange(min=0), help="back off above this replica lag")
@click.option("--pause/--resume", "paused", default=None, help="hold every worker's copy / let it go on")
@click.option("--clear", is_flag=True, help="drop every live setting (workers use their own flags again)")
def set_cmd(settings: Settings, clear: bool, **limits: Any) -> None:
    """Change the running workers' limits (they pick them up between chunks, within a second)."""
    import redis

    from backfill.control import clear_limits, set_limits

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    if clear:
        clear_limits(client, settings.namespace)
    now = set_limits(client, settings.namespace, **limits)
    click.echo("live limits: " + (" ".join(f"{k}={v}" for k, v in sorted(now.items())) or "none"))


@backfill.group()
def deadletters() -> None:
    """Inspect and re-drive the dead-letter stream."""


@deadletters.command("list")
@connection_options
@click.option("--count", default=100, show_default=True)
def list_cmd(settings: Settings, count: int) -> None:
    import redis

    from backfill.replay import list_dead_letters

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    for row in list_dead_letters(client, settings.namespace, count):
        click.echo(f"{row['dead_id']} id={row.get('id')} reason={row.get('reason')} error={row.get('error', '')[:200]}")


@deadletters.command("redrive")
@connection_options
@metadata_option
@click.argument("ids", nargs=-1)
def redrive_cmd(settings: Settings, metadata_spec: str | None, ids: tuple[str, ...]) -> None:
    """Apply dead letters (all, or the given dead-letter ids) and delete those that succeed."""
    from backfill.replay import redrive

    dw = _writer(settings, metadata_spec)
    try:
        counts = redrive(dw, list(ids) or None)
    finally:
        dw.close()
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


def commands() -> list[click.Command]:
    from backfill.migrate.cli import command as migrate_command

    return [backfill, migrate_command]

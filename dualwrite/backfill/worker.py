"""`dualwrite backfill run`: the copy (shared with other workers through leases, throttled), then the
replay of the change stream — until it has caught up, or with --daemon until SIGTERM/SIGINT.

A stop signal lets the current chunk or replay batch finish (its checkpoint commits with it), then the
worker exits 0. With --metrics-port, /metrics and /health are served (on loopback unless --metrics-host or
DUALWRITE_METRICS_HOST names another address): rows copied/expected
per table (every worker's, from the shared checkpoints, refreshed every PROGRESS_EXPORT_S while the worker
lives: also while it replays), paused, chunk latency, replay lag (events, seconds), pending, dead letters,
throttle state; /health
answers 503 while Postgres or Redis does not. A heartbeat keeps this worker listed in `backfill status`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, text

from dualwrite import metrics
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.leases import LeaseBook
from dualwrite.backfill.progress import CopyProgress, export_shared, print_summary, summary_rows
from dualwrite.backfill.rejects import RejectWriter
from dualwrite.backfill.throttle import WORKER_TTL_S, Limits, Throttler
from dualwrite.errors import ConfigError, first_line
from dualwrite.settings import mask_text
from dualwrite.stream.replay import DEFAULT_GROUP, Replayer

if TYPE_CHECKING:
    from dualwrite.engines import Backends
    from dualwrite.tables import Tables

log = logging.getLogger("dualwrite.backfill.worker")
PROGRESS_EXPORT_S = 5.0


@dataclass
class RunOptions:
    chunk_size: int = 5000
    limits: Limits = field(default_factory=Limits)
    rejects_path: str | None = "backfill-rejects.jsonl"
    fast: bool = True
    replay: bool = True
    daemon: bool = False
    group: str = DEFAULT_GROUP
    consumer: str | None = None
    metrics_port: int | None = None
    metrics_host: str | None = None  # None: DUALWRITE_METRICS_HOST, else loopback
    lease_ttl_s: float = 300.0
    max_rejects: int | None = None  # stop the copy once more rows than this were rejected
    tty: bool = False
    progress_every_s: float = 5.0  # a copy line per table and a replay status line at most this often
    # (every_s, fn): run while the worker lives, in a thread of its own (the CLI adds the gate's export,
    # which this layer cannot import); a failing fn is logged and tried again next time
    periodic: Sequence[tuple[float, Callable[[], object]]] = ()


def health(backends: Backends, throttle: Throttler) -> tuple[bool, str]:
    """/health: both servers answer (what the worker is doing in the body)."""
    problems = []
    try:
        with backends.postgres.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.rollback()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        problems.append(f"postgres: {first_line(exc, 200)}")
    try:
        backends.redis.ping()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"redis: {exc}")
    state = f"{throttle.activity}; throttle: {throttle.reason or 'none'}"
    return (not problems, mask_text("; ".join(problems) + f" ({state})" if problems else f"ok: {state}") + "\n")


def run(
    backends: Backends,
    tables: Tables,
    opts: RunOptions,
    stop: Callable[[], bool],
    *,
    copy: Sequence[Table] | None = None,
) -> dict[str, Any]:
    """Copy `copy` (default: every table of `tables`, in their order), print the summary, then replay the
    events of every table of `tables`. Returns the --report document."""
    copy = tables.tables() if copy is None else list(copy)
    rejects = RejectWriter(opts.rejects_path)

    def too_many() -> bool:
        return opts.max_rejects is not None and rejects.count > opts.max_rejects

    stop = _or(stop, too_many)  # --max-rejects stops the copy as a signal would (after the current chunk)
    name = opts.consumer or f"{socket.gethostname()}-{os.getpid()}"
    report: dict[str, Any] = {"worker": name, "tables": [], "summary": [], "replay": None}
    throttle = Throttler(
        replace(opts.limits, chunk_size=opts.limits.chunk_size or opts.chunk_size),
        client=backends.redis,
        namespace=backends.settings.namespace,
        probe_engine=backends.postgres,
        name=name,
    )
    book = LeaseBook(backends.postgres, ttl_s=opts.lease_ttl_s, name=name)
    throttle.lease_owner = book.owner  # `backfill reset`/`status` see at once when this process is killed
    copier = Copier(
        backends.sqlite_read,
        backends.postgres_apply,
        chunk_size=opts.chunk_size,
        fast=opts.fast,
        rejects=rejects,
        throttle=throttle,
        should_stop=stop,
        leases=book,
    )
    throttle.on_chunk_size = lambda n: setattr(copier, "chunk_size", n)
    throttle.refresh(force=True)  # live limits set before this worker started apply from its first chunk
    replayer = Replayer(backends, tables, group=opts.group, consumer=name, report_every_s=opts.progress_every_s)
    metrics.prime(tables=[t.name for t in copy])
    names = [t.name for t in copy]

    def export_progress() -> None:
        export_shared(backends.postgres, names, backends.redis, backends.settings.namespace)

    try:
        export_progress()  # the first scrape sees every worker's rows, not 0
    except Exception as exc:  # noqa: BLE001 - a metric; the copy reports a server that is away on its own
        log.warning("backfill progress export failed: %s", mask_text(first_line(exc, 200)))
    served = [(PROGRESS_EXPORT_S, export_progress)] if opts.metrics_port is not None else []
    periodic = [*opts.periodic, *served]
    server = None
    if opts.metrics_port is not None:
        try:
            server = metrics.serve(opts.metrics_port, opts.metrics_host, health=lambda: health(backends, throttle))
        except (OSError, ValueError) as exc:
            raise ConfigError(metrics.listen_error(exc)) from None
        log.info("serving /metrics and /health on %s", server.url)
    beat = threading.Event()
    heart = threading.Thread(target=_heartbeat, args=(throttle, book, beat), name="backfill-heartbeat", daemon=True)
    heart.start()
    ticker = threading.Thread(target=_periodic, args=(periodic, beat), name="backfill-periodic", daemon=True)
    if periodic:
        ticker.start()
    try:
        if opts.replay:  # before copying, so the events written during the copy are kept for this group
            replayer.ensure_group()
        reports = []
        with CopyProgress(opts.tty, opts.progress_every_s) as progress:
            book.progress = progress.update
            for table in copy:
                if stop():
                    break
                throttle.activity = f"copying {table.name}"
                throttle.publish()
                progress.begin(table.name, book.status(table.name).rows_copied)
                reports.append(copier.copy_table(table))
        report["tables"] = [r.as_dict() for r in reports]
        report["summary"] = summary_rows(reports)
        report["rejects_file"] = opts.rejects_path if copier.rejects.count else None
        report["rejected"] = copier.rejects.count
        report["stopped_by_max_rejects"] = too_many()
        print_summary(report["summary"], opts.tty)
        if copier.rejects.count:
            log.warning("%d row(s) rejected: see %s", copier.rejects.count, opts.rejects_path)
        if opts.replay and not stop():
            throttle.activity = "replaying" + (" (daemon)" if opts.daemon else " until caught up")
            throttle.publish()
            log.info("copy finished; replaying stream %s as %s/%s", replayer.key, opts.group, name)
            report["replay"] = replayer.run(once=not opts.daemon, should_stop=stop).as_dict()
    finally:
        beat.set()
        heart.join(timeout=5)  # a last heartbeat must not re-list this worker after close()
        if ticker.is_alive():
            ticker.join(timeout=10)  # before the caller closes the backends it uses
        throttle.close()
        book.close()
        if server is not None:
            server.close()
    return report


def _or(first: Callable[[], bool], second: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: first() or second()


def _heartbeat(throttle: Throttler, book: LeaseBook, done: threading.Event) -> None:
    while not done.wait(WORKER_TTL_S / 3):
        throttle.lease_owner = book.owner  # a new one after the book lost its session and took another
        throttle.publish()


def _periodic(tasks: Sequence[tuple[float, Callable[[], object]]], done: threading.Event) -> None:
    due = [0.0] * len(tasks)
    failing: dict[int, str] = {}
    while not done.is_set():
        now = time.monotonic()
        for i, (every_s, fn) in enumerate(tasks):
            if now < due[i]:
                continue
            due[i] = now + every_s
            try:
                fn()
                failing.pop(i, None)
            except Exception as exc:  # noqa: BLE001 - logged once per distinct error; the worker goes on
                line = mask_text(first_line(exc, 300))
                if failing.get(i) != line:
                    log.warning("periodic task %s failed: %s", getattr(fn, "__name__", fn), line)
                    failing[i] = line
        done.wait(max(0.05, min(due) - time.monotonic()))

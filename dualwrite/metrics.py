"""Every metric dualwrite exports, defined once (names from DESIGN-NOTES §5).

Base units, `_total` counters, low-cardinality labels only: never a key, tenant id or URL as a label.
All live in prometheus_client's default registry, which `serve` (or `wsgi_app`/`asgi_app`, mounted in an
application) exposes. Under a pre-forking server (gunicorn with several workers) prometheus-client's
multiprocess mode sums the processes' files; each gauge says how (`multiprocess_mode`): "livemostrecent"
for a value every process observes of shared state (the phase, the outbox backlog: the latest observation
wins), "livemax" for a timestamp or a flag. Outside that mode the argument is ignored.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app

# Fine enough for sub-millisecond SQLite writes, wide enough for a stalled server.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LATEST = "livemostrecent"  # multiprocess: the newest observation of shared state wins (see above)


def _latency(name: str, doc: str, labels: list[str]) -> Histogram:
    """A latency histogram on the shared buckets (the dashboards' quantiles assume the same boundaries)."""
    return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS)


CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _shared_gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
    """A gauge of state every process observes alike (the phase, a backlog, a lag, a limit): in
    multiprocess mode the newest observation wins."""
    return Gauge(name, documentation, labels, multiprocess_mode=LATEST)


PHASE = _shared_gauge("dualwrite_phase", "1 for the current cutover phase, 0 for the others", ["phase"])
PHASE_CHANGED = Gauge(
    "dualwrite_phase_changed_timestamp_seconds",
    "When the cutover last moved into each phase (Unix time): the dashboards' phase-flip annotations",
    ["phase"],
    multiprocess_mode="livemax",
)
WRITE_DURATION = _latency(
    "dualwrite_write_duration_seconds",
    "Write latency per backend (and the adapter's whole write as 'dual')",
    ["backend", "store", "op"],
)
FENCE_PAUSE = Histogram(
    "dualwrite_fence_pause_seconds",
    "How long a write was held by a flip's write fence (one observation per held write, in its process)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0),
)
READ_DURATION = _latency("dualwrite_read_duration_seconds", "Read latency per backend", ["backend", "store", "query"])
SECONDARY_FAILURES = Counter(
    "dualwrite_secondary_failures_total", "Writes whose inline apply to the other backend failed", ["store"]
)
EVENTS_WRITTEN = Counter("dualwrite_events_written_total", "Change events written to an outbox", ["backend"])
EVENTS_PUBLISHED = Counter("dualwrite_events_published_total", "Change events published to the stream")
PUBLISH_FAILURES = Counter("dualwrite_publish_failures_total", "Relay batches that failed to publish")
OUTBOX_BACKLOG = _shared_gauge("dualwrite_outbox_backlog", "Outbox events not yet published to the stream")
RELAY_LAG = _shared_gauge("dualwrite_relay_lag_seconds", "Age of the oldest unpublished outbox event")
STREAM_RESETS = Counter(
    "dualwrite_stream_resets_total", "Times the relay found the stream gone and republished the outbox"
)
STREAM_LENGTH = _shared_gauge("dualwrite_stream_length", "Entries in the change stream (XLEN), after the last trim")
STREAM_RETENTION = _shared_gauge(
    "dualwrite_stream_retention_events",
    "Acknowledged entries the stream keeps below its trim point (the configured window)",
)
STREAM_TRIMMED = Counter(
    "dualwrite_stream_trimmed_total", "Stream entries trimmed once every consumer group had acknowledged them"
)
OUTBOX_ROWS = _shared_gauge(
    "dualwrite_outbox_rows",
    "Rows in an outbox: unpublished ones and published ones kept for the retention window",
    ["backend"],
)
OUTBOX_OLDEST_AGE = _shared_gauge(
    "dualwrite_outbox_oldest_age_seconds",
    "Age of an outbox's oldest row (pruning keeps it near the retention window)",
    ["backend"],
)
OUTBOX_RETENTION = _shared_gauge(
    "dualwrite_outbox_retention_seconds",
    "How long published outbox rows are kept (how far back a lost stream can be rebuilt)",
)
OUTBOX_PRUNED = Counter("dualwrite_outbox_pruned_total", "Published outbox rows deleted past their retention")

SHADOW_COMPARISONS = Counter(
    "dualwrite_shadow_comparisons_total", "Shadow read comparisons by result", ["store", "query", "result"]
)
BACKFILL_ROWS = Counter(
    "dualwrite_backfill_rows_total",
    "Rows copied by the backfill: every worker's, from the shared checkpoints (backfill/progress.export_shared)",
    ["table"],
)
BACKFILL_EXPECTED = _shared_gauge("dualwrite_backfill_rows_expected", "Rows the backfill expects to copy", ["table"])
BACKFILL_CHUNK = Histogram(
    "dualwrite_backfill_chunk_duration_seconds",
    "Duration of one backfill chunk",
    ["table"],
    buckets=CHUNK_BUCKETS,
)
BACKFILL_REJECTS = Counter(
    "dualwrite_backfill_rejected_rows_total", "Rows sent to the reject file (every worker's, as rows_total)", ["table"]
)
BACKFILL_PAUSED = Gauge(
    "dualwrite_backfill_paused",
    "1 while an operator holds the copy (dualwrite backfill set --pause): a pause, not a stall",
    multiprocess_mode="livemax",
)
REPLAY_LAG_EVENTS = _shared_gauge("dualwrite_replay_lag_events", "Stream events not yet applied by the replay group")
REPLAY_LAG_SECONDS = _shared_gauge("dualwrite_replay_lag_seconds", "Age of the oldest stream event not yet applied")
REPLAY_APPLIED = Counter("dualwrite_replay_events_total", "Stream events processed by the replayer", ["result"])
REPLAY_PENDING = _shared_gauge("dualwrite_replay_pending", "Events delivered to a consumer but not yet acknowledged")
DEAD_LETTERS = Counter("dualwrite_dead_letters_total", "Events sent to the dead-letter stream", ["reason"])
THROTTLE_ACTIVE = Gauge(
    "dualwrite_throttle_active", "1 while the backfill is throttled", ["reason"], multiprocess_mode="livemax"
)
BACKFILL_RATE_LIMIT = _shared_gauge(
    "dualwrite_backfill_rate_limit_rows_per_second", "The copy's current rows-per-second limit (0: none)"
)
BACKFILL_CHUNK_ROWS = _shared_gauge("dualwrite_backfill_chunk_rows", "The copy's current chunk size in rows")
BACKFILL_PG_LATENCY = _shared_gauge(
    "dualwrite_backfill_pg_probe_latency_seconds", "Round trip of the throttle's probe query on Postgres"
)
BACKFILL_REPLICATION_LAG = _shared_gauge(
    "dualwrite_backfill_replication_lag_seconds", "Largest replay lag of Postgres' replicas (pg_stat_replication)"
)
GATE_CONDITION = _shared_gauge("dualwrite_gate_condition", "1 if a cutover gate condition holds", ["condition"])
GATE_OPEN = _shared_gauge(
    "dualwrite_gate_open",
    "1 if every gate condition the next phase (target) requires holds; only a process evaluating the gate has it",
    ["target"],
)
SHADOW_CANDIDATE = _latency(
    "dualwrite_shadow_candidate_duration_seconds",
    "Latency of the shadow (candidate) read, off the request path, by the backend it ran on",
    ["backend", "store", "query"],
)

_PHASE_NAMES = ("sqlite", "dual_write", "shadow", "postgres_reads", "postgres_primary", "postgres")
for _p in _PHASE_NAMES:
    PHASE.labels(phase=_p)  # 0, but not "set": a new process never outranks the others' latest phase

# Label values dashboards and alerts look for, exported as 0 from the start: a clean run then shows
# "0 dead letters", not "No data" (which reads as broken), and rate()/increase() see the first one.
DEAD_LETTER_REASONS = ("decode", "apply", "unknown_table", "schema")
THROTTLE_REASONS = ("rate", "paused", "pg_latency", "replication_lag")  # backfill/control.py
SHADOW_RESULTS = ("match", "mismatch", "ignored", "skipped", "error")
for _r in DEAD_LETTER_REASONS:
    DEAD_LETTERS.labels(reason=_r)
for _r in THROTTLE_REASONS:
    THROTTLE_ACTIVE.labels(reason=_r)
for _r in ("applied", "stale", "dead"):
    REPLAY_APPLIED.labels(result=_r)


def prime(*, stores: Iterable[str] = (), tables: Iterable[str] = (), queries: Iterable[tuple[str, str]] = ()) -> None:
    """Export 0 for the per-store, per-table and per-query series a process is about to produce."""
    for store in stores:
        SECONDARY_FAILURES.labels(store=store)
    for table in tables:
        BACKFILL_REJECTS.labels(table=table)
    for store, query in queries:
        for result in SHADOW_RESULTS:
            SHADOW_COMPARISONS.labels(store, query, result)


def follow_total(counter: Counter, label: str, total: float) -> None:
    """Raise a per-table counter to `total`, a count kept in shared state (the checkpoints every worker
    writes): one process's counter then shows everyone's progress and never goes back."""
    child = counter.labels(label)
    now = child._value.get()  # noqa: SLF001 - prometheus-client has no public read of one child
    if total > now:
        child.inc(total - now)


def set_phase(name: str, changed_at: float | None = None) -> None:
    """Export `name` as the current phase (and, if known, the Unix time it was entered)."""
    for p in _PHASE_NAMES:
        PHASE.labels(phase=p).set(1 if p == name else 0)
    if changed_at is not None:
        PHASE_CHANGED.labels(phase=name).set(changed_at)


def follow_phase(phases: Any, name: str) -> None:
    """set_phase for a process that noticed the phase is now `name`, with the time of the change from the
    shared history (`phases`: a PhaseStore; one Redis read, made only when the phase changed and Redis
    answers)."""
    changed_at = None
    if getattr(phases, "redis_ok", False):
        try:
            last = phases.history(1)
            if last and last[-1].get("to") == name:
                changed_at = datetime.fromisoformat(str(last[-1]["at"])).timestamp()
        except Exception:  # noqa: BLE001 - the phase itself is known; only its time is missing
            changed_at = None
    set_phase(name, changed_at)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of a sample in the default registry (0.0 if absent): for status and tests."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class Children:
    """The labelled children of metrics, each looked up once: `metric.labels()` takes a lock on every call,
    which a read path counting every request need not pay. `children(metric, *labels)` is the child."""

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], Any] = {}

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self._known

    def __call__(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._known.get(key)
        if child is None:
            child = self._known[key] = metric.labels(*labels)
        return child


# -- exposition -------------------------------------------------------------------------------------
DEFAULT_PORT = 9464  # the port Prometheus' own list reserves for nothing else; docker-compose.yml scrapes it
HOST_ENV, PORT_ENV, MULTIPROC_ENV = "DUALWRITE_METRICS_HOST", "DUALWRITE_METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR"
Health = Callable[[], tuple[bool, str]]


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when this process runs in that mode (a pre-forking server)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def exposed_registry() -> Any:
    """What /metrics shows: this process' registry, or in multiprocess mode every process' files summed
    (each gauge by the mode it declares above)."""
    if multiprocess_dir() is None:
        return REGISTRY
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def wsgi_app(registry: Any = None) -> Callable[..., Any]:
    """prometheus-client's WSGI app for /metrics (gzip, OpenMetrics by the Accept header): mount it in a
    WSGI application at /metrics (every path it is given serves the metrics)."""
    return make_wsgi_app(registry if registry is not None else exposed_registry())


def asgi_app(registry: Any = None) -> Callable[..., Any]:
    """The same for an ASGI application: `app.mount("/metrics", dualwrite.metrics.asgi_app())`."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry if registry is not None else exposed_registry())


def _ok() -> tuple[bool, str]:
    return True, "ok\n"


def endpoint_app(health: Health | None = None, registry: Any = None) -> Callable[..., Any]:
    """The WSGI app `serve` runs: /metrics (wsgi_app), /health (200, or 503 with why), 404 elsewhere."""
    metrics_app = wsgi_app(registry)
    check = health or _ok

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics" or path.startswith("/metrics/"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/health":
            try:
                ok, why = check()
            except Exception as exc:  # noqa: BLE001 - a failing check is an unhealthy answer, not a 500
                ok, why = False, f"health check failed: {type(exc).__name__}: {exc}\n"
            body, status = why.encode(), "200 OK" if ok else "503 Service Unavailable"
        else:
            body, status = b"dualwrite: /metrics, /health\n", "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in flight never holds the process at exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_args: object) -> None:  # quiet: the daemon logs its own lines
        return


class MetricsServer:
    """A running /metrics + /health endpoint (a daemon thread); `close()` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self.httpd, self.thread = httpd, thread
        self.host, self.port = str(httpd.server_address[0]), int(httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(
    port: int | None = None, host: str | None = None, health: Health | None = None, registry: Any = None
) -> MetricsServer:
    """Serve /metrics and /health in a daemon thread; the one line an application adds:

        dualwrite.metrics.serve(9464)      # host: DUALWRITE_METRICS_HOST, else 127.0.0.1 (loopback)

    port defaults to DUALWRITE_METRICS_PORT, else 9464 (0: any free port). In prometheus-client's
    multiprocess mode (PROMETHEUS_MULTIPROC_DIR set; see dualwrite.prefork) it shows every process' metrics.
    A host or port that cannot be bound raises OSError, a malformed DUALWRITE_METRICS_PORT ValueError, each
    with one line naming it (a CLI turns them into its exit 2: see `listen_error`)."""
    host = (host or os.environ.get(HOST_ENV) or "127.0.0.1").strip()
    if port is None:
        raw = os.environ.get(PORT_ENV) or str(DEFAULT_PORT)
        if not raw.isdigit() or int(raw) > 65535:
            raise ValueError(f"{PORT_ENV}: {raw!r} is not a port number")
        port = int(raw)
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    try:
        httpd = make_server(host, port, endpoint_app(health, registry), server_class, _Quiet)
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise OSError(f"cannot listen on {host}:{port} ({why})") from None
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)


def listen_error(exc: Exception) -> str:
    """The one line for a ConfigError (exit 2) when `serve` could not listen where it was told."""
    return f"--metrics-host/--metrics-port: {exc}"

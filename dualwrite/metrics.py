"""Every metric dualwrite exports, defined once (names from DESIGN-NOTES §5).

Base units, `_total` counters, low-cardinality labels only: never a key, tenant id or URL as a label.
All live in prometheus_client's default registry so `serve_metrics` exposes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Fine enough for sub-millisecond SQLite writes, wide enough for a stalled server.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PHASE = Gauge("dualwrite_phase", "1 for the current cutover phase, 0 for the others", ["phase"])
WRITE_DURATION = Histogram(
    "dualwrite_write_duration_seconds",
    "Write latency per backend (and the adapter's whole write as 'dual')",
    ["backend", "store", "op"],
    buckets=LATENCY_BUCKETS,
)
READ_DURATION = Histogram(
    "dualwrite_read_duration_seconds",
    "Read latency per backend",
    ["backend", "store", "query"],
    buckets=LATENCY_BUCKETS,
)
SECONDARY_FAILURES = Counter(
    "dualwrite_secondary_failures_total", "Writes whose inline apply to the other backend failed", ["store"]
)
EVENTS_WRITTEN = Counter("dualwrite_events_written_total", "Change events written to an outbox", ["backend"])
EVENTS_PUBLISHED = Counter("dualwrite_events_published_total", "Change events published to the stream")
PUBLISH_FAILURES = Counter("dualwrite_publish_failures_total", "Relay batches that failed to publish")
OUTBOX_BACKLOG = Gauge("dualwrite_outbox_backlog", "Outbox events not yet published to the stream")
RELAY_LAG = Gauge("dualwrite_relay_lag_seconds", "Age of the oldest unpublished outbox event")
STREAM_RESETS = Counter(
    "dualwrite_stream_resets_total", "Times the relay found the stream gone and republished the outbox"
)

SHADOW_COMPARISONS = Counter(
    "dualwrite_shadow_comparisons_total", "Shadow read comparisons by result", ["store", "query", "result"]
)
BACKFILL_ROWS = Counter("dualwrite_backfill_rows_total", "Rows copied by the backfill", ["table"])
BACKFILL_EXPECTED = Gauge("dualwrite_backfill_rows_expected", "Rows the backfill expects to copy", ["table"])
BACKFILL_CHUNK = Histogram(
    "dualwrite_backfill_chunk_duration_seconds",
    "Duration of one backfill chunk",
    ["table"],
    buckets=CHUNK_BUCKETS,
)
BACKFILL_REJECTS = Counter("dualwrite_backfill_rejected_rows_total", "Rows sent to the reject file", ["table"])
REPLAY_LAG_EVENTS = Gauge("dualwrite_replay_lag_events", "Stream events not yet applied by the replay group")
REPLAY_LAG_SECONDS = Gauge("dualwrite_replay_lag_seconds", "Age of the oldest stream event not yet applied")
REPLAY_APPLIED = Counter("dualwrite_replay_events_total", "Stream events processed by the replayer", ["result"])
REPLAY_PENDING = Gauge("dualwrite_replay_pending", "Events delivered to a consumer but not yet acknowledged")
DEAD_LETTERS = Counter("dualwrite_dead_letters_total", "Events sent to the dead-letter stream", ["reason"])
THROTTLE_ACTIVE = Gauge("dualwrite_throttle_active", "1 while the backfill is throttled", ["reason"])
BACKFILL_RATE_LIMIT = Gauge(
    "dualwrite_backfill_rate_limit_rows_per_second", "The copy's current rows-per-second limit (0: none)"
)
BACKFILL_CHUNK_ROWS = Gauge("dualwrite_backfill_chunk_rows", "The copy's current chunk size in rows")
BACKFILL_PG_LATENCY = Gauge(
    "dualwrite_backfill_pg_probe_latency_seconds", "Round trip of the throttle's probe query on Postgres"
)
BACKFILL_REPLICATION_LAG = Gauge(
    "dualwrite_backfill_replication_lag_seconds", "Largest replay lag of Postgres' replicas (pg_stat_replication)"
)
GATE_CONDITION = Gauge("dualwrite_gate_condition", "1 if a cutover gate condition holds", ["condition"])

_PHASE_NAMES = ("sqlite", "dual_write", "shadow", "postgres_reads", "postgres_primary", "postgres")
for _p in _PHASE_NAMES:
    PHASE.labels(phase=_p).set(0)

# Label values dashboards and alerts look for, exported as 0 from the start: a clean run then shows
# "0 dead letters", not "No data" (which reads as broken), and rate()/increase() see the first one.
DEAD_LETTER_REASONS = ("decode", "apply", "unknown_table", "schema")
THROTTLE_REASONS = ("rate", "paused", "pg_latency", "replication_lag")  # backfill/control.py
SHADOW_RESULTS = ("match", "mismatch", "ignored", "skipped", "error")
for _r in DEAD_LETTER_REASONS:
    DEAD_LETTERS.labels(reason=_r)
for _r in THROTTLE_REASONS:
    THROTTLE_ACTIVE.labels(reason=_r).set(0)
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


def set_phase(name: str) -> None:
    for p in _PHASE_NAMES:
        PHASE.labels(phase=p).set(1 if p == name else 0)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of a sample in the default registry (0.0 if absent): for status and tests."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class _Handler(BaseHTTPRequestHandler):
    health: Callable[[], tuple[bool, str]] = staticmethod(lambda: (True, "ok"))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/metrics"):
            body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
        elif self.path.startswith("/health"):
            ok, why = type(self).health()
            body, ctype, code = why.encode(), "text/plain", 200 if ok else 503
        else:
            body, ctype, code = b"not found\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:  # quiet: the daemon logs its own lines
        return


def serve_metrics(
    port: int, host: str = "127.0.0.1", health: Callable[[], tuple[bool, str]] | None = None
) -> ThreadingHTTPServer:
    """Serve /metrics and /health on loopback (unless told otherwise) in a daemon thread."""
    handler = type("Handler", (_Handler,), {"health": staticmethod(health or (lambda: (True, "ok")))})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def histogram_quantiles(name: str, by: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, dict[str, float]]:
    """Quantiles (in seconds) of a histogram in the default registry, summed over every label but `by`,
    interpolated within buckets the way Prometheus' histogram_quantile does."""
    buckets: dict[str, dict[float, float]] = {}
    for metric in REGISTRY.collect():
        if metric.name != name:
            continue
        for s in metric.samples:
            if s.name == f"{name}_bucket":
                le = float(s.labels["le"])
                group = buckets.setdefault(s.labels.get(by, ""), {})
                group[le] = group.get(le, 0.0) + s.value
    out: dict[str, dict[str, float]] = {}
    for key, cum in buckets.items():
        bounds = sorted(cum)
        total = cum[bounds[-1]] if bounds else 0.0
        if not total:
            continue
        res: dict[str, float] = {"count": total}
        for q in qs:
            rank, prev_b, prev_c = q * total, 0.0, 0.0
            for b in bounds:
                if cum[b] >= rank:
                    if b == float("inf"):
                        res[f"p{int(q * 100)}"] = prev_b
                    else:
                        frac = (rank - prev_c) / (cum[b] - prev_c) if cum[b] > prev_c else 1.0
                        res[f"p{int(q * 100)}"] = prev_b + (b - prev_b) * frac
                    break
                prev_b, prev_c = b, cum[b]
        out[key] = res
    return out

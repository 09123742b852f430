"""The backfill dashboard: copy progress and ETA per table, chunk latency, throttling, rejects, replay."""

from __future__ import annotations

from typing import Any

from dashboards.panels import (
    bargauge,
    dashboard,
    per,
    q,
    quantile,
    rate,
    row,
    stat,
    timeseries,
)


def backfill() -> dict[str, Any]:
    done, expected = q("dualwrite_backfill_rows_total"), q("dualwrite_backfill_rows_expected")
    rejected = q("dualwrite_backfill_rejected_rows_total")
    # Rows dealt with: copied plus rejected (the rejected counter exists only once a row was refused). Every
    # worker exports every worker's rows (the shared checkpoints): aggregate with max, never sum.
    processed = f"(max by (table) ({done}) + max by (table) ({rejected}) or max by (table) ({done}))"
    rows_rate = rate("dualwrite_backfill_rows_total", window="5m")
    return dashboard(
        "dualwrite-backfill",
        "dualwrite / Backfill & replay",
        [
            row("Backfill"),
            bargauge(
                "Progress per table",
                [(f"{processed} / max by (table) ({expected})", "{{table}}")],
                "percentunit",
                defaults={"max": 1},
                description="(rows copied + rows rejected) / rows expected at the start of the table's copy.",
            ),
            timeseries(
                "Rows copied per second",
                per("max", "table", rate("dualwrite_backfill_rows_total")),
                "ops",
            ),
            timeseries(
                "ETA per table",
                [
                    (
                        f"(max by (table) ({expected}) - {processed}) / max by (table) ({rows_rate})",
                        "{{table}}",
                    )
                ],
                "s",
                description="Rows left (expected - copied - rejected) / copy rate over the last 5 minutes.",
            ),
            timeseries(
                "Chunk latency p50/p99",
                [
                    (quantile(0.5, "dualwrite_backfill_chunk_duration_seconds", "table"), "p50 {{table}}"),
                    (quantile(0.99, "dualwrite_backfill_chunk_duration_seconds", "table"), "p99 {{table}}"),
                ],
                "s",
            ),
            timeseries(
                "Rejected rows",
                per("max", "table", q("dualwrite_backfill_rejected_rows_total")),
                "short",
            ),
            timeseries(
                "Throttle active",
                per("max", "reason", q("dualwrite_throttle_active")),
                "bool",
                defaults={
                    "min": 0,
                    "max": 1,
                    "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter", "fillOpacity": 30},
                },
            ),
            timeseries(
                "Paused by an operator",
                per("max", "instance", q("dualwrite_backfill_paused")),
                "bool",
                defaults={
                    "min": 0,
                    "max": 1,
                    "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter", "fillOpacity": 30},
                },
                description="1 while `dualwrite backfill set --pause` holds the copy: no rows then is a pause, "
                "not a stall (DualwriteBackfillStalled stays quiet; `--resume` lets it go on).",
            ),
            row("Replay"),
            timeseries(
                "Change pipeline: outbox -> stream -> applied",
                [
                    (f"max({q('dualwrite_outbox_backlog')})", "outbox: not yet published"),
                    (f"max({q('dualwrite_replay_lag_events')})", "stream: not yet replayed"),
                    (f"sum({rate('dualwrite_events_published_total')})", "published /s"),
                    (f"sum({rate('dualwrite_replay_events_total')})", "replayed /s"),
                ],
                "short",
                w=24,
                description="Where the changes wait: in the primary's outbox (the application's relay publishes "
                "them) or in the stream (the backfill worker replays them); and how fast each moves.",
            ),
            # one panel per metric (panels.py holds the shape): alike in shape, each its own metric and unit
            timeseries(
                "Replay lag (events)",
                per("max", "instance", q("dualwrite_replay_lag_events")),
                "short",
            ),
            timeseries(
                "Replay lag (seconds)",
                per("max", "instance", q("dualwrite_replay_lag_seconds")),
                "s",
            ),
            timeseries(
                "Pending (delivered, not acknowledged)",
                per("sum", "instance", q("dualwrite_replay_pending")),
                "short",
            ),
            timeseries(
                "Replayed events by result",
                per("sum", "result", rate("dualwrite_replay_events_total")),
                "ops",
            ),
            timeseries(
                "Dead letters by reason",
                per("sum", "reason", q("dualwrite_dead_letters_total")),
                "short",
            ),
            stat(
                "Dead letters (rate)",
                [(f"sum({rate('dualwrite_dead_letters_total')})", "dead letters")],
                "ops",
                w=12,
                h=8,
                thresholds=[("green", None), ("red", 0.0001)],
            ),
        ],
        "Backfill progress, rate, ETA and chunk latency per table; replay lag, pending, dead letters, throttle.",
    )

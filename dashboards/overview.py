"""The overview dashboard: where the cutover stands (phase, gate, the next flip), what the pipeline holds
(outbox, stream, replay, dead letters) and how the shadow comparisons go."""

from __future__ import annotations

from typing import Any

from dashboards.panels import (
    DECIDED,
    DUAL,
    MISMATCH,
    _panel,
    dashboard,
    per,
    q,
    rate,
    row,
    stat,
    timeseries,
)

PHASES = ("sqlite", "dual_write", "shadow", "postgres_reads", "postgres_primary", "postgres")


def overview() -> dict[str, Any]:
    comparisons = "dualwrite_shadow_comparisons_total"
    return dashboard(
        "dualwrite-overview",
        "dualwrite / Overview",
        [
            row("Cutover"),
            stat(
                "Current phase",
                [(f"max by (phase) ({q('dualwrite_phase')}) == 1", "{{phase}}")],
                "none",
                w=6,
                options={
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background",
                    "graphMode": "none",
                    "textMode": "name",
                },
                description="The phase whose dualwrite_phase gauge is 1 (DESIGN-NOTES §1).",
            ),
            stat(
                "Next flip",
                [(f"min by (target) ({q('dualwrite_gate_open')})", "to {{target}}")],
                "bool",
                w=4,
                thresholds=[("orange", None), ("green", 1)],
                defaults={
                    "mappings": [{"type": "value", "options": {"0": {"text": "wait"}, "1": {"text": "gate open"}}}]
                },
                description="1 when every condition the next phase requires holds (`dualwrite cutover check`).",
            ),
            stat(
                "Cutover gate conditions",
                per("min", "condition", q("dualwrite_gate_condition")),
                "bool",
                w=14,
                thresholds=[("red", None), ("green", 1)],
                defaults={"mappings": [{"type": "value", "options": {"0": {"text": "not met"}, "1": {"text": "met"}}}]},
                description="Every gate condition, evaluated every 5 s by the backfill daemon while it serves "
                "/metrics (and by `cutover check`/`flip` where they run): 1 while it holds (min over instances). "
                "writers_live (a DualWriter instance heartbeats) is required only to enter dual_write: 0 later "
                "means no application instance runs now, e.g. stopped for a maintenance window.",
            ),
            _panel(
                "state-timeline",
                "Phase over time",
                per("max", "phase", q("dualwrite_phase")),
                "none",
                24,
                5,
                options={"mergeValues": True, "showValue": "never", "rowHeight": 0.8, "legend": {"showLegend": False}},
                defaults={
                    "color": {"mode": "thresholds"},
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [{"color": "transparent", "value": None}, {"color": "green", "value": 1}],
                    },
                    "mappings": [{"type": "value", "options": {"0": {"text": "-"}, "1": {"text": "current"}}}],
                },
                description="Which phase the scraped processes reported when (each flip is also marked on every "
                "graph of these dashboards).",
            ),
            row("Dual write and shadow reads"),
            timeseries(
                "Secondary-apply failure rate",
                [
                    (
                        f"sum by (store) ({rate('dualwrite_secondary_failures_total')}) / "
                        f"sum by (store) ({rate('dualwrite_write_duration_seconds_count', DUAL)})",
                        "{{store}}",
                    )
                ],
                "percentunit",
                description="Writes whose inline apply to the other backend failed / all writes. "
                "The replayer heals them from the stream.",
            ),
            timeseries(
                "Shadow mismatch rate",
                [
                    (
                        f"sum by (store, query) ({rate(comparisons, MISMATCH)}) / "
                        f"sum by (store, query) ({rate(comparisons, DECIDED)})",
                        "{{store}} {{query}}",
                    )
                ],
                "percentunit",
                description="Mismatches / decided comparisons (ignored, skipped and errors excluded).",
            ),
            timeseries("Shadow comparisons by result", per("sum", "result", rate(comparisons)), "ops"),
            timeseries(
                "Writes and reads per backend",
                [
                    (f"sum by (backend) ({rate('dualwrite_write_duration_seconds_count')})", "write {{backend}}"),
                    (f"sum by (backend) ({rate('dualwrite_read_duration_seconds_count')})", "read {{backend}}"),
                ],
                "ops",
            ),
            row("Outbox, relay and dead letters"),
            # shaped like the gate conditions stat above: one stat per metric, other thresholds
            stat(
                "Dead letters",
                per("sum", "reason", q("dualwrite_dead_letters_total")),
                "short",
                w=6,
                thresholds=[("green", None), ("red", 1)],
                description="Events sent to the dead-letter stream (since process start) — re-drive after a fix.",
            ),
            stat(
                "Outbox backlog",
                [(f"sum({q('dualwrite_outbox_backlog')})", "backlog")],
                "short",
                w=6,
                thresholds=[("green", None), ("orange", 1000), ("red", 10000)],
            ),
            stat(
                "Relay lag",
                [(f"max({q('dualwrite_relay_lag_seconds')})", "lag")],
                "s",
                w=6,
                thresholds=[("green", None), ("orange", 10), ("red", 30)],
            ),
            stat("Publish rate", [(f"sum({rate('dualwrite_events_published_total')})", "published")], "ops", w=6),
            timeseries(
                "Outbox backlog",
                [(f"sum by (instance) ({q('dualwrite_outbox_backlog')})", "backlog {{instance}}")],
                "short",
            ),
            timeseries("Relay lag", per("max", "instance", q("dualwrite_relay_lag_seconds")), "s"),
            timeseries(
                "Dead letters by reason",
                per("sum", "reason", rate("dualwrite_dead_letters_total")),
                "ops",
            ),
            timeseries(
                "Events written vs published",
                [
                    (f"sum by (backend) ({rate('dualwrite_events_written_total')})", "written {{backend}}"),
                    (f"sum({rate('dualwrite_events_published_total')})", "published"),
                ],
                "ops",
            ),
            row("Stream and outbox size (trimming, pruning)"),
            # shaped like backfill.py's change-pipeline panel: other metrics (stream length vs its window)
            timeseries(
                "Stream length vs its retention window",
                [
                    (f"max by (instance) ({q('dualwrite_stream_length')})", "length {{instance}}"),
                    (f"max by (instance) ({q('dualwrite_stream_retention_events')})", "window {{instance}}"),
                ],
                "short",
                w=6,
                description="Trimmed to what every consumer group acknowledged, less the window: a length far "
                "above the window means a group holds the trim point back (`dualwrite status` names it).",
            ),
            timeseries(
                "Stream entries trimmed, outbox rows pruned",
                [
                    (f"sum({rate('dualwrite_stream_trimmed_total')})", "stream trimmed"),
                    (f"sum({rate('dualwrite_outbox_pruned_total')})", "outbox pruned"),
                ],
                "ops",
                w=6,
            ),
            timeseries(
                "Outbox rows by backend",
                per("max", "backend", q("dualwrite_outbox_rows")),
                "short",
                w=6,
                description="Unpublished rows and published ones kept for the retention (to rebuild a lost stream).",
            ),
            timeseries(
                "Outbox oldest row vs retention",
                [
                    (f"max by (backend) ({q('dualwrite_outbox_oldest_age_seconds')})", "oldest {{backend}}"),
                    (f"max({q('dualwrite_outbox_retention_seconds')})", "retention"),
                ],
                "s",
                w=6,
            ),
        ],
        "Cutover phase, gate, dual-write health, shadow reads, outbox/relay, dead letters, stream and outbox size.",
    )

"""Generate the Grafana dashboards from code: `python -m dashboards.build` (or `--check` in CI).

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39), plus `check()`, a small linter that
catches what the JSON schema would not: every metric selector (panels and annotations) filtered by
$job/$instance, known units, unique ids/refIds, panels inside the 24-column grid. Metric names are those
of dualwrite/metrics.py. (grafana-foundation-sdk was considered: its builders would replace these few
helpers with more code, and the linter and the live Prometheus proof would stay, so plain dicts remain.)

Committed output lives in dashboards/grafana/*.json; tests assert it equals what this module generates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "grafana"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job",instance=~"$instance"'
UNITS = {"s", "ops", "percentunit", "short", "none", "bool"}
Panel = dict[str, Any]
DUAL, PG, SQ = 'backend="dual"', 'backend="postgres"', 'backend="sqlite"'
MISMATCH, DECIDED = 'result="mismatch"', 'result=~"match|mismatch"'


def q(metric: str, extra: str = "") -> str:
    """A selector for `metric` filtered by the dashboard's job/instance variables (plus `extra` matchers)."""
    return f"{metric}{{{SEL}{',' + extra if extra else ''}}}"


def rate(metric: str, extra: str = "", window: str = "$__rate_interval") -> str:
    return f"rate({q(metric, extra)}[{window}])"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"], t["range"] = True, False
    return t


def _targets(exprs: Iterable[tuple[str, str]], instant: bool = False) -> list[dict[str, Any]]:
    return [target(e, legend, chr(ord("A") + i), instant) for i, (e, legend) in enumerate(exprs)]


def _panel(kind: str, title: str, exprs: list[tuple[str, str]], unit: str, w: int, h: int, **kw: Any) -> Panel:
    p: Panel = {
        "type": kind,
        "title": title,
        "datasource": DS,
        "targets": _targets(exprs, instant=kw.pop("instant", False)),
        "fieldConfig": {"defaults": {"unit": unit, **kw.pop("defaults", {})}, "overrides": []},
        "options": kw.pop("options", {}),
        "_size": (w, h),
    }
    if "description" in kw:
        p["description"] = kw.pop("description")
    assert not kw, f"unknown panel options {sorted(kw)}"
    return p


def timeseries(title: str, exprs: list[tuple[str, str]], unit: str, w: int = 12, h: int = 8, **kw: Any) -> Panel:
    kw.setdefault(
        "options",
        {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )
    kw.setdefault(
        "defaults", {"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}}
    )
    return _panel("timeseries", title, exprs, unit, w, h, **kw)


def stat(title: str, exprs: list[tuple[str, str]], unit: str, w: int = 6, h: int = 4, **kw: Any) -> Panel:
    thresholds = kw.pop("thresholds", [("green", None)])
    kw.setdefault(
        "options",
        {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
        },
    )
    defaults = kw.pop("defaults", {})
    defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in thresholds]}
    return _panel("stat", title, exprs, unit, w, h, defaults=defaults, **kw)


def bargauge(title: str, exprs: list[tuple[str, str]], unit: str, w: int = 12, h: int = 8, **kw: Any) -> Panel:
    kw.setdefault(
        "options",
        {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
    )
    defaults = kw.pop("defaults", {})
    defaults.setdefault("min", 0)
    return _panel("bargauge", title, exprs, unit, w, h, defaults=defaults, **kw)


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def _layout(panels: list[Panel]) -> list[Panel]:
    """Flow panels left to right into the 24-column grid; assign ids in order."""
    x = y = row_h = 0
    out = []
    for pid, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p = {"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p}
        x, row_h = x + w, max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
        out.append(p)
    return out


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        query_var("job", "label_values(dualwrite_phase, job)"),
        query_var("instance", 'label_values(dualwrite_phase{job=~"$job"}, instance)'),
    ]


def annotations() -> list[dict[str, Any]]:
    """Grafana's own annotations, and a marker at every phase flip on every time series panel: the time
    each process recorded for the phase it moved into (dualwrite_phase_changed_timestamp_seconds, set by
    the flip and by every process that notices it), used as the event's time, in milliseconds."""
    flips = f"max by (phase) ({q('dualwrite_phase_changed_timestamp_seconds')}) * 1000"
    return [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        {
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "orange",
            "name": "Phase flips",
            "expr": flips,
            "step": "30s",
            "titleFormat": "phase -> {{phase}}",
            "textFormat": "the cutover moved to {{phase}}",
            "tagKeys": "phase",
            "useValueForTime": True,
            "target": {"expr": flips, "interval": "30s", "refId": "PhaseFlips"},
        },
    ]


def dashboard(uid: str, title: str, panels: list[Panel], description: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["dualwrite"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": annotations()},
        "links": [{"type": "dashboards", "tags": ["dualwrite"], "asDropdown": True, "title": "dualwrite"}],
        "panels": _layout(panels),
    }


# ----------------------------------------------------------------------------------------------------
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
                [(f"min by (condition) ({q('dualwrite_gate_condition')})", "{{condition}}")],
                "bool",
                w=14,
                thresholds=[("red", None), ("green", 1)],
                defaults={"mappings": [{"type": "value", "options": {"0": {"text": "not met"}, "1": {"text": "met"}}}]},
                description="Every gate condition, evaluated every 5 s by the backfill daemon while it serves "
                "/metrics (and by `cutover check`/`flip` where they run): 1 while it holds (min over instances).",
            ),
            _panel(
                "state-timeline",
                "Phase over time",
                [(f"max by (phase) ({q('dualwrite_phase')})", "{{phase}}")],
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
            timeseries(
                "Shadow comparisons by result", [(f"sum by (result) ({rate(comparisons)})", "{{result}}")], "ops"
            ),
            timeseries(
                "Writes and reads per backend",
                [
                    (f"sum by (backend) ({rate('dualwrite_write_duration_seconds_count')})", "write {{backend}}"),
                    (f"sum by (backend) ({rate('dualwrite_read_duration_seconds_count')})", "read {{backend}}"),
                ],
                "ops",
            ),
            row("Outbox, relay and dead letters"),
            stat(
                "Dead letters",
                [(f"sum by (reason) ({q('dualwrite_dead_letters_total')})", "{{reason}}")],
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
            timeseries("Relay lag", [(f"max by (instance) ({q('dualwrite_relay_lag_seconds')})", "{{instance}}")], "s"),
            timeseries(
                "Dead letters by reason",
                [(f"sum by (reason) ({rate('dualwrite_dead_letters_total')})", "{{reason}}")],
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
        ],
        "Cutover phase, gate, dual-write health, shadow reads, outbox/relay and dead letters.",
    )


def _quantile(quantile: float, metric: str, by: str = "backend", extra: str = "") -> str:
    return f"histogram_quantile({quantile}, sum by (le, {by}) ({rate(metric + '_bucket', extra)}))"


def latency() -> dict[str, Any]:
    panels: list[Panel] = []
    for kind in ("write", "read"):
        metric = f"dualwrite_{kind}_duration_seconds"
        panels.append(row(f"{kind.capitalize()} latency per backend"))
        for qt in (0.5, 0.95, 0.99):
            panels.append(
                timeseries(
                    f"{kind.capitalize()} p{round(qt * 100)} by backend",
                    [(_quantile(qt, metric), "{{backend}}")],
                    "s",
                    w=8,
                )
            )
        by = "store, op" if kind == "write" else "store, query"
        panels.append(
            timeseries(
                f"{kind.capitalize()} p99 by backend, {by}",
                [
                    (
                        _quantile(0.99, metric, f"backend, {by}"),
                        "{{backend}} " + " ".join("{{" + b.strip() + "}}" for b in by.split(",")),
                    )
                ],
                "s",
                w=12,
            )
        )
        panels.append(
            timeseries(
                f"{kind.capitalize()} rate by backend",
                [(f"sum by (backend) ({rate(metric + '_count')})", "{{backend}}")],
                "ops",
                w=12,
            )
        )
    panels += [
        row("Shadow overhead"),
        timeseries(
            "Shadow read overhead (p95 postgres minus sqlite)",
            [
                (
                    f"{_quantile(0.95, 'dualwrite_read_duration_seconds', extra=PG)} - "
                    f"ignoring(backend) {_quantile(0.95, 'dualwrite_read_duration_seconds', extra=SQ)}",
                    "p95 postgres - sqlite",
                )
            ],
            "s",
            description="Extra time a shadowed read spends on the candidate backend at p95.",
        ),
        timeseries(
            "Dual-write overhead (mean, whole write minus primary)",
            [
                (
                    f"sum({rate('dualwrite_write_duration_seconds_sum', DUAL)}) / "
                    f"sum({rate('dualwrite_write_duration_seconds_count', DUAL)}) - "
                    f"sum({rate('dualwrite_write_duration_seconds_sum', SQ)}) / "
                    f"sum({rate('dualwrite_write_duration_seconds_count', SQ)})",
                    "dual - sqlite",
                )
            ],
            "s",
            description="Mean time a write spends beyond its SQLite part (the inline secondary apply).",
        ),
        timeseries(
            "Shadow candidate p50/p95/p99 by backend",
            [
                (_quantile(qt, "dualwrite_shadow_candidate_duration_seconds"), f"p{round(qt * 100)} {{{{backend}}}}")
                for qt in (0.5, 0.95, 0.99)
            ],
            "s",
            description="The compared (candidate) read, run off the request path: Postgres in phase shadow, "
            "SQLite in postgres_reads. What reads will cost once they move.",
        ),
        timeseries(
            "Shadow candidate p99 by store, query",
            [
                (
                    _quantile(0.99, "dualwrite_shadow_candidate_duration_seconds", "backend, store, query"),
                    "{{backend}} {{store}} {{query}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Shadow comparisons per second",
            [(f"sum by (store) ({rate('dualwrite_shadow_comparisons_total')})", "{{store}}")],
            "ops",
        ),
    ]
    return dashboard(
        "dualwrite-latency",
        "dualwrite / Latency",
        panels,
        "Read and write p50/p95/p99 per backend from the histograms; shadow and dual-write overhead.",
    )


def backfill() -> dict[str, Any]:
    done, expected = q("dualwrite_backfill_rows_total"), q("dualwrite_backfill_rows_expected")
    rejected = q("dualwrite_backfill_rejected_rows_total")
    # Rows dealt with: copied plus rejected (the rejected counter exists only once a row was refused).
    processed = f"(sum by (table) ({done}) + sum by (table) ({rejected}) or sum by (table) ({done}))"
    rows_rate = rate("dualwrite_backfill_rows_total", window="5m")
    return dashboard(
        "dualwrite-backfill",
        "dualwrite / Backfill & replay",
        [
            row("Backfill"),
            bargauge(
                "Progress per table",
                [(f"{processed} / sum by (table) ({expected})", "{{table}}")],
                "percentunit",
                defaults={"max": 1},
                description="(rows copied + rows rejected) / rows expected at the start of the table's copy.",
            ),
            timeseries(
                "Rows copied per second",
                [(f"sum by (table) ({rate('dualwrite_backfill_rows_total')})", "{{table}}")],
                "ops",
            ),
            timeseries(
                "ETA per table",
                [
                    (
                        f"(sum by (table) ({expected}) - {processed}) / sum by (table) ({rows_rate})",
                        "{{table}}",
                    )
                ],
                "s",
                description="Rows left (expected - copied - rejected) / copy rate over the last 5 minutes.",
            ),
            timeseries(
                "Chunk latency p50/p99",
                [
                    (_quantile(0.5, "dualwrite_backfill_chunk_duration_seconds", "table"), "p50 {{table}}"),
                    (_quantile(0.99, "dualwrite_backfill_chunk_duration_seconds", "table"), "p99 {{table}}"),
                ],
                "s",
            ),
            timeseries(
                "Rejected rows",
                [(f"sum by (table) ({q('dualwrite_backfill_rejected_rows_total')})", "{{table}}")],
                "short",
            ),
            timeseries(
                "Throttle active",
                [(f"max by (reason) ({q('dualwrite_throttle_active')})", "{{reason}}")],
                "bool",
                defaults={
                    "min": 0,
                    "max": 1,
                    "custom": {"drawStyle": "line", "lineInterpolation": "stepAfter", "fillOpacity": 30},
                },
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
            timeseries(
                "Replay lag (events)",
                [(f"max by (instance) ({q('dualwrite_replay_lag_events')})", "{{instance}}")],
                "short",
            ),
            timeseries(
                "Replay lag (seconds)",
                [(f"max by (instance) ({q('dualwrite_replay_lag_seconds')})", "{{instance}}")],
                "s",
            ),
            timeseries(
                "Pending (delivered, not acknowledged)",
                [(f"sum by (instance) ({q('dualwrite_replay_pending')})", "{{instance}}")],
                "short",
            ),
            timeseries(
                "Replayed events by result",
                [(f"sum by (result) ({rate('dualwrite_replay_events_total')})", "{{result}}")],
                "ops",
            ),
            timeseries(
                "Dead letters by reason",
                [(f"sum by (reason) ({q('dualwrite_dead_letters_total')})", "{{reason}}")],
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


DASHBOARDS = {"overview": overview, "latency": latency, "backfill": backfill}

# ----------------------------------------------------------------------------------------------------
_METRIC = re.compile(r"\b(dualwrite_[a-z_]+)(\{[^}]*\})?")


def check(dash: dict[str, Any]) -> list[str]:
    """Problems with a generated dashboard (empty when fine)."""
    problems: list[str] = []
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("duplicate panel ids")
    names = {v["name"] for v in dash["templating"]["list"]}
    if not {"job", "instance", "datasource"} <= names:
        problems.append("missing job/instance/datasource variables")
    for p in dash["panels"]:
        where = f"{dash['uid']} panel {p['id']} {p['title']!r}"
        g = p["gridPos"]
        if g["x"] + g["w"] > 24 or g["w"] <= 0 or g["h"] <= 0:
            problems.append(f"{where}: outside the grid {g}")
        if p["type"] == "row":
            continue
        unit = p["fieldConfig"]["defaults"].get("unit")
        if unit not in UNITS:
            problems.append(f"{where}: unit {unit!r} not in {sorted(UNITS)}")
        refs = [t["refId"] for t in p["targets"]]
        if not refs or len(refs) != len(set(refs)):
            problems.append(f"{where}: no targets or duplicate refIds")
        for t in p["targets"]:
            problems += _expr_problems(where, t["expr"])
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            where = f"{dash['uid']} annotation {a['name']!r}"
            problems += _expr_problems(where, a["expr"])
            if a.get("target", {}).get("expr") != a["expr"]:
                problems.append(f"{where}: target.expr differs from expr")
    return problems


def _expr_problems(where: str, expr: str) -> list[str]:
    problems = []
    if expr.count("(") != expr.count(")"):
        problems.append(f"{where}: unbalanced parentheses in {expr}")
    found = _METRIC.findall(expr)
    if not found:
        problems.append(f"{where}: no dualwrite metric in {expr}")
    for metric, sel in found:
        if SEL not in sel:
            problems.append(f"{where}: {metric} not filtered by $job/$instance")
    return problems


def render() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {f"{name}.json": json.dumps(fn(), indent=2, sort_keys=True) + "\n" for name, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed JSON differs or lints fail")
    args = ap.parse_args(argv)
    bad = [f"{name}: {p}" for name, fn in DASHBOARDS.items() for p in check(fn())]
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                bad.append(f"{path} is stale: run python -m dashboards.build")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

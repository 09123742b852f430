"""The building blocks every dashboard is made of: queries filtered by $job/$instance, targets, the three
panel kinds, rows, the grid layout, the variables, the phase-flip annotations and the dashboard itself
(plain dicts in Grafana's dashboard JSON model, schemaVersion 39)."""

from __future__ import annotations

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


def per(agg: str, label: str, expr: str) -> list[tuple[str, str]]:
    """One series per value of `label` (`agg by (label) (expr)`), each named by that value."""
    return [(f"{agg} by ({label}) ({expr})", "{{" + label + "}}")]


def quantile(quantile: float, metric: str, by: str = "backend", extra: str = "") -> str:
    """The `quantile` of histogram `metric` per `by` (and le), over the rate interval."""
    return f"histogram_quantile({quantile}, sum by (le, {by}) ({rate(metric + '_bucket', extra)}))"


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

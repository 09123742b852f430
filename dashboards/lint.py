"""`check()`: a small linter for a generated dashboard, catching what the JSON schema would not: every
metric selector (panels and annotations) filtered by $job/$instance, known units, unique ids/refIds,
panels inside the 24-column grid."""

from __future__ import annotations

import re
from typing import Any

from dashboards.panels import SEL, UNITS

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

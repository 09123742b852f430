"""A goal line of the report: the figure of each run as a ratio to its baseline measured in the same run, the
median and spread of those ratios over the runs, and whether the median meets the goal.

Every section builds its goal lines with `goal()`, so report.py prints them all alike: met or not met, the
baseline, the spread, the number of runs (and, for shadow reads, the fraction of reads actually compared)."""

from __future__ import annotations

import statistics
from typing import Any


def goal(
    name: str,
    *,
    section: str,
    target: float,
    higher_is_better: bool,
    baseline: str,
    ratios: list[float | None],
    value: float | None = None,
    baseline_value: float | None = None,
    unit: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One goal line. `ratios`: one per run (None for a run without a figure); `value`/`baseline_value`:
    the medians of the measured figure and of its baseline, in `unit`. Extra keys are kept (e.g. `writers`,
    `compared_fraction`, `note`)."""
    got = [r for r in ratios if r is not None]
    median = round(statistics.median(got), 3) if got else None
    met = median is not None and (median >= target if higher_is_better else median <= target)
    return {
        "name": name,
        "section": section,
        "goal_ratio": target,
        "higher_is_better": higher_is_better,
        "baseline": baseline,
        "ratio": median,
        "ratios": [None if r is None else round(r, 3) for r in ratios],
        "spread": [round(min(got), 3), round(max(got), 3)] if got else None,
        "runs": len(got),
        "value": None if value is None else round(value, 4),
        "baseline_value": None if baseline_value is None else round(baseline_value, 4),
        "unit": unit,
        "met": met,
        **extra,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def spread_text(g: dict[str, Any]) -> str:
    """'median 0.93x (0.90-0.97 over 3 runs)'."""
    if g.get("ratio") is None:
        return "no figure"
    lo, hi = g["spread"]
    return f"median {g['ratio']}x ({lo}-{hi} over {g['runs']} run{'s' if g['runs'] != 1 else ''})"

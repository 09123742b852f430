"""The latency dashboard: write and read percentiles per backend, the shadow candidate's, the fence."""

from __future__ import annotations

from typing import Any

from dashboards.panels import (
    DUAL,
    PG,
    SQ,
    Panel,
    dashboard,
    per,
    quantile,
    rate,
    row,
    timeseries,
)


def latency() -> dict[str, Any]:
    panels: list[Panel] = []
    for kind in ("write", "read"):
        metric = f"dualwrite_{kind}_duration_seconds"
        panels.append(row(f"{kind.capitalize()} latency per backend"))
        for qt in (0.5, 0.95, 0.99):
            panels.append(
                timeseries(
                    f"{kind.capitalize()} p{round(qt * 100)} by backend",
                    [(quantile(qt, metric), "{{backend}}")],
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
                        quantile(0.99, metric, f"backend, {by}"),
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
                per("sum", "backend", rate(metric + "_count")),
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
                    f"{quantile(0.95, 'dualwrite_read_duration_seconds', extra=PG)} - "
                    f"ignoring(backend) {quantile(0.95, 'dualwrite_read_duration_seconds', extra=SQ)}",
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
                (quantile(qt, "dualwrite_shadow_candidate_duration_seconds"), f"p{round(qt * 100)} {{{{backend}}}}")
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
                    quantile(0.99, "dualwrite_shadow_candidate_duration_seconds", "backend, store, query"),
                    "{{backend}} {{store}} {{query}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Shadow comparisons per second",
            per("sum", "store", rate("dualwrite_shadow_comparisons_total")),
            "ops",
        ),
        row("Write fence (flips under live traffic)"),
        timeseries(
            "Fence pause p50/p99 by instance",
            [
                (quantile(qt, "dualwrite_fence_pause_seconds", "instance"), f"p{round(qt * 100)} {{{{instance}}}}")
                for qt in (0.5, 0.99)
            ],
            "s",
            description="How long a flip's write fence held each write (DualwriteFencePauseHigh past 100 ms at "
            "p99); a flip that could not drain in --fence-timeout gives up with the phase unchanged.",
        ),
        timeseries(
            "Writes held by the fence",
            per("sum", "instance", rate("dualwrite_fence_pause_seconds_count")),
            "ops",
        ),
    ]
    return dashboard(
        "dualwrite-latency",
        "dualwrite / Latency",
        panels,
        "Read and write p50/p95/p99 per backend from the histograms; shadow and dual-write overhead; fence pauses.",
    )

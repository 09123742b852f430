"""Section 2: dual-write overhead. p50/p99 of one single-row insert through the adapter in `dual_write`
vs the same insert on SQLite alone and on Postgres alone, with 1 and 5 concurrent writers.

Goal: p99(dual) <= 1.25 x (p99 SQLite + p99 Postgres) with 1 writer, <= 1.5 x with 5. The three variants
run interleaved in rounds so that drift of the shared machine hits them alike."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import insert

import dualwrite.metrics  # noqa: F401 - registers the adapter histograms
from dualwrite.bench.common import STORE, BenchEnv, bench_metadata, bench_tables, ratio, rows, run_workers, summarize
from dualwrite.testing import prepared_writer

GOALS = {1: 1.25, 5: 1.5}
PARTS = {"sqlite": "primary SQLite tx (with outbox)", "postgres": "Postgres apply", "dual": "whole adapter write"}


def _sums() -> dict[str, tuple[float, float]]:
    """Cumulative (sum, count) of the adapter's own write-duration histogram per part, store bench, op insert."""
    name = "dualwrite_write_duration_seconds"
    out = {}
    for backend in PARTS:
        labels = {"backend": backend, "store": STORE, "op": "insert"}
        out[backend] = (
            REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0,
            REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0,
        )
    return out


def _breakdown(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds per dual write spent in each part (from the adapter's metrics)."""
    mean = {}
    for k in PARTS:
        ds, dc = after[k][0] - before[k][0], after[k][1] - before[k][1]
        mean[k] = ds / dc * 1000 if dc else 0.0
    return {
        "primary_sqlite_tx_ms": round(mean["sqlite"], 3),
        "postgres_apply_ms": round(mean["postgres"], 3),
        "after_commit_rest_ms": round(mean["dual"] - mean["sqlite"] - mean["postgres"], 3),
        "total_ms": round(mean["dual"], 3),
    }


ROUNDS = 3


def run(env: BenchEnv, writes: int, writer_counts: tuple[int, ...] = (1, 5), log: Any = print) -> dict[str, Any]:
    md, table = bench_metadata()
    dw = prepared_writer(env.settings("overhead"), bench_tables(table), phase="dual_write")
    out: dict[str, Any] = {"writes_per_variant": writes, "goals": [], "results": []}
    next_id = 1
    try:

        def on(engine: Any) -> Any:
            def op(row: dict[str, Any]) -> None:
                with engine.begin() as conn:
                    conn.execute(insert(table).values(row))

            return op

        variants = {
            "sqlite": on(dw.backends.sqlite),
            "postgres": on(dw.backends.postgres),
            "dual": lambda row: dw.execute(insert(table).values(row)),
        }
        for w in writer_counts:
            lat: dict[str, list[float]] = {k: [] for k in variants}
            att: dict[str, int] = dict.fromkeys(variants, 0)
            per_round = max(w, writes // ROUNDS)
            parts = {k: [0.0, 0.0] for k in PARTS}
            for _ in range(ROUNDS):
                for name, op in variants.items():
                    data = rows(table, per_round, start=next_id)
                    next_id += per_round
                    before = _sums() if name == "dual" else None
                    got, attempts, _wall = run_workers(w, data, op)
                    if before is not None:
                        after = _sums()
                        for k in PARTS:
                            parts[k][0] += after[k][0] - before[k][0]
                            parts[k][1] += after[k][1] - before[k][1]
                    lat[name] += got
                    att[name] += attempts
            summ = {k: summarize(v, att[k]) for k, v in lat.items()}
            for k, s in summ.items():
                s.update(variant=k, writers=w)
                out["results"].append(s)
            bound = summ["sqlite"]["p99_ms"] + summ["postgres"]["p99_ms"]
            r = ratio(summ["dual"]["p99_ms"], bound)
            breakdown = _breakdown({k: (0.0, 0.0) for k in PARTS}, {k: tuple(v) for k, v in parts.items()})
            # the adapter's histograms start after _open_primary (phase lookup, BEGIN IMMEDIATE, primary check)
            breakdown["open_primary_and_caller_ms"] = round(summ["dual"]["avg_ms"] - breakdown["total_ms"], 3)
            out["goals"].append(
                {
                    "name": f"dual-write p99 with {w} writer(s)",
                    "writers": w,
                    "baseline": "p99 SQLite alone + p99 Postgres alone",
                    "baseline_ms": round(bound, 4),
                    "value_ms": summ["dual"]["p99_ms"],
                    "ratio": r,
                    "goal_ratio": GOALS.get(w, 1.5),
                    "met": r is not None and r <= GOALS.get(w, 1.5),
                    "label": f"{w} writer(s)",
                    "breakdown": breakdown,
                    "p50_ratio": ratio(
                        summ["dual"]["median_ms"], summ["sqlite"]["median_ms"] + summ["postgres"]["median_ms"]
                    ),
                }
            )
            log(f"  overhead writers={w}: dual p99 {summ['dual']['p99_ms']:.2f} ms vs bound {bound:.2f} ms")
    finally:
        dw.close()
    return out

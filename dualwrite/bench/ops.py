"""Section 1: insert / read / update of one record at a time, on SQLite alone, Postgres alone and through the
adapter in every phase, at several record counts and worker counts. Baseline: SQLite alone (same op, count,
workers)."""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import insert, select, update

from dualwrite.bench.common import STORE, BenchEnv, bench_metadata, bench_tables, ratio, rows, run_workers, summarize
from dualwrite.phase import PHASES
from dualwrite.testing import prepared_writer

OPS = ("insert", "read", "update")
BASELINE = "sqlite"
# The Track C plan's target: every store operation's p99 under 100 ms (an absolute line, beside the ratios).
TARGET_P99_MS = 100.0


def _targets() -> list[str]:
    return ["sqlite", "postgres"] + [f"adapter:{p.name}" for p in PHASES]


def _ops_for(target: str, dw: Any, table: Any) -> dict[str, Any]:
    pk = table.c.id

    if target in ("sqlite", "postgres"):
        engine = dw.backends.sqlite if target == "sqlite" else dw.backends.postgres
        read_engine = dw.backends.sqlite_read if target == "sqlite" else dw.backends.postgres

        def ins(row: dict[str, Any]) -> None:
            with engine.begin() as conn:
                conn.execute(insert(table).values(row))

        def read(key: int) -> None:
            with read_engine.connect() as conn:
                if conn.execute(select(table).where(pk == key)).first() is None:
                    raise LookupError(key)
                conn.rollback()

        def upd(key: int) -> None:
            with engine.begin() as conn:
                conn.execute(update(table).where(pk == key).values(score=random.random()))

    else:

        def ins(row: dict[str, Any]) -> None:
            dw.execute(insert(table).values(row))

        def read(key: int) -> None:
            if dw.read(STORE, "get", lambda conn: conn.execute(select(table).where(pk == key)).first()) is None:
                raise LookupError(key)

        def upd(key: int) -> None:
            dw.execute(update(table).where(pk == key).values(score=random.random()))

    return {"insert": ins, "read": read, "update": upd}


def run(env: BenchEnv, counts: list[int], workers: list[int], log: Any = print) -> dict[str, Any]:
    md, table = bench_metadata()
    results: list[dict[str, Any]] = []
    for target in _targets():
        phase = target.split(":", 1)[1] if target.startswith("adapter:") else target
        label = "ops_" + target.replace("adapter:", "adapter_")  # a fresh file, schema and namespace per target
        dw = prepared_writer(env.settings(label), bench_tables(table), phase=phase, relay=False)
        reader = None
        if target.startswith("adapter:") and dw.phases.current().shadow:
            from dualwrite.shadow.reader import ShadowReader

            reader = ShadowReader(percentage=100).install(dw)
        ops = _ops_for(target, dw, table)
        next_id = 1
        try:
            for n in counts:
                for w in workers:
                    data = rows(table, n, start=next_id)
                    keys = [r["id"] for r in data]
                    next_id += n
                    for op in OPS:
                        items = data if op == "insert" else keys
                        lat, attempts, wall = run_workers(w, items, ops[op])
                        s = summarize(lat, attempts)
                        s.update(target=target, op=op, records=n, workers=w, wall_s=round(wall, 4))
                        results.append(s)
                    log(f"  ops {target:26} n={n:<5} w={w} done")
        finally:
            if reader is not None:
                reader.wait_idle(30)
                reader.close()
            dw.close()
    base = {(r["op"], r["records"], r["workers"]): r for r in results if r["target"] == BASELINE}
    for r in results:
        b = base.get((r["op"], r["records"], r["workers"]))
        r["baseline"] = BASELINE
        ok = b is not None and r["n"] > 0 and b["n"] > 0  # no ratio of a run where every op failed
        r["ratio_median"] = ratio(r["median_ms"], b["median_ms"]) if ok else None
        r["ratio_p99"] = ratio(r["p99_ms"], b["p99_ms"]) if ok else None
    return {
        "baseline": BASELINE,
        "results": results,
        "counts": counts,
        "workers": workers,
        "target_p99": target_p99(results),
    }


def target_p99(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The p99 < 100 ms target: how many runs met it, and the worst one (a failed op never meets it)."""
    runs = [r for r in results if r["n"] > 0]
    worst = max(runs, key=lambda r: r["p99_ms"], default=None)
    missed = [r for r in results if r["n"] == 0 or r["p99_ms"] >= TARGET_P99_MS or r["success_rate"] < 1]
    return {
        "goal_ms": TARGET_P99_MS,
        "runs": len(results),
        "met": len(results) - len(missed),
        "all_met": not missed,
        "worst": None if worst is None else {k: worst[k] for k in ("target", "op", "records", "workers", "p99_ms")},
    }

"""Section 3: shadow-read overhead. App-visible read p99 in phase `shadow` with 100 % sampling (ShadowReader
installed, comparisons off the request path) vs reads in phase `sqlite` (no reader). Goal: <= 1.05 x.
Blocks of the two modes alternate so that machine drift hits both alike."""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import insert, select

from dualwrite.bench.common import STORE, BenchEnv, bench_metadata, bench_tables, ratio, rows, run_workers, summarize
from dualwrite.testing import prepared_writer

GOAL = 1.05
BLOCKS = 6


def run(env: BenchEnv, reads: int, records: int, log: Any = print) -> dict[str, Any]:
    try:
        from dualwrite.shadow.reader import ShadowReader
    except ImportError as exc:
        return {"skipped": f"shadow.reader not importable: {exc}"}
    md, table = bench_metadata()
    dw = prepared_writer(env.settings("shadow"), bench_tables(table), phase="dual_write")
    reader = ShadowReader(percentage=100)
    try:
        data = rows(table, records)
        for engine in (dw.backends.sqlite, dw.backends.postgres):
            with engine.begin() as conn:
                conn.execute(insert(table), data)
        rng = random.Random(3)
        pk = table.c.id

        def op(key: int) -> None:
            dw.read(STORE, "get_row", lambda conn: conn.execute(select(table).where(pk == key)).first())

        lat: dict[str, list[float]] = {"sqlite": [], "shadow": []}
        att = {"sqlite": 0, "shadow": 0}
        per_block = max(1, reads // BLOCKS)
        for _ in range(BLOCKS):
            for mode in ("sqlite", "shadow"):
                dw.phases.set(mode, force=True, reason="bench")
                dw.reader = reader if mode == "shadow" else None
                keys = [rng.randint(1, records) for _ in range(per_block)]
                got, attempts, _ = run_workers(1, keys, op)
                lat[mode] += got
                att[mode] += attempts
                reader.wait_idle(30)
        summ = {k: summarize(v, att[k]) for k, v in lat.items()}
        r = ratio(summ["shadow"]["p99_ms"], summ["sqlite"]["p99_ms"])
        log(f"  shadow: p99 {summ['shadow']['p99_ms']:.3f} ms vs sqlite {summ['sqlite']['p99_ms']:.3f} ms")
        return {
            "reads_per_mode": reads,
            "records": records,
            "comparisons": dict(reader.stats),
            "results": [dict(s, mode=k) for k, s in summ.items()],
            "goals": [
                {
                    "name": "shadow read p99 at 100 % sampling",
                    "baseline": "p99 of reads in phase sqlite",
                    "baseline_ms": summ["sqlite"]["p99_ms"],
                    "value_ms": summ["shadow"]["p99_ms"],
                    "ratio": r,
                    "goal_ratio": GOAL,
                    "met": r is not None and r <= GOAL,
                    "label": "shadow/sqlite p99",
                    "p50_ratio": ratio(summ["shadow"]["median_ms"], summ["sqlite"]["median_ms"]),
                }
            ],
        }
    finally:
        dw.reader = None
        reader.close()
        dw.close()

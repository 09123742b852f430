"""Section 6: verification speed (shadow.verify) on two equal copies of a table, vs the baseline of two
`count(*)` queries (the cheapest check there is); then the time to locate one row that differs by one
character on Postgres (the checksum pass plus the bisection to that row). Goal (issue 8): within 10 x."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, insert, select, update

from dualwrite.bench.common import BenchEnv, bench_metadata, bench_tables, ratio, rows

GOAL = 10.0


def run(env: BenchEnv, records: int, log: Any = print) -> dict[str, Any]:
    from dualwrite.testing import prepared_writer
    from dualwrite.verify.verifier import verify_tables

    md, table = bench_metadata()
    dw = prepared_writer(env.settings("verify"), bench_tables(table), phase="dual_write")
    try:
        for i in range(0, records, 10_000):
            data = rows(table, min(10_000, records - i), start=i + 1)
            for engine in (dw.backends.sqlite, dw.backends.postgres):
                with engine.begin() as conn:
                    conn.execute(insert(table), data)
        # The baseline is the faster of two runs: the first count after a bulk load also sets hint bits.
        count_s, counts = float("inf"), []
        for _ in range(2):
            t0 = time.perf_counter()
            counts = []
            for engine in (dw.backends.sqlite_read, dw.backends.postgres):
                with engine.connect() as conn:
                    counts.append(conn.execute(select(func.count()).select_from(table)).scalar())
            count_s = min(count_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = verify_tables([table], dw.backends.sqlite_read, dw.backends.postgres)
        verify_s = time.perf_counter() - t0
        t = report.tables[0]
        log(f"  verify: {verify_s:.3f}s vs two count(*) {count_s:.4f}s (clean={report.clean})")
        key = records // 2 + 1
        with dw.backends.postgres.begin() as conn:  # one character of one row
            conn.execute(update(table).where(table.c.id == key).values(title=func.overlay(table.c.title, "X", 1, 1)))
        t0 = time.perf_counter()
        found = verify_tables([table], dw.backends.sqlite_read, dw.backends.postgres).tables[0]
        locate_s = time.perf_counter() - t0
        located = found.differing == [f"[{key}]"] and not found.missing and not found.extra
        log(f"  locate one differing row: {locate_s:.3f}s (found={located})")
        r = ratio(verify_s, count_s)
        return {
            "records": records,
            "baseline": "two count(*)",
            "clean": report.clean,
            "error": t.error or found.error,
            "queries": t.queries,
            "located": located,
            "results": [
                {"method": "two count(*)", "seconds": round(count_s, 4), "counts": counts},
                {
                    "method": "locate one differing row",
                    "seconds": round(locate_s, 4),
                    "rows_per_s": round(records / locate_s, 1) if locate_s else None,
                    "ratio": ratio(locate_s, count_s),
                    "queries": found.queries,
                },
                {
                    "method": "shadow verify",
                    "seconds": round(verify_s, 4),
                    "rows_per_s": round(records / verify_s, 1) if verify_s else None,
                    "ratio": r,
                },
            ],
            "goals": [
                {
                    "name": f"verify of {records} identical rows",
                    "baseline": "two count(*)",
                    "baseline_ms": count_s * 1000,
                    "value_ms": verify_s * 1000,
                    "ratio": r,
                    "goal_ratio": GOAL,
                    "met": r is not None and r <= GOAL and report.clean,
                    "label": "verify/count",
                    "locate_ratio": ratio(locate_s, count_s),
                }
            ],
        }
    finally:
        dw.close()

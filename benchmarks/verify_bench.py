"""Section 6: verification speed (shadow.verify) on two equal copies of a table, vs the baseline of two
`count(*)` queries (the cheapest check there is)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, insert, select

from benchmarks.common import BenchEnv, bench_catalog, bench_metadata, ratio, rows


def run(env: BenchEnv, records: int, log: Any = print) -> dict[str, Any]:
    try:
        from shadow.verify import verify_tables
    except ImportError as exc:
        return {"skipped": f"shadow.verify not importable: {exc}"}
    from dualwrite.testing import prepared_writer

    md, table = bench_metadata()
    dw = prepared_writer(env.settings("verify"), metadata=md, catalog=bench_catalog(table), phase="dual_write")
    try:
        for i in range(0, records, 10_000):
            data = rows(table, min(10_000, records - i), start=i + 1)
            for engine in (dw.sqlite, dw.postgres):
                with engine.begin() as conn:
                    conn.execute(insert(table), data)
        t0 = time.perf_counter()
        counts = []
        for engine in (dw.sqlite_read, dw.postgres):
            with engine.connect() as conn:
                counts.append(conn.execute(select(func.count()).select_from(table)).scalar())
        count_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = verify_tables([table], dw.sqlite_read, dw.postgres)
        verify_s = time.perf_counter() - t0
        t = report.tables[0]
        log(f"  verify: {verify_s:.3f}s vs two count(*) {count_s:.4f}s (clean={report.clean})")
        return {
            "records": records,
            "baseline": "two count(*)",
            "clean": report.clean,
            "error": t.error,
            "queries": t.queries,
            "results": [
                {"method": "two count(*)", "seconds": round(count_s, 4), "counts": counts},
                {
                    "method": "shadow verify",
                    "seconds": round(verify_s, 4),
                    "rows_per_s": round(records / verify_s, 1) if verify_s else None,
                    "ratio": ratio(verify_s, count_s),
                },
            ],
        }
    finally:
        dw.close()

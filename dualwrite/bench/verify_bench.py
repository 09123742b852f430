"""Section 6: verification speed on two equal copies of a table (issue 18, goal 6).

- full verify vs the read-once floor: every row read once from each side, both sides at the same time
  (SQLite's cursor and a Postgres server-side cursor in two threads, rows discarded): what any verify
  that looks at every value must at least pay. Goal: <= 1.5 x. Two `count(*)` are shown for scale.
- locating one row that differs by one character on Postgres (the checksum pass plus the bisection).
- incremental re-verify after 1 % of the rows changed through dualwrite, vs a full verify of the same
  state in the same round. Goal: <= 0.1 x.
Each figure is the median of ROUNDS rounds, with the spread of the per-round ratios.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from dualwrite.bench.common import BenchEnv, bench_metadata, bench_tables, ratio, rows
from dualwrite.bench.goals import goal, median

FULL_GOAL, INCREMENTAL_GOAL, CHANGED = 1.5, 0.1, 0.01
ROUNDS = 3
LOAD_BATCH = 50_000


def _load(dw: Any, table: Any, records: int) -> None:
    """SQLite through SQLAlchemy (the application's own value formats: a verify of rows another program wrote
    in other text formats pays for a bisection to every row), Postgres by COPY; both bypass capture."""
    cols = [c.name for c in table.columns]
    praw = dw.backends.postgres.raw_connection()
    try:
        with dw.backends.sqlite.begin() as conn:
            for i in range(0, records, LOAD_BATCH):
                data = rows(table, min(LOAD_BATCH, records - i), start=i + 1)
                conn.execute(insert(table), data)
                buf = io.StringIO()
                for r in data:
                    buf.write("\t".join("\\N" if r[c] is None else _copy_text(r[c]) for c in cols) + "\n")
                buf.seek(0)
                praw.cursor().copy_expert(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN", buf)
        praw.commit()
    finally:
        praw.close()


def _copy_text(v: Any) -> str:
    if isinstance(v, bool):
        return "t" if v else "f"
    return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _read_all(engine: Engine, table: Any) -> int:
    n = 0
    with engine.connect() as conn:
        for part in conn.execution_options(stream_results=True, yield_per=10_000).execute(select(table)).partitions():
            n += len(part)
        conn.rollback()
    return n


def _read_once(sqlite: Engine, postgres: Engine, table: Any) -> float:
    """Both sides read every row once, at the same time; the wall time of the slower one."""
    counts: list[int] = []
    threads = [threading.Thread(target=lambda e=e: counts.append(_read_all(e, table))) for e in (sqlite, postgres)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(env: BenchEnv, records: int, log: Any = print) -> dict[str, Any]:
    from dualwrite.testing import prepared_writer
    from dualwrite.verify.verifier import verify_backends, verify_tables

    _md, table = bench_metadata()
    dw = prepared_writer(env.settings("verify"), bench_tables(table), phase="dual_write")
    sqlite, postgres = dw.backends.sqlite_read, dw.backends.postgres
    try:
        _load(dw, table, records)
        with dw.backends.postgres.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {table.name}")
        _read_once(sqlite, postgres, table)  # warm both caches (and Postgres' hint bits) before any timing
        count_s = min(_timed(lambda: [_count(e, table) for e in (sqlite, postgres)])[0] for _ in range(2))
        per_run: list[dict[str, Any]] = []
        clean, located = True, True
        step = max(1, int(1 / CHANGED))
        for rnd in range(ROUNDS):
            floor_s = _read_once(sqlite, postgres, table)
            full_s, report = _timed(lambda: verify_backends(dw.backends, [table]))
            clean = clean and report.clean
            # 1 % of the rows change through dualwrite (both sides, an outbox event each)
            ids = list(range(1 + rnd, records + 1, step))
            for i in range(0, len(ids), 1000):
                dw.execute(update(table).where(table.c.id.in_(ids[i : i + 1000])).values(score=table.c.score + 1))
            inc_s, inc = _timed(lambda: verify_backends(dw.backends, [table], incremental_from_last=True))
            full_after_s, after = _timed(lambda: verify_tables([table], sqlite, postgres))
            clean = clean and inc.clean and after.clean and inc.mode == "incremental"
            key = records // 2 + rnd
            with dw.backends.postgres.begin() as conn:  # one character of one row, behind dualwrite's back
                title = func.overlay(table.c.title, "X", 1, 1)
                conn.execute(update(table).where(table.c.id == key).values(title=title))
            locate_s, found = _timed(lambda: verify_tables([table], sqlite, postgres).tables[0])
            located = located and found.differing == [f"[{key}]"]
            with dw.backends.postgres.begin() as conn:  # put it back from SQLite's row
                with sqlite.connect() as sc:
                    orig = sc.execute(select(table.c.title).where(table.c.id == key)).scalar()
                conn.execute(update(table).where(table.c.id == key).values(title=orig))
            per_run.append(
                {
                    "round": rnd + 1,
                    "read_once_s": round(floor_s, 3),
                    "full_s": round(full_s, 3),
                    "incremental_s": round(inc_s, 3),
                    "full_after_change_s": round(full_after_s, 3),
                    "locate_s": round(locate_s, 3),
                    "touched": inc.touched,
                }
            )
            log(f"  verify round {rnd + 1}: {per_run[-1]}")
        if not (clean and located):
            log(f"  verify: NOT CLEAN (clean={clean}, located the planted row={located}): no goal is met")
        med = {k: median([r[k] for r in per_run]) for k in per_run[0] if k.endswith("_s")}
        doc = _doc(records, per_run, med, count_s, clean, located)
        for g in doc["goals"]:  # speed never counts when a verify got the answer wrong
            g["met"] = g["met"] and clean and located
        return doc
    finally:
        dw.close()


def _doc(
    records: int, per_run: list[dict[str, Any]], med: dict[str, float], count_s: float, clean: bool, located: bool
) -> dict[str, Any]:
    return {
        "records": records,
        "baseline": "the read-once floor (every row read once from each side, both at the same time)",
        "clean": clean,
        "located": located,
        "per_run": per_run,
        "results": [
            {"method": "two count(*)", "seconds": round(count_s, 4), "ratio": ratio(count_s, med["read_once_s"])},
            {"method": "read once, both sides", "seconds": round(med["read_once_s"], 4), "ratio": 1.0},
            {
                "method": "verify (full)",
                "seconds": round(med["full_s"], 4),
                "rows_per_s": round(records / med["full_s"], 1) if med["full_s"] else None,
                "ratio": ratio(med["full_s"], med["read_once_s"]),
            },
            {
                "method": "locate one differing row",
                "seconds": round(med["locate_s"], 4),
                "ratio": ratio(med["locate_s"], med["read_once_s"]),
            },
            {
                "method": f"verify --incremental after {CHANGED:.0%} changed",
                "seconds": round(med["incremental_s"], 4),
                "ratio": ratio(med["incremental_s"], med["read_once_s"]),
            },
        ],
        "goals": [
            goal(
                f"verify of {records} identical rows vs the read-once floor", section="verify", target=FULL_GOAL,
                higher_is_better=False, baseline="every row read once from each side, in parallel",
                ratios=[r["full_s"] / r["read_once_s"] for r in per_run if r["read_once_s"]],
                value=med["full_s"] * 1000, baseline_value=med["read_once_s"] * 1000, unit="ms",
                label="verify / read once", clean=clean, located=located,
            ),  # fmt: skip
            goal(
                f"incremental re-verify after {CHANGED:.0%} of {records} rows changed", section="verify",
                target=INCREMENTAL_GOAL, higher_is_better=False, baseline="a full verify of the same state",
                ratios=[r["incremental_s"] / r["full_after_change_s"] for r in per_run if r["full_after_change_s"]],
                value=med["incremental_s"] * 1000, baseline_value=med["full_after_change_s"] * 1000, unit="ms",
                label="incremental / full",
            ),  # fmt: skip
        ],
    }

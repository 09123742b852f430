"""Section 3: shadow-read overhead. App-visible read p99 in phase `shadow` (ShadowReader installed, sampling
100 %, comparisons off the request path) vs reads in phase `sqlite` (no reader), one reader thread reading
back to back. Two shadow configurations:

- `in a comparator process`: ShadowReader(comparator="process"): the request path sends a compact record
  of the read to a process of its own, which compares both sides (no GIL shared); a queue as long as the
  block, so no comparison is skipped: the goal's figure.
- `threads, unpaced`: this process' threads, a queue as long as the block, no pacing (max_defer 0): every
  read compared too, at the cost of sharing the GIL with the request.
- `paced (defaults)`: the reader's defaults (a bounded queue; workers wait for idle moments): what an
  application gets out of the box; on a path without idle time most comparisons are skipped (counted).

Beside every figure the report gives the fraction of reads actually compared (match, mismatch, ignored or
error, over the reads served): a sampled figure is never labelled "100 %". Within each block every mode reads
half its reads in order and the other half in reverse order (_mirrored), so that a drift of the shared
machine hits the baseline and each mode alike; a block's p99 is over both halves; the goal is the median of
the per-block p99 ratios, with the spread.
Goal (issue 18): every read compared, p99 <= 1.10 x phase sqlite."""

from __future__ import annotations

import functools
import random
import time
from typing import Any

from sqlalchemy import insert, select

from dualwrite.bench.common import (
    STORE,
    BenchEnv,
    bench_metadata,
    bench_tables,
    mirrored,
    ratio,
    rows,
    run_workers,
    summarize,
)
from dualwrite.bench.goals import goal, median
from dualwrite.testing import prepared_writer

GOAL = 1.10
BLOCKS = 6
COMPARED = ("match", "mismatch", "ignored", "error")
MODES = ("sqlite", "in a comparator process", "threads, unpaced", "paced (defaults)")


def run(env: BenchEnv, reads: int, records: int, log: Any = print) -> dict[str, Any]:
    from dualwrite.shadow.reader import ShadowReader

    table = _TABLE
    dw = prepared_writer(env.settings("shadow"), bench_tables(table), phase="dual_write")
    per_block = max(1, reads // BLOCKS)
    readers = {
        "in a comparator process": ShadowReader(percentage=100, max_queue=per_block + 8, comparator="process"),
        "threads, unpaced": ShadowReader(percentage=100, max_queue=per_block + 8, max_defer=0),
        "paced (defaults)": ShadowReader(percentage=100),
    }
    try:
        data = rows(table, records)
        for engine in (dw.backends.sqlite, dw.backends.postgres):
            with engine.begin() as conn:
                conn.execute(insert(table), data)
        rng = random.Random(3)

        def op(key: int) -> None:  # a picklable read (a partial of a module-level function), as the process needs
            dw.read(STORE, "get_row", functools.partial(get_row, key=key))

        thread_cpu = [0.0]

        def timed_op(key: int) -> None:
            t0 = time.thread_time()
            try:
                op(key)
            finally:
                thread_cpu[0] += time.thread_time() - t0

        dw.phases.set("shadow", force=True, reason="bench")
        for reader in readers.values():  # warm: the comparator process started, engines connected
            dw.reader = reader
            for key in range(1, 11):
                op(key)
            reader.wait_idle(120)
        warm = {m: _compared(r) for m, r in readers.items()}
        cpu: dict[str, float] = dict.fromkeys(MODES, 0.0)
        lat: dict[str, list[float]] = {m: [] for m in MODES}
        att = dict.fromkeys(MODES, 0)
        blocks: list[dict[str, dict[str, float]]] = []
        for _ in range(BLOCKS):
            got_b: dict[str, list[float]] = {m: [] for m in MODES}
            att_b, done_b = dict.fromkeys(MODES, 0), dict.fromkeys(MODES, 0)
            # each mode's reads in two halves, the modes in order then in reverse (_mirrored)
            for mode, keys in _mirrored(rng, per_block, records):
                reader = readers.get(mode)
                dw.phases.set("sqlite" if reader is None else "shadow", force=True, reason="bench")
                dw.reader = reader
                before = _compared(reader)
                got, attempts, _ = run_workers(1, keys, timed_op)  # one thread: thread_time is the request's CPU
                cpu[mode] += thread_cpu[0]
                thread_cpu[0] = 0.0
                if reader is not None:
                    reader.wait_idle(120)
                got_b[mode] += got
                att_b[mode] += attempts
                done_b[mode] += _compared(reader) - before
            this: dict[str, dict[str, float]] = {}
            for mode in MODES:
                lat[mode] += got_b[mode]
                att[mode] += att_b[mode]
                s = summarize(got_b[mode], att_b[mode])  # the block's p99 over both halves: per_block reads
                this[mode] = {"p99_ms": s["p99_ms"], "median_ms": s["median_ms"], "compared": done_b[mode]}
            blocks.append(this)
        dw.reader = None
        results, goals = [], []
        for mode in MODES:
            s = summarize(lat[mode], att[mode])
            compared = sum(b[mode]["compared"] for b in blocks)
            fraction = None if mode == "sqlite" else round(compared / att[mode], 4) if att[mode] else 0.0
            us = round(1e6 * cpu[mode] / att[mode], 1) if att[mode] else None
            results.append(dict(s, mode=mode, compared_fraction=fraction, request_cpu_us=us))
            if mode == "sqlite":
                continue
            g = goal(
                f"shadow read p99, {mode}: {_compared_text(fraction)}",
                section="shadow",
                target=GOAL,
                higher_is_better=False,
                baseline="p99 of the same reads in phase sqlite (no shadow reader)",
                ratios=[ratio(b[mode]["p99_ms"], b["sqlite"]["p99_ms"]) for b in blocks],
                value=median([b[mode]["p99_ms"] for b in blocks]),
                baseline_value=median([b["sqlite"]["p99_ms"] for b in blocks]),
                unit="ms",
                records=records,
                mode=mode,
                compared_fraction=fraction,
                p50_ratio=ratio(
                    median([b[mode]["median_ms"] for b in blocks]), median([b["sqlite"]["median_ms"] for b in blocks])
                ),
            )
            if fraction != 1.0:  # the goal is about every read compared: a sampled figure cannot meet it
                g["met"] = False
                g["note"] = f"only {_pct(fraction)} of the reads were compared"
            goals.append(g)
            log(f"  shadow, {mode}: p99 ratio {g['ratio']} ({_compared_text(fraction)})")
        return {
            "reads_per_mode": reads,
            "records": records,
            "blocks": BLOCKS,
            "comparisons": {m: dict(r.stats) for m, r in readers.items()},
            "warm_up_comparisons": warm,
            "results": results,
            "goals": goals,
        }
    finally:
        dw.reader = None
        for r in readers.values():
            r.close()
        dw.close()


_TABLE = bench_metadata()[1]


def get_row(conn: Any, key: int) -> Any:
    """The bench's read: one row by key."""
    return conn.execute(select(_TABLE).where(_TABLE.c.id == key)).first()


def _mirrored(rng: random.Random, per_block: int, records: int) -> list[tuple[str, list[int]]]:
    """One block's runs: every mode on half its reads in MODES' order, then on the other half in reverse
    (common.mirrored: in one fixed order the baseline always ran first)."""
    first = per_block // 2
    halves = [(m, first if half == 0 else per_block - first) for half, m in mirrored(MODES)]
    return [(mode, [rng.randint(1, records) for _ in range(n)]) for mode, n in halves if n]


def _compared(reader: Any) -> int:
    return 0 if reader is None else sum(reader.stats[k] for k in COMPARED)


def _compared_text(fraction: float | None) -> str:
    return "every read compared" if fraction == 1.0 else f"{_pct(fraction)} of reads compared"


def _pct(fraction: float | None) -> str:
    """A fraction as a percentage that never rounds a sampled figure up to '100 %'."""
    if fraction is None:
        return "n/a"
    if fraction >= 1.0:
        return "100 %"
    return f"{min(99.9, round(fraction * 100, 1))} %"

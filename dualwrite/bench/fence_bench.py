"""Section 7: the write fence's pause. Three DualWriters (three fence members, as three application
instances would be) write continuously from their own threads, a replayer keeps the stream applied, and
the flipper moves the read source shadow <-> postgres_reads behind the fence `flips` times (rounds of a
few). Figures: each held write's pause (p50/p99/max over the flips of a round) and, as context measured
in the same run, the p99 of a write while no fence stands. Goals (issue 15): p99 pause <= 100 ms (ratio to
100 ms <= 1) and max pause <= the fence timeout (ratio to it <= 1); a fence that did not hold is counted."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from sqlalchemy import insert

from dualwrite.adapter import DualWriter
from dualwrite.bench.common import BenchEnv, bench_metadata, bench_tables, percentile, rows
from dualwrite.bench.goals import goal
from dualwrite.cutover.fenced import fenced_move
from dualwrite.cutover.gate import GateConfig
from dualwrite.fence import DEFAULT_TIMEOUT, live_members
from dualwrite.stream.replay import Replayer
from dualwrite.testing import prepared_writer

P99_GOAL_S = 0.100
WRITERS = 3
ROUNDS = 3
WRITE_INTERVAL_S = 0.01  # per writer: about 100 writes per second each, as a busy application instance


def run(env: BenchEnv, flips: int, log: Any = print, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    _md, table = bench_metadata()
    settings = env.settings("fence")
    tables = bench_tables(table)
    first = prepared_writer(settings, tables, phase="shadow", relay=True)
    writers = [first] + [DualWriter(settings, tables) for _ in range(WRITERS - 1)]
    stop = threading.Event()
    fenced = threading.Event()  # set while the flipper's fence stands: those writes are not the baseline
    free: list[float] = []
    ids = itertools.count(1)
    replayer = Replayer(first.backends, tables, consumer="bench-fence", block_ms=50)
    threads = [threading.Thread(target=replayer.run, kwargs={"should_stop": stop.is_set}, daemon=True)]

    def write(dw: DualWriter) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            dw.execute(insert(table).values(**rows(table, 1, start=next(ids))[0]))
            if not fenced.is_set():
                free.append(time.perf_counter() - t0)
            stop.wait(WRITE_INTERVAL_S)

    threads += [threading.Thread(target=write, args=(dw,), daemon=True) for dw in writers]
    rounds: list[dict[str, Any]] = []
    try:
        for th in threads:
            th.start()
        deadline = time.monotonic() + 30
        while len(live_members(first.backends.redis, settings.namespace)) < WRITERS:
            if time.monotonic() > deadline:
                raise RuntimeError("the fence members did not register")
            time.sleep(0.05)
        time.sleep(1.0)  # warm: pools open, the replay caught up
        per_round = max(1, flips // ROUNDS)
        for _ in range(ROUNDS):
            pauses: list[float] = []
            held: list[float] = []
            failed: list[str] = []
            steps: dict[str, list[float]] = {}
            for _ in range(per_round):
                src = first.phases.current(fresh=True).name
                dst = "postgres_reads" if src == "shadow" else "shadow"
                fenced.set()
                done = fenced_move(
                    first.backends, tables, f"{src} -> {dst}",
                    lambda dst=dst: first.phases.set(dst, force=True, reason="bench"),
                    config=GateConfig(), timeout=timeout,
                )  # fmt: skip
                fenced.clear()
                assert done.summary is not None
                pauses += done.summary.pauses
                held.append(done.summary.held_seconds)
                for k, v in done.summary.steps.items():
                    steps.setdefault(k, []).append(v)
                if not done.ok:
                    failed.append(done.blocked)
                time.sleep(0.3)
            rounds.append(
                {
                    "flips": per_round,
                    "failed": len(failed),
                    "failures": failed[:3],
                    "writes_held": len(pauses),
                    "pause_p50_ms": round(percentile(pauses, 50) * 1000, 2) if pauses else 0.0,
                    "pause_p99_ms": round(percentile(pauses, 99) * 1000, 2) if pauses else 0.0,
                    "pause_max_ms": round(max(pauses, default=0.0) * 1000, 2),
                    "held_max_ms": round(max(held, default=0.0) * 1000, 2),
                    **{f"{k}_max_ms": round(max(v) * 1000, 2) for k, v in steps.items()},  # where it went
                }
            )
            log(f"  fence: {rounds[-1]}")
    finally:
        stop.set()
        for th in threads:
            th.join(10)
        for dw in writers:
            dw.close()
    free_p99 = percentile(free, 99) * 1000 if free else 0.0
    p99s = [r["pause_p99_ms"] for r in rounds]
    maxes = [r["pause_max_ms"] for r in rounds]
    return {
        "flips": sum(r["flips"] for r in rounds),
        "fence_timeout_ms": timeout * 1000,
        "writers": WRITERS,
        "write_p99_without_fence_ms": round(free_p99, 3),
        "results": rounds,
        "goals": [
            goal(
                "fence pause p99", section="fence", target=1.0, higher_is_better=False,
                baseline=f"100 ms (write p99 with no fence standing: {free_p99:.2f} ms in this run)",
                ratios=[p / (P99_GOAL_S * 1000) for p in p99s], value=sorted(p99s)[len(p99s) // 2],
                baseline_value=P99_GOAL_S * 1000, unit="ms", label="pause p99 / 100 ms",
            ),
            goal(
                "fence pause max", section="fence", target=1.0, higher_is_better=False,
                baseline=f"the fence timeout ({timeout * 1000:.0f} ms)",
                ratios=[max(maxes, default=0.0) / (timeout * 1000)], value=max(maxes, default=0.0),  # the worst

                baseline_value=timeout * 1000, unit="ms", label="pause max / timeout",
            ),
        ],
    }  # fmt: skip

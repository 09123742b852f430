"""Runs every section into one report directory."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dualwrite.bench import copy_bench, fence_bench, ops, overhead, replay_bench, report, shadow_overhead, verify_bench
from dualwrite.bench.common import bench_env, machine_info, machine_line

SECTIONS = ("ops", "overhead", "shadow", "copy", "replay", "verify", "fence")


@dataclass
class BenchConfig:
    quick: bool = False
    record_counts: list[int] = field(default_factory=lambda: [100, 500, 1000])
    workers: list[int] = field(default_factory=lambda: [1, 2, 5])
    overhead_writes: int = 6000  # 2000 a round: a p99 from 500 writes was their 5th-slowest
    shadow_reads: int = 12000  # 2000 a block: a p99 from 500 reads was their 5th-slowest (spread 0.82-2.23x)
    shadow_records: int = 5000
    copy_rows: int = 1_000_000
    replay_events: int = 100_000  # 20k measured mostly start-up (issue 18)
    verify_records: int = 1_000_000
    fence_flips: int = 30
    sections: tuple[str, ...] = SECTIONS
    postgres_url: str | None = None
    redis_url: str | None = None

    @classmethod
    def quick_config(cls, **kw: Any) -> BenchConfig:
        base: dict[str, Any] = dict(
            quick=True,
            record_counts=[10, 30],
            workers=[1, 2],
            overhead_writes=30,
            shadow_reads=60,
            shadow_records=100,
            copy_rows=2000,
            replay_events=200,
            verify_records=2000,
            fence_flips=6,
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def run(config: BenchConfig, out: Path, log: Any = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": config.quick,
        "config": {k: v for k, v in config.__dict__.items() if not k.endswith("_url")},
        "sections": {},
        "errors": {},
    }
    with bench_env(config.postgres_url, config.redis_url) as env:
        doc["machine"] = machine_info(env.postgres_url, env.redis_url)
        doc["run_id"] = env.run_id
        one_run = {"runs": 1} if config.quick else {}  # a quick run proves the sections work, not their spread
        steps = {
            "ops": lambda: ops.run(env, config.record_counts, config.workers, log),
            "overhead": lambda: overhead.run(env, config.overhead_writes, log=log),
            "shadow": lambda: shadow_overhead.run(env, config.shadow_reads, config.shadow_records, log),
            "copy": lambda: copy_bench.run(env, config.copy_rows, log, **one_run),
            "replay": lambda: replay_bench.run(env, config.replay_events, log, **one_run),
            "verify": lambda: verify_bench.run(env, config.verify_records, log),
            "fence": lambda: fence_bench.run(env, config.fence_flips, log),
        }
        for name in config.sections:
            log(f"[bench] {name}")
            t0 = time.perf_counter()
            try:
                doc["sections"][name] = steps[name]()
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
                doc["errors"][name] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
            log(f"[bench] {name}: {time.perf_counter() - t0:.1f}s")
            _write(doc, out, started, figures=False)  # a partial report after every section
    _write(doc, out, started)
    return doc


def _write(doc: dict[str, Any], out: Path, started: float, *, figures: bool = True) -> None:
    machine = doc.get("machine", {})
    doc["goals"] = []
    for name, sec in doc["sections"].items():
        for g in sec.get("goals", []):  # every goal names its section, machine and commit (issue 18)
            g.setdefault("section", name)
            g.update(machine=machine_line(machine), commit=machine.get("commit", "?"))
            doc["goals"].append(g)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    report.write(out, doc, figures=figures)

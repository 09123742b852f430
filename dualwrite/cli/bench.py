"""`dualwrite bench`; also `python -m dualwrite.bench`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import click


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualwrite bench", description="Benchmark dualwrite; writes report.md/json/PNGs")
    p.add_argument("--quick", action="store_true", help="tiny counts, about a minute (CI smoke run)")
    p.add_argument("--record-counts", type=int, nargs="+", help="records per operation run (default 100 500 1000)")
    p.add_argument("--workers", type=int, nargs="+", help="concurrent workers (default 1 2 5)")
    p.add_argument("--copy-rows", type=int, help="rows of the history-copy source (default 1000000, quick 2000)")
    p.add_argument("--sections", nargs="+", help="subset of: ops overhead shadow copy replay verify")
    p.add_argument("--report", default="bench-report", help="output directory (default ./bench-report)")
    p.add_argument("--postgres", help="admin postgresql:// URL (a schema per run is created and dropped)")
    p.add_argument("--redis", help="redis:// URL (a namespace per run is used and cleared)")
    return p


def main(argv: list[str] | None = None) -> int:
    from dualwrite.bench.runner import SECTIONS, BenchConfig, run

    a = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the run's schemas, database, namespace and temp files are removed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kw = {
        "record_counts": a.record_counts,
        "workers": a.workers,
        "copy_rows": a.copy_rows,
        "postgres_url": a.postgres,
        "redis_url": a.redis,
    }
    if a.sections:
        bad = [s for s in a.sections if s not in SECTIONS]
        if bad:
            print(f"error: unknown section(s) {bad}; choose from {SECTIONS}", file=sys.stderr)
            return 2
        kw["sections"] = tuple(a.sections)
    config = BenchConfig.quick_config(**kw) if a.quick else BenchConfig(**{k: v for k, v in kw.items() if v})
    doc = run(config, Path(a.report))
    print(f"report: {Path(a.report) / 'report.md'}")
    for g in doc["goals"]:
        print(f"  {'met    ' if g['met'] else 'NOT MET'} {g['name']}: {g['ratio']} x (goal {g['goal_ratio']} x)")
    if doc["errors"]:
        print(f"sections failed: {doc['errors']}", file=sys.stderr)
        return 1
    return 0


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmark store operations, dual-write and shadow overhead, copy, replay and verify (--help for flags)."""
    sys.exit(main(list(args)))

"""`dualwrite bench`: measure on this machine, every figure a ratio to a baseline run in the same run.
Writes report.md, report.json and one PNG per section."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from dualwrite.cli.options import fail


def _counts(value: str | None, flag: str) -> list[int] | None:
    if not value:
        return None
    try:
        out = [int(v) for v in value.replace(",", " ").split()]
    except ValueError:
        fail(f"{flag}: {value!r} is not a list of whole numbers")
    if any(v <= 0 for v in out):
        fail(f"{flag}: every value must be at least 1 (got {value!r})")
    return out


class _ListOptions(click.Command):
    """`--record-counts 100 500 1000 --workers 1 2 5`: the values after a list option, up to the next
    option, are its one value (as the Track C script took them); quoted or comma-separated works too."""

    lists = ("--record-counts", "--workers", "--sections")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(args):
            out.append(args[i])
            i += 1
            if out[-1] in self.lists:
                values = []
                while i < len(args) and not args[i].startswith("-"):
                    values.append(args[i])
                    i += 1
                if values:
                    out.append(" ".join(values))
        return super().parse_args(ctx, out)


@click.command("bench", cls=_ListOptions)
@click.option("--quick", is_flag=True, help="tiny counts, about a minute (CI smoke run)")
@click.option("--record-counts", default=None, help="records per operation run, e.g. '100 500 1000' (the default)")
@click.option("--workers", default=None, help="concurrent workers, e.g. '1 2 5' (the default)")
@click.option("--copy-rows", type=click.IntRange(min=1), default=None, help="rows of the history-copy source")
@click.option("--sections", default=None, help="a subset of: ops overhead shadow copy replay verify fence")
@click.option("--report", "report_dir", default="bench-report", show_default=True, help="output directory")
@click.option(
    "--postgres", "--postgresql-url", "postgres_url", default=None, help="admin postgresql:// URL (a schema per run)"
)
@click.option("--redis", "redis_url", default=None, help="redis:// URL (a namespace per run, cleared after)")
def bench(
    quick: bool,
    record_counts: str | None,
    workers: str | None,
    copy_rows: int | None,
    sections: str | None,
    report_dir: str,
    postgres_url: str | None,
    redis_url: str | None,
) -> None:
    """Benchmark store operations, dual-write and shadow overhead, copy, replay and verify.
    Exit 0 when every section ran, 1 when a section failed, 2 on bad flags."""
    sys.exit(run_bench(quick, record_counts, workers, copy_rows, sections, report_dir, postgres_url, redis_url))


def run_bench(
    quick: bool = False,
    record_counts: str | None = None,
    workers: str | None = None,
    copy_rows: int | None = None,
    sections: str | None = None,
    report_dir: str = "bench-report",
    postgres_url: str | None = None,
    redis_url: str | None = None,
) -> int:
    from dualwrite.bench.runner import SECTIONS, BenchConfig, run

    # SIGTERM unwinds like Ctrl-C, so the run's schemas, database, namespace and temp files are removed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kw: dict[str, object] = {
        "record_counts": _counts(record_counts, "--record-counts"),
        "workers": _counts(workers, "--workers"),
        "copy_rows": copy_rows,
        "postgres_url": postgres_url,
        "redis_url": redis_url,
    }
    if sections:
        chosen = sections.replace(",", " ").split()
        bad = [s for s in chosen if s not in SECTIONS]
        if bad:
            fail(f"--sections: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
        kw["sections"] = tuple(chosen)
    config = BenchConfig.quick_config(**kw) if quick else BenchConfig(**{k: v for k, v in kw.items() if v})
    doc = run(config, Path(report_dir))
    click.echo(f"report: {Path(report_dir) / 'report.md'}")
    for g in doc["goals"]:
        click.echo(f"  {'met    ' if g['met'] else 'NOT MET'} {g['name']}: {g['ratio']} x (goal {g['goal_ratio']} x)")
    if doc["errors"]:
        click.echo(f"sections failed: {doc['errors']}", err=True)
        return 1
    return 0
